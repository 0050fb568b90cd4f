"""The create journey after sign-in: prerequisites, subscription choice, provisioning.

    signed_in ──▶ checking ──▶ provisioning ──▶ done
                   │  ▲  │            │
                   │  │  └▶ choosing ─┘ (Create pressed → checking)
                   ▼  │
                 blocked (Recheck → checking)
    any step ──▶ rolled_back (what was created is deleted) | failed

Every step writes what it created to the database before the next one starts (the flow's
`data`, the `accounts` row, the encrypted secret), so a crash leaves a record of every
object in the tenant. A restarted bot asks the requester to sign in again and resumes:
the application is keyed by a per-creation `uniqueName`, role assignments have
deterministic names, and a password Graph issued but the bot never stored is removed
before a new one is added — no step is done twice.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from bot.clients.arm import ArmClient, assignment_name
from bot.clients.graph import GraphClient
from bot.clients.signin import Identity, Session
from bot.clients.vbazure import ApplianceError
from bot.core.errors import (
    POLICY_LIFETIME,
    Cancelled,
    CommandError,
    MicrosoftError,
    SignInError,
    VeeamSAError,
    as_flow_error,
    error_label,
    policy_id,
)
from bot.core.logs import register_secret_value as register
from bot.flows.appliance import hand_off
from bot.slack import blocks
from bot.slack.messages import flow_failure, secret_policy_note
from storage import queries

if TYPE_CHECKING:
    from bot.flows.create import CreateFlows
    from bot.flows.root import Services

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

FANOUT = 16
POST_SIGN_IN = ("signed_in", "blocked", "choosing")


def crash_point(step: str) -> None:
    """Test hook: `VEEAM_SA_CRASH_AT=<step>` kills the process there, as a power cut would."""
    if os.environ.get("VEEAM_SA_CRASH_AT") == step:
        os.kill(os.getpid(), signal.SIGKILL)


def parallel(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """Run `fn` over `items` concurrently (bounded); results in order; first error raised."""
    items = list(items)
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(
        max_workers=min(FANOUT, len(items)), thread_name_prefix="veeam-sa-fanout"
    ) as pool:
        return list(pool.map(fn, items))


A = TypeVar("A")
B = TypeVar("B")


def both(first: Callable[[], A], second: Callable[[], B]) -> tuple[A, B]:
    """Run two independent calls concurrently."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="veeam-sa-fanout") as pool:
        later = pool.submit(second)
        return first(), later.result()


#: Lifetimes tried, longest first, when a tenant policy refuses the requested one and the
#: policy itself cannot be read.
STEP_DOWN_DAYS = (180, 90, 60, 30, 14, 7, 1)
#: Kept below a policy's cap, so clocks a little apart never make Graph refuse it.
POLICY_MARGIN = timedelta(minutes=10)


