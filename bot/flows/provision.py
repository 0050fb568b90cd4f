"""The create journey after the checks: provisioning, and rolling back when it fails.

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
from datetime import datetime
from typing import Any

from bot.clients.arm import ArmClient, assignment_name
from bot.clients.graph import GraphClient
from bot.core.errors import (
    ApplianceError,
    Cancelled,
    MicrosoftError,
    SignInError,
    VeeamSAError,
    as_flow_error,
    error_label,
)
from bot.core.fanout import both, parallel
from bot.flows.appliance import hand_off
from bot.flows.context import Context
from bot.flows.record import Record
from bot.flows.secrets import (
    add_secret,
    crash_point,
)
from bot.flows.signin import SignInEngine
from bot.slack import blocks
from bot.slack.messages import flow_failure, secret_policy_note
from storage import queries

log = logging.getLogger(__name__)


class Provisioner:
    def __init__(self, ctx: Context, record: Record, signin: SignInEngine) -> None:
        self.ctx = ctx
        self.record = record
        self.signin = signin
        self.notifier = ctx.notifier

    @property
    def _db(self) -> Any:
        return self.ctx.store.db

    def clients(self, flow_id: str) -> tuple[GraphClient, ArmClient]:
        session = self.signin.session(flow_id)
        if session is None:
            raise SignInError("no_session", "the sign-in session is gone")
        return self.ctx.graph(session), self.ctx.arm(session)

    def provision(self, flow_id: str) -> None:
        if not queries.transition_flow(self._db, flow_id, ["checking"], "provisioning"):
            return
        try:
            self._provision(flow_id)
        except Exception as exc:  # noqa: BLE001 - every failure rolls back and says so
            self.stop(flow_id, as_flow_error(exc, flow_id), created=True)

    def _provision(self, flow_id: str) -> None:
        config = self.ctx.config
        flow = self.record.get(flow_id)
        data = self.record.data(flow)
        graph, arm = self.clients(flow_id)
        identity = data.get("identity", {})
        unique_name = f"veeam-sa-{flow_id}"

        # 1. the application (upsert keyed by this creation)
        self.signin.stop_if_cancelled(flow_id)
        self.record.set_step(flow_id, "application", "running")
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
                        "created_at": queries.utcnow_iso(self.ctx.clock()),
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
        self.record.set_step(flow_id, "application", "done")
        crash_point("after_application")

        # 2. the service principal, and 3. the secret (independent of each other)
        self.signin.stop_if_cancelled(flow_id)
        self.record.set_step(flow_id, "principal", "running")

        def principal() -> str:
            sp = graph.ensure_service_principal(app["appId"])
            queries.update_account(self._db, account_id, sp_id=sp["id"])
            return str(sp["id"])

        def secret() -> dict[str, Any]:
            return self._ensure_secret(graph, flow, account_id, app["id"], resumed)

        sp_id, stored = both(principal, secret)
        self.record.set_step(flow_id, "principal", "done")
        self.record.set_step(flow_id, "secret", "done")
        policy_note = (
            secret_policy_note(stored["policy_limit"], config.secret_days)
            if stored.get("policy_limit")
            else ""
        )
        if policy_note:
            self.record.say(flow, f":hourglass: {policy_note}")
        crash_point("after_secret")

        # 4. role assignments on every subscription
        self.signin.stop_if_cancelled(flow_id)
        self.record.set_step(flow_id, "roles", "running")
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
        self.record.set_step(flow_id, "roles", "done")
        crash_point("after_roles")

        # 5. hand the secret to the VBAzure appliance (when one is configured)
        self.signin.stop_if_cancelled(flow_id)
        where = "kept encrypted in the bot's database; never shown in Slack"
        handed_off = False
        if self.ctx.appliance is not None:
            handed = self._hand_off(flow, account_id, stored)
            handed_off = handed is not None
            where = handed or where
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
        self.signin.drop_session(flow_id)
        flow = self.record.get(flow_id)
        end = datetime.fromisoformat(stored["end_at"].replace("Z", "+00:00"))
        tenant = blocks.escape(identity.get("tenant_name") or "")
        portal = blocks.portal_app_url(
            self.ctx.config.cloud, str(identity.get("tenant_id") or ""), str(app["appId"])
        )
        summary = [
            f"*Application (client) id:* `{app['appId']}` · <{portal}|open it in the Azure portal>",
            f"*Tenant:* {tenant} `{identity.get('tenant_id')}`".replace(
                "*Tenant:*  ", "*Tenant:* "
            ),
            "*Roles:*\n"
            + "\n".join(f"• `{sub}`: {', '.join(names)}" for sub, names in roles.items()),
            f"*Client secret:* `{stored['hint']}…` expires "
            + blocks.slack_date(end.timestamp(), end.date().isoformat())
            + f" — {where}."
            + (f" {policy_note}" if policy_note else ""),
            blocks.next_steps(
                name=flow["name"],
                handed_off=handed_off,
                appliance_failed=self.ctx.appliance is not None and not handed_off,
            ),
        ]
        self.record.render_parent(flow, outcome=":white_check_mark: Created.", summary=summary)
        self.record.say(
            flow,
            f":white_check_mark: Service account `{flow['name']}` is ready"
            + (
                " and Veeam has it."
                if handed_off
                else f". Next: `veeam-sa-bot secret show {flow['name']}` on the bot's host, "
                "then add it in Veeam (the summary above says how)."
            ),
        )

    def _hand_off(
        self, flow: dict[str, Any], account_id: int, stored: dict[str, Any]
    ) -> str | None:
        """Register the new account with the appliance. A failure leaves the (valid) Azure
        account in place and says how to retry; returns where the secret went, or None."""
        self.record.set_step(flow["id"], "handoff", "running")
        account = queries.get_account_by_id(self._db, account_id)
        assert account is not None
        try:
            appliance_id = hand_off(
                self.ctx,
                account,
                self.ctx.cipher.decrypt(stored["ciphertext"]),
                flow["requester"],
            )
        except ApplianceError as exc:
            self.record.set_step(flow["id"], "handoff", "failed")
            self.record.say(
                flow,
                f":warning: The Azure side of `{flow['name']}` is ready, but handing it to Veeam failed: "
                f"{exc}. Retry with `/veeam-sa sync {flow['name']}` once the appliance is reachable.",
            )
            return None
        self.record.set_step(flow["id"], "handoff", "done")
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
            self.ctx, graph, object_id, flow, account_id, "active", "after_add_password"
        )

    def stop(self, flow_id: str, error: VeeamSAError, created: bool) -> None:
        """A step failed: roll back what this creation made, and say exactly what happened."""
        flow = self.record.get(flow_id)
        reason = flow_failure(error)
        self.signin.forget_cancel(flow_id)
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
        self.signin.drop_session(flow_id)
        self.record.audit(
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
        self.record.say(flow, text)
        self.record.finish_steps(
            flow_id,
            running="skipped" if cancelled else "failed",
            rolled_back=bool(rolled) and not leftover,
            outcome=(":no_entry_sign: Cancelled" if cancelled else ":x: Failed")
            + (" and rolled back." if rolled and not leftover else "."),
        )

    def end(self, flow: dict[str, Any], error: VeeamSAError) -> bool:
        """End a creation that cannot go on: roll back what it made, say so."""
        self.stop(flow["id"], error, created=True)
        return True

    def _roll_back_unrecorded(self, flow: dict[str, Any]) -> tuple[list[str], list[str]]:
        """The application step failed after Graph may have created the application (its
        answer was lost or unreadable): find it by this creation's unique name and delete it."""
        unique_name = f"veeam-sa-{flow['id']}"
        try:
            graph, _ = self.clients(flow["id"])
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
            graph, arm = self.clients(flow["id"])
        except SignInError:
            return [], [f"application `{account['app_id']}`"]
        config = self.ctx.config
        data = self.record.data(flow)
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
