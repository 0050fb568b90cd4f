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
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from bot.clients.arm import (
    ArmClient,
    assignment_name,
    group_scope,
    role_definition_name,
    scope_label,
)
from bot.clients.graph import GraphClient
from bot.clients.vbazure import AZURE_ENVIRONMENTS
from bot.core import permissions as permission_lists
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
from bot.flows.appliance import hand_off_stored
from bot.flows.confirm import Confirmations
from bot.flows.context import Context
from bot.flows.record import Record
from bot.flows.secrets import (
    PROOF_BUDGET_S,
    add_certificate,
    add_secret,
    crash_point,
    prove_certificate,
)
from bot.flows.signin import SignInEngine
from bot.slack import blocks
from bot.slack.messages import flow_failure, secret_policy_note
from storage import queries

log = logging.getLogger(__name__)


def group_note(data: dict[str, Any], appliance: bool = True) -> str:
    """For an account made for a management group: what it covers, in the summary."""
    group = data.get("management_group")
    if not isinstance(group, dict) or not group.get("id"):
        return ""
    subs = data.get("subscriptions") or []
    text = (
        f"\n*Management group:* `{group['id']}`"
        + (f" {blocks.escape(str(group['name']))}" if group.get("name") else "")
        + f" — the roles reach every subscription in it; its {len(subs)} direct "
        + ("subscription" if len(subs) == 1 else "subscriptions")
        + " ("
        + ", ".join(f"`{s}`" for s in subs)
        + (
            ") go to Veeam, and the scheduled scan hands Veeam those added or removed later"
            if appliance
            else ") are the ones to give Veeam; the roles also cover subscriptions added later"
        )
    )
    if group.get("nested"):
        text += (
            ". Subscriptions in its nested groups ("
            + ", ".join(f"`{g}`" for g in group["nested"])
            + ") are not followed, as in Veeam"
        )
    return text


def custom_role_name(account: str, definition_id: str) -> str:
    """A least-privilege account's role name: unique in the tenant (ARM's rule) through the
    definition's GUID, at most 128 characters."""
    return f"Veeam Backup for Azure - {account[:80]} ({definition_id[:8]})"


def role_targets(data: dict[str, Any]) -> list[str]:
    """Where a creation assigns its roles: the management group's scope, or each subscription."""
    group = data.get("management_group")
    if isinstance(group, dict) and group.get("id"):
        return [group_scope(str(group["id"]))]
    return list(data.get("subscriptions") or [])


