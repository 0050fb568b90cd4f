"""Repair: restore what the health check found missing, as the admin who pressed Repair.

    starting ─▶ awaiting_sign_in ─▶ signed_in ─▶ repairing ─▶ done
                                                     └──────▶ failed (alert stays open)

The clicker signs in with a device code exactly as for a renewal (code only to them, in
the alert's thread). Then, by the kind of drift:

- `roles`: every role the bot assigned on each subscription is assigned again (an existing
  one answers `RoleAssignmentExists`, which counts as done);
- `credential` and `appliance`: a new client secret is added, stored encrypted, proven
  (client-credentials grant) and handed over — to the appliance when one is configured
  (`updateByApp`), else kept for `veeam-sa-bot secret show` — and the secrets it replaces
  are removed where Entra still has them, as a renewal does; for `appliance` the roles are
  assigned again too;
- `application`: the application is re-created as VBAzure's *Re-create* does: a new
  application, service principal, secret and the same role assignments, proven, then the
  account's record points at it and the appliance's account (same account id) is updated
  to the new client id and secret. A failure before that deletes the new application again.

Then the account is checked again: the drift closes as *repaired* and its alert says who
repaired it, or the alert says what is still wrong.
"""

from __future__ import annotations

import logging
from typing import Any

from bot.clients.arm import ArmClient, assignment_name
from bot.clients.graph import GraphClient
from bot.clients.signin import Identity, Session
from bot.core.errors import (
    CommandError,
    MicrosoftError,
    VeeamSAError,
    as_flow_error,
)
from bot.flows.appliance import hand_off
from bot.flows.context import Context
from bot.flows.health import HealthCheck, appliance_view, expected_roles
from bot.flows.record import Record
from bot.flows.secrets import (
    SecretProofFailed,
    add_secret,
    check_tenant,
    object_id_of,
)
from bot.flows.signin import SignInEngine
from bot.slack import blocks
from storage import queries

log = logging.getLogger(__name__)

#: How long to keep trying a new secret before calling it broken.
PROOF_BUDGET_S = 60.0


