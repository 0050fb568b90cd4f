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
from typing import Any

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
from bot.slack import blocks
from bot.slack.blocks.forms import subscriptions_chosen
from storage import queries

log = logging.getLogger(__name__)

POST_SIGN_IN = ("signed_in", "blocked", "choosing")


class Prerequisites:
    def __init__(
        self, ctx: Context, record: Record, signin: SignInEngine, provisioner: Provisioner
    ) -> None:
        self.ctx = ctx
        self.record = record
        self.signin = signin
        self.provisioner = provisioner
        self.notifier = ctx.notifier

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
        if not chosen:
            return "Pick at least one subscription from the list, then press Create."
        data["subscriptions"] = chosen
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

    def check(self, flow_id: str) -> None:
        if not queries.transition_flow(self._db, flow_id, POST_SIGN_IN, "checking"):
            return
        flow = self.record.set_step(flow_id, "checks", "running")
        data = self.record.data(flow)
        try:
            graph, arm = self.provisioner.clients(flow_id)
            tenant = data.get("identity", {}).get("tenant_id")

            def app_check() -> tuple[bool | None, str]:
                policy, roles = both(graph.allowed_to_create_apps, graph.app_registration_roles)
                if roles:
                    return True, "holds " + ", ".join(roles)
                if policy:
                    return True, "the tenant lets users register applications"
                if policy is None:
                    return None, (
                        "could not read the tenant setting and the account holds no application role; "
                        "creation will show whether it may"
                    )
                return False, (
                    "the tenant does not let users register applications; ask a tenant admin for the "
                    "Application Developer role (or Application Administrator / Cloud Application "
                    "Administrator), or to turn on 'Users can register applications'"
                )

            def visible_subscriptions() -> list[dict[str, Any]]:
                subs = arm.subscriptions()
                return [
                    {"id": str(s["subscriptionId"]).lower(), "name": s.get("displayName")}
                    for s in subs
                    if not tenant or str(s.get("tenantId", tenant)).lower() == tenant.lower()
                ]

            def sub_check(sub: dict[str, Any]) -> dict[str, Any]:
                try:
                    ok = arm.can_assign_roles(sub["id"])
                except MicrosoftError as exc:
                    if exc.status not in (401, 403, 404):
                        raise
                    # ARM answers so for a subscription the account cannot see (no role on it,
                    # or another tenant's).
                    reason = "this account cannot see the subscription (wrong tenant, or no access)"
                    return {**sub, "ok": False, "reason": reason}
                reason = (
                    "can assign roles"
                    if ok
                    else "lacks Microsoft.Authorization/roleAssignments/write; ask for Owner or "
                    "User Access Administrator on this subscription"
                )
                return {**sub, "ok": ok, "reason": reason}

            wanted = data.get("subscriptions") or []
            if wanted:
                # Named subscriptions: their permissions answer whether they are visible too,
                # so everything is checked at once.
                (app_right, app_reason), results = both(
                    app_check,
                    lambda: parallel(sub_check, [{"id": s, "name": None} for s in wanted]),
                )
                visible = data.get("visible", [])
            else:
                (app_right, app_reason), visible = both(app_check, visible_subscriptions)
                results = parallel(sub_check, visible)
        except Exception as exc:  # noqa: BLE001 - every failure ends the flow in a known state
            self.provisioner.stop(flow_id, as_flow_error(exc, flow_id), created=False)
            return
        try:
            self._after_checks(flow_id, flow, wanted, visible, results, app_right, app_reason)
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
    ) -> None:
        data = self.record.data(self.record.get(flow_id))
        data["visible"] = visible
        if wanted:
            blocked = app_right is False or any(not r["ok"] for r in results)
        else:
            blocked = app_right is False
        payload = blocks.prerequisites_message(
            flow_id=flow_id,
            app_right=app_right,
            app_reason=app_reason,
            subscriptions=results if wanted else [],
            blocked=blocked,
        )
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
                flow_id=flow_id, requester=flow["requester"], subscriptions=results
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