def add_password_within_policy(
    graph: GraphClient, object_id: str, display_name: str, now: datetime, wanted: timedelta
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Add a password ending `wanted` from `now`, or — when the tenant's app management
    policy refuses that lifetime (Graph does not shorten it) — the longest the policy allows:
    its cap when the signed-in account may read the policy, else the longest of
    `STEP_DOWN_DAYS` Graph accepts. Returns Graph's answer and, when shortened, what limited
    it (`policy`, `days`, `read`). A policy that forbids secrets raises as Graph answered."""
    try:
        return graph.add_password(object_id, display_name, now + wanted), None
    except MicrosoftError as exc:
        if exc.code != POLICY_LIFETIME:
            raise
        refused = exc
    policy = policy_id(refused)
    cap = graph.password_max_lifetime(policy)
    tries: list[timedelta] = []
    if cap is not None and cap < wanted:
        tries.append(cap - POLICY_MARGIN if cap > 2 * POLICY_MARGIN else cap)
    ceiling = min(wanted, cap) if cap is not None else wanted
    tries += [timedelta(days=d) for d in STEP_DOWN_DAYS if timedelta(days=d) < ceiling]
    for lifetime in tries:
        try:
            created = graph.add_password(object_id, display_name, now + lifetime)
        except MicrosoftError as exc:
            if exc.code != POLICY_LIFETIME:
                raise
            continue
        return created, {
            "policy": policy,
            "days": max(1, round(lifetime.total_seconds() / 86400)),
            "read": cap is not None,
        }
    raise refused


def add_secret(
    services: Services,
    graph: GraphClient,
    object_id: str,
    flow: dict[str, Any],
    account_id: int,
    state: str,
    crash_step: str,
) -> dict[str, Any]:
    """Add a password with an explicit end date and store it, encrypted, at once.

    The row keeps what Graph returned. A tenant app management policy may allow less than
    `VEEAM_SA_SECRET_DAYS`: then the secret lasts as long as the policy allows, and the
    returned row says so under `policy_limit` (not stored). Between Graph's answer and the
    insert lies the one moment a crash loses a secret: the callers remove passwords they do
    not know before adding one.
    """
    now = services.clock()
    created, limit = add_password_within_policy(
        graph,
        object_id,
        f"veeam-sa {now.date().isoformat()}",
        now,
        timedelta(days=services.config.secret_days),
    )
    crash_point(crash_step)  # issued by Graph, not yet stored: the unknowable case
    end = now + timedelta(days=limit["days"] if limit else services.config.secret_days)
    row = {
        "account_id": account_id,
        "key_id": created["keyId"],
        "hint": created.get("hint") or "",
        "end_at": iso_utc(created.get("endDateTime"))
        or end.astimezone(UTC).isoformat(timespec="seconds"),
        "created_at": queries.utcnow_iso(now),
        # Masked in logs while the flow runs; the client-secret pattern covers it after.
        "ciphertext": services.cipher.encrypt(register(created["secretText"], flow["id"])),
        "state": state,
    }
    created.clear()  # drop the plaintext as early as possible
    db = services.store.db
    with db.atomic():
        row["id"] = queries.insert_secret(db, row)
        queries.add_audit(
            db,
            actor=flow["requester"],
            action="azure.secret",
            target=flow["name"],
            outcome="created",
            detail={
                "flow": flow["id"],
                "key_id": row["key_id"],
                "end_at": row["end_at"],
                **({"policy_limit": limit} if limit else {}),
            },
        )
    if limit:
        row["policy_limit"] = limit
    return row


class Provisioner:
    def __init__(self, flows: CreateFlows) -> None:
        self.flows = flows
        self.services = flows.services
        self.notifier = flows.notifier

    # -- plumbing ----------------------------------------------------------------------------

    @property
    def _db(self) -> Any:
        return self.services.store.db

    def _clients(self, flow_id: str) -> tuple[GraphClient, ArmClient]:
        session = self.flows.session(flow_id)
        if session is None:
            raise SignInError("no_session", "the sign-in session is gone")
        config = self.services.config
        signin = self.flows.signin
        graph = GraphClient(
            config.graph_url, self.services.http, lambda: signin.token(session, config.graph_scope)
        )
        arm = ArmClient(
            config.arm_url, self.services.http, lambda: signin.token(session, config.arm_scope)
        )
        return graph, arm

    def _flow(self, flow_id: str) -> dict[str, Any]:
        flow = queries.get_flow(self._db, flow_id)
        assert flow is not None
        return flow

    def _thread(self, flow: dict[str, Any], text: str) -> None:
        self.notifier.thread(flow["channel_id"], flow.get("parent_ts"), blocks.note(text))

    # -- entry points ------------------------------------------------------------------------

    def on_signed_in(self, flow_id: str, identity: Identity, session: Session) -> None:
        flow = self._flow(flow_id)
        data = self.flows.data(flow)
        resumed = data.get("resume")
        if resumed and resumed.get("tenant_id") and resumed["tenant_id"] != identity.tenant_id:
            self.flows.fail(
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
        self.services.authz.require_requester_or_admin(
            user, flow["requester"], "recheck", flow["name"]
        )
        if flow["state"] != "blocked":
            return
        self.services.workers.submit(self.check, flow_id)

    def choose(self, flow_id: str, user: str, selected: list[str]) -> str | None:
        """The requester pressed Create with `selected`; returns a refusal text or None."""
        flow = queries.get_flow(self._db, flow_id)
        if flow is None:
            return "That creation does not exist (any more)."
        self.services.authz.require_requester(user, flow["requester"], "choose", flow["name"])
        if flow["state"] != "choosing":
            return f"The creation of `{flow['name']}` is {flow['state']}; nothing to choose."
        data = self.flows.data(flow)
        visible = {s["id"] for s in data.get("visible", [])}
        chosen = [s.lower() for s in selected if s.lower() in visible]
        if not chosen:
            return "Pick at least one subscription from the list, then press Create."
        data["subscriptions"] = chosen
        if not queries.transition_flow(
            self._db, flow_id, ["choosing"], "signed_in", data=json.dumps(data, sort_keys=True)
        ):
            return "Someone else already pressed Create."
        self.flows.render_parent(self._flow(flow_id))
        self.services.workers.submit(self.check, flow_id)
        return None

    # -- prerequisites -------------------------------------------------------------------------

    def check(self, flow_id: str) -> None:
        if not queries.transition_flow(self._db, flow_id, POST_SIGN_IN, "checking"):
            return
        flow = self.flows.set_step(flow_id, "checks", "running")
        data = self.flows.data(flow)
        try:
            graph, arm = self._clients(flow_id)
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
            self._stop(flow_id, as_flow_error(exc, flow_id), created=False)
            return
        try:
            self._after_checks(flow_id, flow, wanted, visible, results, app_right, app_reason)
        except Exception as exc:  # noqa: BLE001 - e.g. Slack refusing the prerequisites post
            self._stop(flow_id, as_flow_error(exc, flow_id), created=False)

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
        data = self.flows.data(self._flow(flow_id))
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
            self.flows.audit(
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
        self.flows.save_data(flow_id, data)
        self.flows.set_step(flow_id, "checks", "done")
        self.flows.stop_if_cancelled(flow_id)
        self.provision(flow_id)

    def _park(
        self, flow_id: str, data: dict[str, Any], state: str, checks: str, outcome: str
    ) -> None:
        """Leave the checks waiting for a person (Recheck, or the subscription choice)."""
        if queries.transition_flow(
            self._db, flow_id, ["checking"], state, data=json.dumps(data, sort_keys=True)
        ):
            self.flows.set_step(flow_id, "checks", checks, outcome=outcome)

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

    # -- provisioning ------------------------------------------------------------------------

    def provision(self, flow_id: str) -> None:
        if not queries.transition_flow(self._db, flow_id, ["checking"], "provisioning"):
            return
        try:
            self._provision(flow_id)
        except Exception as exc:  # noqa: BLE001 - every failure rolls back and says so
            self._stop(flow_id, as_flow_error(exc, flow_id), created=True)

    def _provision(self, flow_id: str) -> None:
        config = self.services.config
        flow = self._flow(flow_id)
        data = self.flows.data(flow)
        graph, arm = self._clients(flow_id)
        identity = data.get("identity", {})
        unique_name = f"veeam-sa-{flow_id}"

        # 1. the application (upsert keyed by this creation)
        self.flows.stop_if_cancelled(flow_id)
        self.flows.set_step(flow_id, "application", "running")
        app = graph.upsert_application(unique_name, flow["name"], data.get("description"))
        account_id = flow.get("account_id")
        resumed = account_id is not None  # a crash may have left an unknown password behind
        with self._db.atomic():
            if account_id is None:
                account_id = queries.insert_account(
                    self._db,
                    {
                        "name": flow["name"],
                        "description": data.get("description"),
                        "tenant_id": identity.get("tenant_id"),
                        "tenant_name": identity.get("tenant_name"),
                        "app_object_id": app["id"],
                        "app_id": app["appId"],
                        "unique_name": unique_name,
                        "subscriptions": json.dumps(data.get("subscriptions", [])),
                        "roles": json.dumps({}),
                        "created_by": flow["requester"],
                        "created_at": queries.utcnow_iso(self.services.clock()),
                        "channel_id": flow["channel_id"],
                        "alert_channel_id": config.alert_channel or flow["channel_id"],
                        "state": "provisioning",
                    },
                )
                queries.update_flow(self._db, flow_id, account_id=account_id)
                queries.add_audit(
                    self._db,
                    actor=flow["requester"],
                    action="azure.application",
                    target=flow["name"],
                    outcome="created",
                    detail={"flow": flow_id, "app_id": app["appId"], "object_id": app["id"]},
                )
        self.flows.set_step(flow_id, "application", "done")
        crash_point("after_application")

        # 2. the service principal, and 3. the secret (independent of each other)
        self.flows.stop_if_cancelled(flow_id)
        self.flows.set_step(flow_id, "principal", "running")

        def principal() -> str:
            sp = graph.ensure_service_principal(app["appId"])
            queries.update_account(self._db, account_id, sp_id=sp["id"])
            return str(sp["id"])

        def secret() -> dict[str, Any]:
            return self._ensure_secret(graph, flow, account_id, app["id"], resumed)

        sp_id, stored = both(principal, secret)
        self.flows.set_step(flow_id, "principal", "done")
        self.flows.set_step(flow_id, "secret", "done")
        policy_note = (
            secret_policy_note(stored["policy_limit"], config.secret_days)
            if stored.get("policy_limit")
            else ""
        )
        if policy_note:
            self._thread(flow, f":hourglass: {policy_note}")
        crash_point("after_secret")

        # 4. role assignments on every subscription
        self.flows.stop_if_cancelled(flow_id)
        self.flows.set_step(flow_id, "roles", "running")
        subscriptions = data.get("subscriptions", [])
        pairs = [(sub, role) for sub in subscriptions for role in config.roles]

        def assign(pair: tuple[str, Any]) -> str:
            sub, role = pair
            return arm.assign_role(
                sub,
                role.definition_id,
                str(sp_id),
                assignment_name(flow_id, sub, role.definition_id),
            )

        outcomes = parallel(assign, pairs)
        roles: dict[str, list[str]] = {}
        for (sub, role), _outcome in zip(pairs, outcomes, strict=True):
            roles.setdefault(sub, []).append(role.name)
        queries.update_account(self._db, account_id, roles=json.dumps(roles))
        self.flows.set_step(flow_id, "roles", "done")
        crash_point("after_roles")

        # 5. hand the secret to the VBAzure appliance (when one is configured)
        self.flows.stop_if_cancelled(flow_id)
        where = "kept encrypted in the bot's database; never shown in Slack"
        if self.services.appliance is not None:
            where = self._hand_off(flow, account_id, stored) or where
        with self._db.atomic():
            queries.update_account(self._db, account_id, state="active")
            queries.add_audit(
                self._db,
                actor=flow["requester"],
                action="azure.role_assignments",
                target=flow["name"],
                outcome="created",
                detail={"flow": flow_id, "roles": roles},
            )
            queries.transition_flow(self._db, flow_id, ["provisioning"], "done")
            queries.add_audit(
                self._db,
                actor=flow["requester"],
                action="create.completed",
                target=flow["name"],
                outcome="ok",
                detail={"flow": flow_id, "app_id": app["appId"]},
            )
        self.flows.drop_session(flow_id)
        flow = self._flow(flow_id)
        end = datetime.fromisoformat(stored["end_at"].replace("Z", "+00:00"))
        tenant = blocks.escape(identity.get("tenant_name") or "")
        summary = [
            f"*Application (client) id:* `{app['appId']}`",
            f"*Tenant:* {tenant} `{identity.get('tenant_id')}`".replace(
                "*Tenant:*  ", "*Tenant:* "
            ),
            "*Roles:*\n"
            + "\n".join(f"• `{sub}`: {', '.join(names)}" for sub, names in roles.items()),
            f"*Client secret:* `{stored['hint']}…` expires "
            + blocks.slack_date(end.timestamp(), end.date().isoformat())
            + f" — {where}."
            + (f" {policy_note}" if policy_note else ""),
        ]
        self.flows.render_parent(flow, outcome=":white_check_mark: Created.", summary=summary)
        self._thread(flow, f":white_check_mark: Service account `{flow['name']}` is ready.")

    def _hand_off(
        self, flow: dict[str, Any], account_id: int, stored: dict[str, Any]
    ) -> str | None:
        """Register the new account with the appliance. A failure leaves the (valid) Azure
        account in place and says how to retry; returns where the secret went, or None."""
        self.flows.set_step(flow["id"], "handoff", "running")
        account = queries.get_account_by_id(self._db, account_id)
        assert account is not None
        try:
            appliance_id = hand_off(
                self.services,
                account,
                self.services.cipher.decrypt(stored["ciphertext"]),
                flow["requester"],
            )
        except ApplianceError as exc:
            self.flows.set_step(flow["id"], "handoff", "failed")
            self._thread(
                flow,
                f":warning: The Azure side of `{flow['name']}` is ready, but handing it to Veeam failed: "
                f"{exc}. Retry with `/veeam-sa sync {flow['name']}` once the appliance is reachable.",
            )
            return None
        self.flows.set_step(flow["id"], "handoff", "done")
        return f"handed to the Veeam appliance (account `{appliance_id}`) and kept encrypted in the bot's database"

    def _ensure_secret(
        self,
        graph: GraphClient,
        flow: dict[str, Any],
        account_id: int,
        object_id: str,
        resumed: bool,
    ) -> dict[str, Any]:
        """The account's one live secret: reuse the stored one, else add (and store) a new one."""
        existing = queries.active_secrets(self._db, account_id)
        if existing:
            return existing[-1]
        if resumed:  # a password Graph issued before a crash, but never stored, is unknowable
            for key_id in graph.password_key_ids(object_id):
                graph.remove_password(object_id, key_id)
        return add_secret(
            self.services, graph, object_id, flow, account_id, "active", "after_add_password"
        )

    # -- failure -----------------------------------------------------------------------------

    def _stop(self, flow_id: str, error: VeeamSAError, created: bool) -> None:
        """A step failed: roll back what this creation made, and say exactly what happened."""
        flow = self._flow(flow_id)
        reason = flow_failure(error)
        self.flows.forget_cancel(flow_id)
        log.warning("flow %s failed: %s", flow_id, reason)
        rolled: list[str] = []
        leftover: list[str] = []
        if created and flow.get("account_id") is not None:
            rolled, leftover = self._roll_back(flow)
        elif created and flow["state"] == "provisioning":
            rolled, leftover = self._roll_back_unrecorded(flow)
        cancelled = isinstance(error, Cancelled)
        if leftover:
            state = "failed"
        elif cancelled:
            state = "cancelled"
        else:
            state = "rolled_back" if rolled else "failed"
        queries.transition_flow(
            self._db,
            flow_id,
            ["checking", "provisioning", "signed_in", "blocked", "choosing"],
            state,
            error=None if cancelled else error_label(error),
        )
        self.flows.drop_session(flow_id)
        self.flows.audit(
            flow,
            "create.cancelled" if cancelled else "create.failed",
            state,
            reason=reason[:300],
            rolled_back=rolled,
            leftover=leftover,
            reference=getattr(error, "reference", None),
        )
        icon = ":no_entry_sign:" if cancelled else ":x:"
        text = f"{icon} {reason}"
        if rolled:
            text += "\nRolled back: " + ", ".join(rolled) + "."
        if leftover:
            text += (
                "\n:warning: Could not remove: "
                + ", ".join(leftover)
                + ". Delete it in the Entra admin center (App registrations) or run the create again."
            )
        if not created or not (rolled or leftover):
            text += "\nNothing was created in Azure."
        self._thread(flow, text)
        steps = self.flows.data(self._flow(flow_id)).get("steps", {})
        running = [k for k, v in steps.items() if v == "running"]
        for step in running:
            self.flows.set_step(flow_id, step, "failed")
        self.flows.render_parent(
            self._flow(flow_id),
            outcome=(":no_entry_sign: Cancelled" if cancelled else ":x: Failed")
            + (" and rolled back." if rolled and not leftover else "."),
        )

    def _roll_back_unrecorded(self, flow: dict[str, Any]) -> tuple[list[str], list[str]]:
        """The application step failed after Graph may have created the application (its
        answer was lost or unreadable): find it by this creation's unique name and delete it."""
        unique_name = f"veeam-sa-{flow['id']}"
        try:
            graph, _ = self._clients(flow["id"])
            app = graph.find_application(unique_name)
            if app is None:
                return [], []
            graph.delete_application(str(app["id"]))
        except Exception:  # noqa: BLE001 - report what may be left, never hide the first error
            log.warning("flow %s: could not look for application %s", flow["id"], unique_name)
            return [], [f"an application named `{flow['name']}` (unique name `{unique_name}`), if any"]
        queries.add_audit(
            self._db,
            actor=flow["requester"],
            action="azure.rollback",
            target=flow["name"],
            outcome="ok",
            detail={"flow": flow["id"], "app_id": app.get("appId")},
        )
        return [f"application `{app.get('appId')}`"], []

    def _roll_back(self, flow: dict[str, Any]) -> tuple[list[str], list[str]]:
        account = queries.get_account_by_id(self._db, flow["account_id"])
        if account is None:
            return [], []
        rolled: list[str] = []
        leftover: list[str] = []
        try:
            graph, arm = self._clients(flow["id"])
        except SignInError:
            return [], [f"application `{account['app_id']}`"]
        config = self.services.config
        data = self.flows.data(flow)
        for sub in data.get("subscriptions", []):
            for role in config.roles:
                try:
                    arm.delete_role_assignment(
                        sub, assignment_name(flow["id"], sub, role.definition_id)
                    )
                except MicrosoftError:
                    leftover.append(f"role {role.name} on `{sub}`")
        try:
            graph.delete_application(account["app_object_id"])
            rolled.append(
                f"application `{account['app_id']}` (with its service principal and secret)"
            )
        except MicrosoftError:
            leftover.append(f"application `{account['app_id']}`")
        with self._db.atomic():
            queries.update_account(
                self._db, account["id"], state="rolled_back" if not leftover else "orphaned"
            )
            queries.set_secret_state(
                self._db,
                [s["id"] for s in queries.active_secrets(self._db, account["id"])],
                "retired",
            )
            queries.add_audit(
                self._db,
                actor=flow["requester"],
                action="azure.rollback",
                target=flow["name"],
                outcome="ok" if not leftover else "partial",
                detail={"flow": flow["id"], "leftover": leftover},
            )
        return rolled, leftover


def iso_utc(value: Any) -> str | None:
    if not value:
        return None
    try:
        return (
            datetime.fromisoformat(str(value).replace("Z", "+00:00"))
            .astimezone(UTC)
            .isoformat(timespec="seconds")
        )
    except ValueError:
        return None
