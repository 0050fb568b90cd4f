"""The create journey right after sign-in: prerequisites and the subscription choice.

    signed_in ──▶ checking ──▶ provisioning (bot.flows.provision)
                   │  ▲  │
                   │  │  └▶ choosing (Create pressed → signed_in → checking)
                   ▼  │
                 blocked (Recheck → checking)
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from typing import Any

from bot.clients.arm import (
    ROLE_ASSIGNMENT_WRITE,
    ROLE_DEFINITION_WRITE,
    ArmClient,
    group_scope,
)
from bot.clients.signin import Identity, Session
from bot.core.errors import (
    CommandError,
    MicrosoftError,
    SignInError,
    as_flow_error,
)
from bot.core.fanout import both, parallel
from bot.flows.context import Context
from bot.flows.provision import Provisioner
from bot.flows.record import Record
from bot.flows.signin import SignInEngine
from bot.flows.tenant import GUEST_NO_APP_RIGHT
from bot.flows.tenant import app_right as registration_right
from bot.slack import blocks
from bot.slack.blocks.forms import subscriptions_chosen
from storage import queries

log = logging.getLogger(__name__)

POST_SIGN_IN = ("signed_in", "blocked", "choosing")

NO_APP_RIGHT = (
    "the tenant does not let users register applications; ask a tenant admin for the "
    "Application Developer role (or Application Administrator / Cloud Application "
    "Administrator), or to turn on 'Users can register applications'"
)


def _least(data: dict[str, Any]) -> bool:
    return data.get("roles_mode") == "least-privilege"


#: An action only Owner (or Contributor) holds at a scope: with roleAssignments/write it
#: tells Owner from User Access Administrator.
OWNER_PROBE = "Microsoft.Resources/deployments/write"

ELEVATE_FIX = (
    "a Global Administrator with no role there can grant it after turning on elevated access "
    "(Entra ID → Properties → Access management for Azure resources), as Veeam's own wizard "
    "asks"
)


#: The chooser's value of a management group (subscriptions' values are their GUIDs).
GROUP_OPTION = "mg:"


def visible_groups(arm: ArmClient) -> list[dict[str, Any]]:
    """The management groups the account can see, for the chooser: `{"id", "name"}`. Reading
    them is a right of its own (`Microsoft.Management/managementGroups/read`): without it, or
    when ARM fails, the chooser offers subscriptions only."""
    try:
        items = arm.management_groups()
    except Exception as exc:  # noqa: BLE001 - the groups are an extra; subscriptions remain
        log.info("could not list management groups: %s", exc)
        return []
    return [
        {"id": str(g["name"]), "name": (g.get("properties") or {}).get("displayName")}
        for g in items
        if g.get("name")
    ]


def group_rights(
    arm: ArmClient, group_id: str, least: bool
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """A management group's prerequisite, shaped like a subscription's check (`id` is the
    group's scope), and the group with its direct subscriptions and nested groups (None when
    it cannot be read). Veeam asks for Owner at the group: the bot needs roleAssignments/write
    there (and roleDefinitions/write for a least-privilege account's custom role), and says
    when the account holds that but not Owner."""
    scope = group_scope(group_id)
    base: dict[str, Any] = {"id": scope, "label": f"management group `{group_id}`", "name": None}
    needed = [ROLE_ASSIGNMENT_WRITE] + ([ROLE_DEFINITION_WRITE] if least else [])
    try:
        group, held = both(
            lambda: arm.management_group(group_id),
            lambda: arm.allowed(scope, [*needed, OWNER_PROBE]),
        )
    except MicrosoftError as exc:
        if exc.status not in (401, 403, 404):
            raise
        return {
            **base,
            "ok": False,
            "reason": (
                "this account cannot read the management group (no role on it or above it, or "
                "no group with that id — the id, not the display name); ask for Owner on it: "
                + ELEVATE_FIX
            ),
        }, None
    base["name"] = group.get("name")
    lacking = [a for a in needed if not held.get(a)]
    if lacking:
        return {
            **base,
            "ok": False,
            "reason": "lacks "
            + " and ".join(lacking)
            + f" at the group; ask for Owner (or User Access Administrator) on management "
            f"group `{group_id}`: " + ELEVATE_FIX,
        }, group
    if not group["subscriptions"]:
        nested = (
            " (subscriptions in its nested groups are not followed)" if group["groups"] else ""
        )
        return {
            **base,
            "ok": False,
            "reason": "the group holds no subscription directly, so Veeam would protect nothing"
            + nested
            + "; move a subscription into it, or name a group that holds some",
        }, group
    count = len(group["subscriptions"])
    reason = (
        ("can create a custom role and assign it" if least else "can assign roles")
        + f" at the group; covers its {count} subscription{'s' if count != 1 else ''} and "
        "those added to it later"
    )
    if not held.get(OWNER_PROBE):
        reason += " (not Owner there, which Veeam's own wizard asks for; the bot needs no more)"
    if group["groups"]:
        reason += (
            "; subscriptions in its nested groups ("
            + ", ".join(f"`{g['id']}`" for g in group["groups"])
            + ") are not handed to Veeam and not followed, as in Veeam's own wizard"
        )
    return {**base, "ok": True, "reason": reason}, group


def _app_check(graph: Any, guest: bool = False) -> tuple[bool | None, str]:
    """May the signed-in account register applications in the tenant (Graph's word)."""
    policy, roles = both(graph.allowed_to_create_apps, graph.app_registration_roles)
    return registration_right(policy, roles, guest, NO_APP_RIGHT)


class Prerequisites:
    def __init__(
        self, ctx: Context, record: Record, signin: SignInEngine, provisioner: Provisioner
    ) -> None:
        self.ctx = ctx
        self.record = record
        self.signin = signin
        self.provisioner = provisioner
        self.notifier = ctx.notifier
        #: Subscription rights checked while the Graph token was fetched: flow id →
        #: (the subscriptions asked for, (visible subscriptions, checked subscriptions) or
        #: the error the check met).
        self._early: dict[
            str,
            tuple[
                tuple[str, ...],
                tuple[list[dict[str, Any]], list[dict[str, Any]]] | Exception,
            ],
        ] = {}
        self._lock = threading.Lock()

    @property
    def _db(self) -> Any:
        return self.ctx.store.db

    def on_signed_in(self, flow_id: str, identity: Identity, session: Session) -> None:
        flow = self.record.get(flow_id)
        data = self.record.data(flow)
        resumed = data.get("resume")
        if resumed and resumed.get("tenant_id") and resumed["tenant_id"] != identity.tenant_id:
            self.signin.fail(
                flow_id,
                SignInError(
                    "other",
                    f"that account is in tenant {identity.tenant_id}, not {resumed['tenant_id']}",
                ),
            )
            return
        self.check(flow_id)

    def recheck(self, flow_id: str, user: str) -> None:
        flow = queries.get_flow(self._db, flow_id)
        if flow is None:
            raise CommandError("That creation does not exist (any more).")
        self.ctx.authz.require_requester_or_admin(
            user, flow["requester"], "recheck", flow["name"]
        )
        if flow["state"] != "blocked":
            return
        self.ctx.workers.submit(self.check, flow_id)

    def choose(self, flow_id: str, user: str, selected: list[str]) -> str | None:
        """The requester pressed Create with `selected`; returns a refusal text or None."""
        flow = queries.get_flow(self._db, flow_id)
        if flow is None:
            return "That creation does not exist (any more)."
        self.ctx.authz.require_requester(user, flow["requester"], "choose", flow["name"])
        if flow["state"] != "choosing":
            return f"The creation of `{flow['name']}` is {flow['state']}; nothing to choose."
        data = self.record.data(flow)
        visible = {s["id"] for s in data.get("visible", [])}
        chosen = [s.lower() for s in selected if s.lower() in visible]
        offered = {str(g["id"]).lower(): g for g in data.get("visible_groups") or []}
        groups = [
            offered[v[len(GROUP_OPTION) :].lower()]
            for v in selected
            if v.startswith(GROUP_OPTION) and v[len(GROUP_OPTION) :].lower() in offered
        ]
        if groups and (chosen or len(groups) > 1):
            return (
                "Pick either subscriptions or one management group (its roles then cover "
                "its subscriptions), then press Create."
            )
        if groups:
            data["management_group"] = {"id": groups[0]["id"]}
            data["visible"] = [
                {"id": groups[0]["id"], "name": f"management group {groups[0].get('name') or ''}"}
            ]
            chosen = [str(groups[0]["id"])]
        elif not chosen:
            return "Pick at least one subscription from the list, then press Create."
        data["subscriptions"] = [] if groups else chosen
        if not queries.transition_flow(
            self._db, flow_id, ["choosing"], "signed_in", data=json.dumps(data, sort_keys=True)
        ):
            return "Someone else already pressed Create."
        if data.get("chooser_ts"):
            # The chooser has done its job: it now says what was chosen, and by whom.
            names = {s["id"]: s.get("name") for s in data.get("visible", [])}
            self.notifier.update(
                flow["channel_id"],
                data["chooser_ts"],
                subscriptions_chosen(
                    by=user,
                    chosen=[{"id": c, "name": names.get(c)} for c in chosen],
                    name=flow["name"],
                ),
            )
        self.record.render_parent(self.record.get(flow_id))
        self.ctx.workers.submit(self.check, flow_id)
        return None

    def prefetch(self, flow: dict[str, Any], identity: Identity, session: Session) -> None:
        """The sign-in's own (Azure management) token is there: check the subscription rights
        now, beside the fetch of the Graph token, so `check` finds them done. Only reads;
        any failure leaves `check` to ask again."""
        if flow.get("kind") != "create":
            return
        data = self.record.data(flow)
        if data.get("management_group"):
            return  # the group's checks ask their own questions
        wanted = list(data.get("subscriptions") or [])
        tenant = identity.tenant_id
        outcome: tuple[list[dict[str, Any]], list[dict[str, Any]]] | Exception
        try:
            outcome = self._subscription_rights(
                self.ctx.arm(session), wanted, tenant, _least(data)
            )
        except Exception as exc:  # noqa: BLE001 - `check` meets it as if it had asked
            outcome = exc
        with self._lock:
            self._early[flow["id"]] = (tuple(wanted), outcome)

    def _take_early(
        self, flow_id: str, wanted: list[str]
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]] | None:
        """The early check's answer for `wanted` (raising what it met), or None."""
        with self._lock:
            early = self._early.pop(flow_id, None)
        if early is None or early[0] != tuple(wanted):
            return None
        if isinstance(early[1], Exception):
            raise early[1]
        return early[1]

    def _subscription_rights(
        self, arm: ArmClient, wanted: list[str], tenant: str | None, least: bool
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(visible subscriptions, each checked subscription with `ok` and `reason`): the named
        ones when `wanted`, else every subscription of the tenant the account can see. A
        least-privilege account gets a custom role: creating it needs roleDefinitions/write
        on each subscription besides roleAssignments/write."""
        needed = [ROLE_ASSIGNMENT_WRITE] + ([ROLE_DEFINITION_WRITE] if least else [])

        def sub_check(sub: dict[str, Any]) -> dict[str, Any]:
            try:
                held = arm.allowed(sub["id"], needed)
            except MicrosoftError as exc:
                if exc.status not in (401, 403, 404):
                    raise
                # ARM answers so for a subscription the account cannot see (no role on it,
                # or another tenant's).
                reason = "this account cannot see the subscription (wrong tenant, or no access)"
                return {**sub, "ok": False, "reason": reason}
            ok = all(held.values())
            lacking = [action for action, allowed in held.items() if not allowed]
            if ok:
                reason = "can create a custom role and assign it" if least else "can assign roles"
            else:
                reason = (
                    "lacks "
                    + " and ".join(lacking)
                    + (
                        " (a least-privilege account gets a custom role, which needs it)"
                        if ROLE_DEFINITION_WRITE in lacking
                        else ""
                    )
                    + "; ask for Owner or User Access Administrator on this subscription"
                )
            return {**sub, "ok": ok, "reason": reason}

        if wanted:
            # Named subscriptions: their permissions answer whether they are visible too.
            return [], parallel(sub_check, [{"id": s, "name": None} for s in wanted])
        visible = [
            {"id": str(s["subscriptionId"]).lower(), "name": s.get("displayName")}
            for s in arm.subscriptions()
            if not tenant or str(s.get("tenantId", tenant)).lower() == tenant.lower()
        ]
        return visible, parallel(sub_check, visible)

    def check(self, flow_id: str) -> None:
        if not queries.transition_flow(self._db, flow_id, POST_SIGN_IN, "checking"):
            with self._lock:
                self._early.pop(flow_id, None)
            return
        flow = self.record.set_step(flow_id, "checks", "running")
        data = self.record.data(flow)
        if data.get("management_group"):
            self._check_group(flow_id, flow, data)
            return
        wanted = data.get("subscriptions") or []
        try:
            early = self._take_early(flow_id, wanted)
            graph, arm = self.provisioner.clients(flow_id)
            tenant = data.get("identity", {}).get("tenant_id")

            guest = bool(data.get("identity", {}).get("guest"))

            def app_check() -> tuple[bool | None, str]:
                return _app_check(graph, guest)

            if early is not None and wanted and all(r["ok"] for r in early[1]):
                self._check_beside_application(flow_id, flow, wanted, early[1], app_check)
                return
            if early is not None:
                visible, results = early
                app_right, app_reason = app_check()
            else:
                (app_right, app_reason), (visible, results) = both(
                    app_check,
                    lambda: self._subscription_rights(arm, wanted, tenant, _least(data)),
                )
            if wanted:
                visible = data.get("visible", [])
            groups = [] if wanted else visible_groups(arm)
        except Exception as exc:  # noqa: BLE001 - every failure ends the flow in a known state
            self.provisioner.stop(flow_id, as_flow_error(exc, flow_id), created=False)
            return
        try:
            self._after_checks(
                flow_id, flow, wanted, visible, results, app_right, app_reason, groups
            )
        except Exception as exc:  # noqa: BLE001 - e.g. Slack refusing the prerequisites post
            self.provisioner.stop(flow_id, as_flow_error(exc, flow_id), created=False)

    def _check_group(self, flow_id: str, flow: dict[str, Any], data: dict[str, Any]) -> None:
        """The checks of an account for a management group: the application right, and the
        rights at the group; the group's direct subscriptions become the account's."""
        with self._lock:
            self._early.pop(flow_id, None)
        group_id = str(data["management_group"]["id"])
        try:
            graph, arm = self.provisioner.clients(flow_id)
            (app_right, app_reason), (result, group) = both(
                lambda: _app_check(graph, bool(data.get("identity", {}).get("guest"))),
                lambda: group_rights(arm, group_id, _least(data)),
            )
            if group is not None:
                data["management_group"] = {
                    "id": group["id"],
                    "name": group.get("name"),
                    "nested": [g["id"] for g in group["groups"]],
                }
                data["subscriptions"] = [s["id"] for s in group["subscriptions"]]
            self.record.save_data(flow_id, data)
        except Exception as exc:  # noqa: BLE001 - every failure ends the flow in a known state
            self.provisioner.stop(flow_id, as_flow_error(exc, flow_id), created=False)
            return
        try:
            self._after_checks(
                flow_id, flow, [result["id"]], [], [result], app_right, app_reason
            )
        except Exception as exc:  # noqa: BLE001 - e.g. Slack refusing the prerequisites post
            self.provisioner.stop(flow_id, as_flow_error(exc, flow_id), created=False)

    def _check_beside_application(
        self,
        flow_id: str,
        flow: dict[str, Any],
        wanted: list[str],
        results: list[dict[str, Any]],
        app_check: Callable[[], tuple[bool | None, str]],
    ) -> None:
        """Every named subscription is known to be fine: create the application while the
        Graph-side check runs (Graph refuses the creation exactly when that right is missing,
        and then nothing exists). The checks' answer is posted without holding up the steps
        after it."""

        def checked() -> tuple[bool | None, str]:
            try:
                return app_check()
            except Exception as exc:  # noqa: BLE001 - the creation itself is the proof
                log.info("flow %s: application check failed: %s", flow_id, exc)
                return None, "could not read the tenant setting; creation showed whether it may"

        def show(right: bool | None, reason: str) -> None:
            self.record.set_step(flow_id, "checks", "done")
            self.notifier.thread(
                flow["channel_id"],
                flow.get("parent_ts"),
                blocks.prerequisites_message(
                    flow_id=flow_id,
                    name=flow["name"],
                    app_right=right,
                    app_reason=reason,
                    subscriptions=results,
                    blocked=False,
                    checked_at=self.ctx.clock().timestamp(),
                ),
                wait=False,
            )

        refusal = self.provisioner.provision_beside(flow_id, checked, show)
        if refusal is None:
            return
        log.info("flow %s: Graph refused the application: %s", flow_id, refusal)
        try:
            guest = bool(self.record.data(flow).get("identity", {}).get("guest"))
            reason = GUEST_NO_APP_RIGHT if guest else NO_APP_RIGHT
            self._after_checks(flow_id, flow, wanted, [], results, False, reason)
        except Exception as exc:  # noqa: BLE001 - e.g. Slack refusing the prerequisites post
            self.provisioner.stop(flow_id, as_flow_error(exc, flow_id), created=False)

    def _after_checks(
        self,
        flow_id: str,
        flow: dict[str, Any],
        wanted: list[str],
        visible: list[dict[str, Any]],
        results: list[dict[str, Any]],
        app_right: bool | None,
        app_reason: str,
        groups: list[dict[str, Any]] | None = None,
    ) -> None:
        data = self.record.data(self.record.get(flow_id))
        data["visible"] = visible
        if groups:
            data["visible_groups"] = groups
        if wanted:
            blocked = app_right is False or any(not r["ok"] for r in results)
        else:
            blocked = app_right is False
        prereq: dict[str, Any] = {
            "app_right": app_right,
            "app_reason": app_reason,
            "subscriptions": results if wanted else [],
            "blocked": blocked,
            "checked_at": self.ctx.clock().timestamp(),
            "again": bool(data.get("prereq_ts")),
        }
        data["prereq"] = prereq
        payload = blocks.prerequisites_message(flow_id=flow_id, name=flow["name"], **prereq)
        self._show(flow, data, "prereq_ts", payload)
        if blocked:
            self._park(
                flow_id,
                data,
                "blocked",
                "failed",
                ":warning: Waiting for the missing rights (Recheck in the thread).",
            )
            self.record.audit(
                flow,
                "create.prerequisites",
                "missing",
                app_right=app_right,
                subscriptions={r["id"]: r["ok"] for r in results},
            )
            return
        if not wanted:
            chooser = blocks.subscription_chooser(
                flow_id=flow_id,
                requester=flow["requester"],
                subscriptions=results,
                groups=[{**g, "value": GROUP_OPTION + str(g["id"])} for g in groups or []],
            )
            self._show(flow, data, "chooser_ts", chooser)
            self._park(
                flow_id,
                data,
                "choosing",
                "running",
                ":point_down: Choose the subscriptions in the thread.",
            )
            return
        self.record.save_data(flow_id, data)
        self.record.set_step(flow_id, "checks", "done")
        self.signin.stop_if_cancelled(flow_id)
        self.provisioner.provision(flow_id)

    def _park(
        self, flow_id: str, data: dict[str, Any], state: str, checks: str, outcome: str
    ) -> None:
        """Leave the checks waiting for a person (Recheck, or the subscription choice)."""
        if queries.transition_flow(
            self._db, flow_id, ["checking"], state, data=json.dumps(data, sort_keys=True)
        ):
            self.record.set_step(flow_id, "checks", checks, outcome=outcome)

    def _show(
        self, flow: dict[str, Any], data: dict[str, Any], key: str, payload: dict[str, Any]
    ) -> None:
        """Post `payload` in the thread, or edit the message posted for `key` before."""
        if data.get(key):
            self.notifier.update(flow["channel_id"], data[key], payload)
        else:
            data[key] = self.notifier.post(
                flow["channel_id"], payload, thread_ts=flow.get("parent_ts")
            )