class Repairs:
    def __init__(
        self, ctx: Context, record: Record, signin: SignInEngine, health: HealthCheck
    ) -> None:
        self.ctx = ctx
        self.record = record
        self.signin = signin
        self.health = health
        self.proof_budget = PROOF_BUDGET_S

    @property
    def _db(self) -> Any:
        return self.ctx.store.db

    def begin(self, *, requester: str, drift_ref: str, channel_id: str | None) -> str:
        """Record a repair of one open drift; raises `CommandError` with what to tell the user."""
        with self.ctx.store.quick() as db, db.atomic():
            drift = queries.get_drift(db, int(drift_ref))
            if drift is None or drift["state"] != "open":
                raise CommandError(
                    "That drift is no longer open (it was repaired or cleared); nothing to do."
                )
            account = queries.get_account_by_id(db, drift["account_id"])
            if account is None or account["state"] != "active":
                raise CommandError("That account is not managed by this bot (any more).")
            running = queries.open_flow_for_name(db, account["name"])
            if running is not None:
                raise CommandError(
                    f"<@{running['requester']}> is already working on `{account['name']}`; "
                    "wait for that to finish."
                )
            return self.record.new_flow(
                db,
                kind="repair",
                name=account["name"],
                requester=requester,
                channel_id=drift.get("channel_id") or channel_id,
                data={"drift": drift["id"], "drift_kind": drift["kind"], "steps": {"sign_in": "running"}},
                account_id=account["id"],
                parent_ts=drift.get("ts"),
                detail={"drift": drift["id"], "kind": drift["kind"]},
            )

    def on_signed_in(self, flow_id: str, identity: Identity, session: Session) -> None:
        flow = queries.get_flow(self._db, flow_id)
        if flow is None or not queries.transition_flow(
            self._db, flow_id, ["signed_in"], "repairing"
        ):
            return
        account = queries.get_account_by_id(self._db, flow["account_id"])
        assert account is not None
        try:
            check_tenant(identity, account)
            self._repair(flow, account, session)
        except Exception as exc:  # noqa: BLE001 - every failure leaves the alert open and says so
            self._fail(flow, account, as_flow_error(exc, flow_id))

    def end(self, flow: dict[str, Any], error: VeeamSAError) -> bool:
        account = queries.get_account_by_id(self._db, flow["account_id"])
        if account is None:
            return False
        self._fail(flow, account, error)
        return True

    # -- the repairs -----------------------------------------------------------------------

    def _repair(self, flow: dict[str, Any], account: dict[str, Any], session: Session) -> None:
        data = self.record.data(flow)
        drift = queries.get_drift(self._db, int(data["drift"]))
        assert drift is not None
        kind = drift["kind"]
        graph, arm = self.ctx.graph(session), self.ctx.arm(session)
        done: list[str] = []
        self.signin.stop_if_cancelled(flow["id"])
        if kind == "roles":
            done.append(self._assign_roles(flow, account, arm, str(account["sp_id"])))
        elif kind in ("credential", "appliance"):
            done.append(self._new_secret(flow, account, graph))
            if kind == "appliance" and account.get("sp_id"):
                done.append(self._assign_roles(flow, account, arm, str(account["sp_id"])))
        elif kind == "application":
            done.append(self._recreate(flow, account, graph, arm))
        else:
            raise CommandError(f"the bot does not know how to repair {kind!r}")
        self.signin.drop_session(flow["id"])

        # check again, as the scheduled check would
        fresh = self.health.account(account["id"])
        assert fresh is not None
        health = self.health.examine(fresh, appliance_view(self.ctx))
        now = self.ctx.clock()
        stamp = queries.utcnow_iso(now)
        still = health.findings.get(kind)
        repaired = still is None and kind in health.checked
        if repaired:
            queries.close_drift(self._db, drift["id"], "repaired", stamp, flow["requester"])
        self.health.record(fresh, health, now)
        self.health.edit_alert(
            account["name"],
            drift["id"],
            by=flow["requester"],
            still=None if repaired else (still.detail if still else "; ".join(health.problems)),
        )
        summary = " ".join(done)
        if repaired:
            text = f":white_check_mark: Repaired `{account['name']}`: {summary} The check finds it healthy again."
        else:
            text = (
                f":warning: `{account['name']}`: {summary} But the check still finds: "
                + (still.detail if still else "; ".join(health.problems) or "nothing it could confirm")
            )
        self.record.say(flow, text)
        with self._db.atomic():
            queries.transition_flow(self._db, flow["id"], ["repairing"], "done")
            queries.add_audit(
                self._db,
                actor=flow["requester"],
                action="repair.completed",
                target=account["name"],
                outcome="ok" if repaired else "still_drifting",
                detail={"flow": flow["id"], "drift": drift["id"], "kind": kind, "done": done},
            )

    def _assign_roles(
        self, flow: dict[str, Any], account: dict[str, Any], arm: ArmClient, principal: str
    ) -> str:
        wanted = expected_roles(self.ctx.config, account)
        created = 0
        for sub, roles in wanted.items():
            for definition in roles:
                outcome = arm.assign_role(
                    sub, definition, principal, assignment_name(flow["id"], sub, definition)
                )
                created += outcome == "created"
        queries.add_audit(
            self._db,
            actor=flow["requester"],
            action="azure.role_assignments",
            target=account["name"],
            outcome="repaired",
            detail={"flow": flow["id"], "created": created, "principal": principal},
        )
        return f"Assigned {created} missing role(s) again."

    def _prove(self, tenant_id: str, app_id: str, secret: str) -> None:
        failure = self.ctx.device.prove_secret(tenant_id, app_id, secret, self.proof_budget)
        if failure is not None:
            raise SecretProofFailed(f"the new secret could not obtain a token: {failure}")

    def _new_secret(self, flow: dict[str, Any], account: dict[str, Any], graph: GraphClient) -> str:
        """A new secret, proven and handed over; the ones it replaces go (as in a renewal)."""
        object_id = object_id_of(self._db, graph, account)
        old = queries.active_secrets(self._db, account["id"])
        new = add_secret(
            self.ctx, graph, object_id, flow, account["id"], "pending", "repair_after_add_password"
        )
        secret = self.ctx.cipher.decrypt(new["ciphertext"])
        try:
            self._prove(str(account["tenant_id"]), str(account["app_id"]), secret)
            if self.ctx.appliance is not None:
                hand_off(self.ctx, account, secret, flow["requester"])
        except Exception:
            try:
                graph.remove_password(object_id, new["key_id"])
            except MicrosoftError:
                log.warning("could not remove the unused new secret of %s", account["name"])
            queries.set_secret_state(self._db, [new["id"]], "retired")
            raise
        live = set(graph.password_key_ids(object_id))
        removed = [s["key_id"] for s in old if s["key_id"] in live]
        if self.ctx.appliance is not None:
            for key_id in removed:
                graph.remove_password(object_id, key_id)
        with self._db.atomic():
            queries.set_secret_state(self._db, [s["id"] for s in old], "retired")
            queries.set_secret_state(self._db, [new["id"]], "active")
            queries.add_audit(
                self._db,
                actor=flow["requester"],
                action="repair.secret",
                target=account["name"],
                outcome="ok",
                detail={"flow": flow["id"], "new_key_id": new["key_id"], "removed": removed},
            )
        where = (
            "handed to the Veeam appliance"
            if self.ctx.appliance is not None
            else f"kept encrypted by the bot: put it into Veeam (`veeam-sa-bot secret show "
            f"{account['name']}` on the bot's host; VBAzure *Service Accounts* → *Edit* → *Secret*)"
        )
        return f"Added a new client secret `{new['hint']}…` and proved it; it is {where}."

    def _recreate(
        self, flow: dict[str, Any], account: dict[str, Any], graph: GraphClient, arm: ArmClient
    ) -> str:
        """A new application in place of the deleted one, with the same roles, handed over."""
        unique_name = f"veeam-sa-{flow['id']}"
        app = graph.upsert_application(unique_name, account["name"], account.get("description"))
        try:
            sp = graph.ensure_service_principal(str(app["appId"]))
            new = add_secret(
                self.ctx, graph, str(app["id"]), flow, account["id"], "pending", "repair_after_add_password"
            )
            self._assign_roles(flow, account, arm, str(sp["id"]))
            self._prove(str(account["tenant_id"]), str(app["appId"]), self.ctx.cipher.decrypt(new["ciphertext"]))
        except Exception:
            try:
                graph.delete_application(str(app["id"]))
            except MicrosoftError:
                log.warning("could not delete the half-made application of %s", account["name"])
            for row in queries.pending_secrets(self._db, account["id"]):
                queries.set_secret_state(self._db, [row["id"]], "retired")
            raise
        old_app = account["app_id"]
        old = queries.active_secrets(self._db, account["id"])
        with self._db.atomic():
            queries.update_account(
                self._db,
                account["id"],
                app_object_id=app["id"],
                app_id=app["appId"],
                sp_id=sp["id"],
                unique_name=unique_name,
            )
            queries.set_secret_state(self._db, [s["id"] for s in old], "retired")
            queries.set_secret_state(self._db, [new["id"]], "active")
            queries.add_audit(
                self._db,
                actor=flow["requester"],
                action="azure.application",
                target=account["name"],
                outcome="recreated",
                detail={
                    "flow": flow["id"],
                    "old_app_id": old_app,
                    "app_id": app["appId"],
                    "object_id": app["id"],
                },
            )
        text = (
            f"Re-created the application: new client id `{app['appId']}` (was `{old_app}`), "
            f"a new client secret `{new['hint']}…` and its role assignments."
        )
        if self.ctx.appliance is not None:
            updated = queries.get_account_by_id(self._db, account["id"])
            assert updated is not None
            appliance_id = hand_off(
                self.ctx, updated, self.ctx.cipher.decrypt(new["ciphertext"]), flow["requester"]
            )
            text += f" The Veeam account `{appliance_id}` now uses them."
        else:
            text += (
                f" Put the new client id and secret into Veeam (`veeam-sa-bot secret show "
                f"{account['name']}` on the bot's host)."
            )
        return text

    def _fail(self, flow: dict[str, Any], account: dict[str, Any], error: VeeamSAError) -> None:
        reason, cancelled = self.signin.close_failed(flow, ["repairing", "signed_in"], "repair", error)
        self.ctx.notifier.thread(
            flow["channel_id"],
            flow.get("parent_ts"),
            blocks.note(
                f":x: Repair of `{account['name']}` "
                + ("cancelled" if cancelled else "failed")
                + f": {reason}\nThe drift is still open; Repair can be pressed again."
            ),
        )