class Provisioner:
    def __init__(self, ctx: Context, record: Record, signin: SignInEngine) -> None:
        self.ctx = ctx
        self.record = record
        self.signin = signin
        self.notifier = ctx.notifier
        self.proof_budget = PROOF_BUDGET_S
        self._sleep: Callable[[float], None] = time.sleep
        self.confirmations = Confirmations(ctx, record)

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

    def provision_beside(
        self,
        flow_id: str,
        app_check: Callable[[], tuple[bool | None, str]],
        on_checked: Callable[[bool | None, str], None],
    ) -> MicrosoftError | None:
        """Create the application while `app_check` (the Graph-side prerequisite: may this
        account register applications?) runs beside it, then provision the rest — for a
        creation whose subscription rights are already known to be there. `on_checked` gets
        the check's answer once the application exists (a creation Graph accepted proves
        the right, whatever the check read).

        Returns Graph's refusal when it would not create the application and the check did
        not find the right either: nothing was created, the flow is back in `checking`, and
        the caller shows the missing right. Any other failure rolls back and ends the flow
        here, as in `provision`.
        """
        if not queries.transition_flow(self._db, flow_id, ["checking"], "provisioning"):
            return None
        try:
            # the creation goes out first, from this thread; the check is sent beside it
            made, (right, reason) = both(lambda: self._try_application(flow_id), app_check)
        except Exception as exc:  # noqa: BLE001 - every failure rolls back and says so
            self.stop(flow_id, as_flow_error(exc, flow_id), created=True)
            return None
        if isinstance(made, MicrosoftError) and made.status == 403 and right is not True:
            # Graph refused to create it: nothing exists. Back to the checks' verdict.
            flow = self.record.get(flow_id)
            data = self.record.data(flow)
            data.get("steps", {}).pop("application", None)
            queries.transition_flow(
                self._db,
                flow_id,
                ["provisioning"],
                "checking",
                data=json.dumps(data, sort_keys=True),
            )
            return made
        if isinstance(made, Exception):
            self.stop(flow_id, as_flow_error(made, flow_id), created=True)
            return None
        if right is not True:
            log.info("flow %s: the application was created although the check doubted it", flow_id)
            right, reason = True, (
                f"{reason} — Graph created the application, so the account may"
                if right is None
                else "Graph created the application, so the account may register applications "
                "(through a right the check does not read)"
            )
        try:
            on_checked(right, reason)
            self._after_application(flow_id, *made)
        except Exception as exc:  # noqa: BLE001 - every failure rolls back and says so
            self.stop(flow_id, as_flow_error(exc, flow_id), created=True)
        return None

    def _try_application(
        self, flow_id: str
    ) -> tuple[dict[str, Any], int, bool] | Exception:
        try:
            return self._application(flow_id)
        except Exception as exc:  # noqa: BLE001 - judged beside the check's answer
            return exc

    def _provision(self, flow_id: str) -> None:
        self._after_application(flow_id, *self._application(flow_id))

    def _application(self, flow_id: str) -> tuple[dict[str, Any], int, bool]:
        """Step 1: the application (upsert keyed by this creation) and the account row."""
        config = self.ctx.config
        flow = self.record.get(flow_id)
        data = self.record.data(flow)
        graph, _ = self.clients(flow_id)
        identity = data.get("identity", {})
        unique_name = f"veeam-sa-{flow_id}"

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
                        "credential": data.get("credential") or "secret",
                        **(
                            {"management_group": json.dumps(data["management_group"])}
                            if data.get("management_group")
                            else {}
                        ),
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
        return app, account_id, resumed

    def _after_application(
        self, flow_id: str, app: dict[str, Any], account_id: int, resumed: bool
    ) -> None:
        """Steps 2–5, once the application exists."""
        config = self.ctx.config
        flow = self.record.get(flow_id)
        data = self.record.data(flow)
        graph, arm = self.clients(flow_id)
        identity = data.get("identity", {})

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
        if stored.get("kind") == "certificate":
            # proven before anything depends on it: a token with a signed client assertion
            self.signin.stop_if_cancelled(flow_id)
            prove_certificate(
                self.ctx,
                {"tenant_id": identity.get("tenant_id"), "app_id": app["appId"]},
                stored,
                self.proof_budget,
                self._sleep,
            )
        self.record.set_step(flow_id, "secret", "done")
        policy_note = (
            secret_policy_note(
                stored["policy_limit"],
                config.secret_days,
                "certificate" if stored.get("kind") == "certificate" else "client secret",
            )
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
        targets = role_targets(data)
        roles: dict[str, list[str]] = {}
        if data.get("roles_mode") == "least-privilege":
            roles = self._custom_role(
                flow, account_id, app, stored, str(sp_id), targets, arm, subscriptions
            )
        else:
            pairs = [(sub, role) for sub in targets for role in config.roles]

            def assign(pair: tuple[str, Any]) -> str:
                sub, role = pair
                return arm.assign_role(
                    sub,
                    role.definition_id,
                    str(sp_id),
                    assignment_name(flow_id, sub, role.definition_id),
                )

            outcomes = parallel(assign, pairs)
            for (sub, role), _outcome in zip(pairs, outcomes, strict=True):
                roles.setdefault(sub, []).append(role.name)
        queries.update_account(self._db, account_id, roles=json.dumps(roles))
        # shown by the next edit (the hand-off, or the summary right after): an edit of its
        # own would only hold up the summary behind it
        self.record.set_step(flow_id, "roles", "done", render=False)
        crash_point("after_roles")

        # 5. hand the secret to the VBAzure appliance (when one is configured)
        self.signin.stop_if_cancelled(flow_id)
        certificate = stored.get("kind") == "certificate"
        where = "kept encrypted in the bot's database; never shown in Slack"
        if certificate and self.ctx.appliance is None:
            where = (
                "its private key is kept encrypted in the bot's database; an operator exports it "
                f"for Veeam with `veeam-sa-bot secret show {flow['name']} --out FILE.pfx`"
            )
        handed = False
        if self.ctx.appliance is not None:
            handed_to = self._hand_off(flow, account_id, stored)
            handed = handed_to is not None
            where = handed_to or where
        handed_off = handed
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
        if handed:  # the last step: Veeam itself checks the account's permissions
            self.record.set_step(flow_id, "confirm", "running")
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
            + "\n".join(
                f"• {scope_label(sub) if sub.startswith('/') else f'`{sub}`'}: {', '.join(names)}"
                for sub, names in roles.items()
            )
            + group_note(data, appliance=self.ctx.appliance is not None),
            ("*Certificate:* thumbprint " if certificate else "*Client secret:* ")
            + f"`{stored['hint']}…` expires "
            + blocks.slack_date(end.timestamp(), end.date().isoformat())
            + f" — {where}."
            + (f" {policy_note}" if policy_note else ""),
            blocks.next_steps(
                name=flow["name"],
                handed_off=handed_off,
                appliance_failed=self.ctx.appliance is not None and not handed_off,
            ),
        ]
        outcome = ":white_check_mark: Created."
        flow_data = self.record.data(flow)
        flow_data["final"] = {"outcome": outcome, "summary": summary}  # for the last step
        self.record.save_data(flow_id, flow_data)
        self.record.render_parent(flow, outcome=outcome, summary=summary)
        if handed_off:
            next_step = " and Veeam has it."
        elif certificate:
            next_step = (
                f". Next: `veeam-sa-bot secret show {flow['name']} --out FILE.pfx` on the bot's "
                "host, then add it in Veeam (the summary above says how)."
            )
        else:
            next_step = (
                f". Next: `veeam-sa-bot secret show {flow['name']}` on the bot's host, then add "
                "it in Veeam (the summary above says how)."
            )
        self.record.say(
            flow, f":white_check_mark: Service account `{flow['name']}` is ready{next_step}"
        )
        if handed:
            try:
                self.confirmations.begin(account_id, flow_id)
            except Exception:  # noqa: BLE001 - the account is made; only Veeam's word is missing
                log.exception("flow %s: the permission check by the appliance failed", flow_id)

    def _needed_permissions(
        self, flow: dict[str, Any], app: dict[str, Any], stored: dict[str, Any], subs: list[str]
    ) -> permission_lists.Permissions:
        """What the account's custom role must hold: the appliance's export for each
        subscription (their union) when one is configured, else the bot's own list."""
        config = self.ctx.config
        purposes = list(config.veeam_purposes)
        appliance = self.ctx.appliance
        if appliance is None:
            return permission_lists.shipped(purposes)
        secret = self.ctx.cipher.decrypt(stored["ciphertext"])
        tenant = self.record.data(flow).get("identity", {}).get("tenant_id")

        def export(sub: str) -> permission_lists.Permissions:
            document = appliance.export_permissions_by_app(
                subscription=sub,
                application_id=app["appId"],
                tenant_id=str(tenant),
                client_secret=secret,
                subscriptions=subs,
                purposes=purposes,
                environment=AZURE_ENVIRONMENTS.get(config.cloud, "Global"),
            )
            return permission_lists.from_export(document, "the Veeam appliance's export")

        exported = parallel(export, subs)
        result = exported[0]
        for more in exported[1:]:
            result = result.union(more)
        return result

    def _custom_role(
        self,
        flow: dict[str, Any],
        account_id: int,
        app: dict[str, Any],
        stored: dict[str, Any],
        sp_id: str,
        subs: list[str],
        arm: ArmClient,
        covered: list[str] | None = None,
    ) -> dict[str, list[str]]:
        """Least privilege: one custom role holding exactly what VBAzure needs for the
        purposes, assignable on the chosen subscriptions (or the management group's scope),
        assigned on each of them. Its GUID is derived from the creation and its scopes, so a
        retry updates the same definition; it is recorded before it is made, so a rollback
        finds it. `covered`: the subscriptions the permissions are exported for (a group's)."""
        flow_id = flow["id"]
        needed = self._needed_permissions(flow, app, stored, covered or subs)
        definition_id = role_definition_name(flow_id, subs)
        role_name = custom_role_name(flow["name"], definition_id)
        record = {"id": definition_id, "name": role_name, "scope": subs[0], "subscriptions": subs}
        queries.update_account(self._db, account_id, custom_role=json.dumps(record))
        try:
            outcome = arm.put_role_definition(
                subs[0],
                definition_id,
                role_name=role_name,
                description=(
                    f"Veeam Backup for Microsoft Azure service account {flow['name']}: "
                    f"the permissions its purposes need ({needed.source}). Made by veeam-sa."
                )[:1024],
                permissions=needed.block(),
                assignable_subscriptions=subs,
            )
        except MicrosoftError as exc:
            if exc.code == "RoleDefinitionWithSameNameExists":
                raise VeeamSAError(
                    f"Azure already has another custom role named `{role_name}` in this tenant; "
                    "rename or delete it, then run the create again"
                ) from None
            raise
        queries.add_audit(
            self._db,
            actor=flow["requester"],
            action="azure.role_definition",
            target=flow["name"],
            outcome=outcome,
            detail={
                "flow": flow_id,
                "id": definition_id,
                "name": role_name,
                "actions": len(needed.actions),
                "data_actions": len(needed.data_actions),
                "source": needed.source,
            },
        )
        crash_point("after_role_definition")
        parallel(
            lambda sub: arm.assign_role(
                sub, definition_id, sp_id, assignment_name(flow_id, sub, definition_id)
            ),
            subs,
        )
        self.record.say(
            flow,
            f":closed_lock_with_key: Least privilege: custom role `{role_name}` holds "
            f"{len(needed.actions)} actions and {len(needed.data_actions)} data actions, from "
            f"{needed.source}; no Contributor.",
        )
        return {sub: [role_name] for sub in subs}

    def _hand_off(
        self, flow: dict[str, Any], account_id: int, stored: dict[str, Any]
    ) -> str | None:
        """Register the new account with the appliance. A failure leaves the (valid) Azure
        account in place and says how to retry; returns where the secret went, or None."""
        self.record.set_step(flow["id"], "handoff", "running")
        account = queries.get_account_by_id(self._db, account_id)
        assert account is not None
        try:
            appliance_id = hand_off_stored(self.ctx, account, stored, flow["requester"])
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
        if self.record.data(flow).get("credential") == "certificate":
            # PATCH keyCredentials replaces them all: one a crash left unknown goes too
            return add_certificate(
                self.ctx, graph, object_id, flow, account_id, "active", "after_add_key"
            )
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
        # The parent's checklist first, then the note, as a creation that succeeds does: once
        # the note is in the thread, the parent already tells the same story.
        self.record.finish_steps(
            flow_id,
            running="skipped" if cancelled else "failed",
            rolled_back=bool(rolled) and not leftover,
            outcome=(":no_entry_sign: Cancelled" if cancelled else ":x: Failed")
            + (" and rolled back." if rolled and not leftover else "."),
        )
        self.record.say(flow, text)

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

    def _roll_back_custom_role(
        self, flow: dict[str, Any], arm: ArmClient, custom: dict[str, Any]
    ) -> tuple[list[str], list[str]]:
        """Its assignments first (ARM keeps a definition that is still assigned), then the
        definition itself."""
        definition_id = str(custom["id"])
        left: list[str] = []
        for sub in custom.get("subscriptions") or []:
            try:
                arm.delete_role_assignment(sub, assignment_name(flow["id"], sub, definition_id))
            except MicrosoftError:
                left.append(f"the assignment of custom role `{custom.get('name')}` on `{sub}`")
        if left:
            return [], [*left, f"custom role `{custom.get('name')}` (`{definition_id}`)"]
        try:
            arm.delete_role_definition(str(custom["scope"]), definition_id)
        except MicrosoftError:
            return [], [f"custom role `{custom.get('name')}` (`{definition_id}`)"]
        return [f"custom role `{custom.get('name')}` with its assignments"], []

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
        custom = json.loads(account.get("custom_role") or "null")
        if isinstance(custom, dict):
            rolled_custom, left_custom = self._roll_back_custom_role(flow, arm, custom)
            rolled += rolled_custom
            leftover += left_custom
        builtin = [] if data.get("roles_mode") == "least-privilege" else config.roles
        for sub in role_targets(data):
            for role in builtin:
                try:
                    arm.delete_role_assignment(
                        sub, assignment_name(flow["id"], sub, role.definition_id)
                    )
                except MicrosoftError:
                    leftover.append(f"role {role.name} on {scope_label(sub)}")
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
