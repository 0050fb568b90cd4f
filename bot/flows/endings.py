"""How flows end other than by their own steps: a cancel, a job that crashed, the watchdog
finding a flow that stopped moving, and a restart.

Each flow kind's own way to end a flow that cannot go on (roll a creation back, keep a
renewal's old secret) is handed in as `enders` by the composition root.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from bot.core.errors import (
    CommandError,
    NotAuthorised,
    UnexpectedError,
    VeeamSAError,
    as_flow_error,
    error_label,
)
from bot.flows.context import Context
from bot.flows.record import Record
from bot.flows.signin import PURPOSES, SignInEngine, unexpected_sign_in
from bot.flows.states import (
    CANCELLABLE_AFTER_SIGN_IN,
    PARKED_LIMIT_S,
    PARKED_STATES,
    POST_SIGN_IN_STATES,
    RUNNING_STATES,
    SIGN_IN_STATES,
    STEP_LIMITS_S,
)
from bot.slack import blocks
from bot.slack.messages import flow_failure
from storage import queries

log = logging.getLogger(__name__)

#: A flow kind's own ending for a flow that cannot go on; False when it could not act.
Ender = Callable[[dict[str, Any], VeeamSAError], bool]


class Endings:
    def __init__(
        self,
        ctx: Context,
        record: Record,
        signin: SignInEngine,
        enders: Mapping[str, Ender] | None = None,
    ) -> None:
        self.ctx = ctx
        self.record = record
        self.signin = signin
        self.enders: dict[str, Ender] = dict(enders or {})

    @property
    def _db(self) -> Any:
        return self.ctx.store.db

    def cancel(self, flow_id: str, by: str) -> dict[str, Any]:
        """Cancel an open flow. Raises `NotAuthorised` or `CommandError`."""
        flow = queries.get_flow(self._db, flow_id)
        if flow is None:
            raise CommandError("That flow does not exist (any more).")
        self.ctx.authz.require_requester_or_admin(
            by, flow["requester"], "cancel", flow["name"]
        )
        if flow["state"] in RUNNING_STATES:
            return self._cancel_running(flow, by)
        if not queries.transition_flow(
            self._db,
            flow_id,
            [*SIGN_IN_STATES, *CANCELLABLE_AFTER_SIGN_IN],
            "cancelled",
            device_flow=None,
        ):
            current = queries.get_flow(self._db, flow_id) or flow
            if current["state"] in RUNNING_STATES:
                return self._cancel_running(current, by)
            raise CommandError(
                f"The flow for `{flow['name']}` is {current['state']}; it can't be cancelled now."
            )
        self.signin.drop_session(flow_id)
        queries.add_audit(
            self._db,
            actor=by,
            action="create.cancelled",
            target=flow["name"],
            outcome="cancelled",
            detail={"flow": flow_id},
        )
        self.ctx.notifier.thread(
            flow["channel_id"],
            flow.get("parent_ts"),
            blocks.note(
                f":no_entry_sign: Cancelled by <@{by}>. {self.record.leftover_text(flow)}",
                account=flow["name"],
            ),
        )
        self.record.finish_steps(
            flow_id, running="skipped", outcome=f":no_entry_sign: Cancelled by <@{by}>."
        )
        return flow

    def cancel_from_code(self, flow_id: str, by: str) -> dict[str, Any]:
        """The Cancel button of a sign-in code's message: cancel the flow, or, when it is
        already past sign-in, say what became of it. Returns what replaces the code's
        message (its Cancel button retires either way). Raises `NotAuthorised`."""
        flow = queries.get_flow(self._db, flow_id)
        if flow is None:
            return blocks.note("This sign-in no longer exists; nothing to cancel.")
        self.ctx.authz.require_requester_or_admin(by, flow["requester"], "cancel", flow["name"])
        purpose = PURPOSES.get(flow["kind"], "create")
        if flow["state"] not in queries.TERMINAL_FLOW_STATES:
            try:
                self.cancel(flow_id, by)
            except CommandError:
                pass  # it ended meanwhile: say how, below
            else:
                running = flow["state"] in RUNNING_STATES
                return blocks.code_message_closed(
                    name=flow["name"], purpose=purpose, state="cancelling" if running else "cancelled"
                )
        flow = queries.get_flow(self._db, flow_id) or flow
        state = flow["state"]
        if state not in ("cancelled", "expired", "failed"):
            state = "signed_in"
        return blocks.code_message_closed(name=flow["name"], purpose=purpose, state=state)

    def _cancel_running(self, flow: dict[str, Any], by: str) -> dict[str, Any]:
        """A step is running: it stops at the next step boundary, and what the flow made is
        rolled back (a renewal keeps the old secret)."""
        self.signin.request_cancel(flow["id"], by)
        queries.add_audit(
            self._db,
            actor=by,
            action=f"{flow['kind']}.cancel_requested",
            target=flow["name"],
            outcome="pending",
            detail={"flow": flow["id"], "state": flow["state"]},
        )
        undo = (
            "what it created so far is rolled back"
            if flow["kind"] == "create"
            else "the current secret stays as it is"
        )
        self.ctx.notifier.thread(
            flow["channel_id"],
            flow.get("parent_ts"),
            blocks.note(
                f":no_entry_sign: <@{by}> cancelled this; it stops at the next step and {undo}.",
                account=flow["name"],
            ),
        )
        return flow

    def cancel_mine(self, user: str) -> list[str]:
        """`/veeam-sa cancel`: cancel every open flow the user started. Returns their names."""
        names = []
        for flow in queries.open_flows_of(self._db, user):
            try:
                self.cancel(flow["id"], user)
                names.append(flow["name"])
            except (CommandError, NotAuthorised):
                continue
        return names

    def crash(self, flow_id: str, exc: BaseException) -> None:
        """A flow's background job raised past every handler: end the flow in a known state."""
        flow = queries.get_flow(self._db, flow_id)
        if flow is None or flow["state"] in queries.TERMINAL_FLOW_STATES:
            return
        self.end_stuck(flow, as_flow_error(exc, flow_id))

    def end_stuck(self, flow: dict[str, Any], error: VeeamSAError) -> None:
        """End a flow that cannot go on, the way its own failure would: roll back what a
        creation made, keep a renewal's old secret, say so in the thread."""
        flow_id, state, kind = flow["id"], flow["state"], flow["kind"]
        try:
            if state in (*SIGN_IN_STATES, "signed_in"):
                self.signin.fail(flow_id, unexpected_sign_in(error))
                return
            ender = self.enders.get(kind)
            if ender is not None and ender(flow, error):
                return
        except Exception:  # noqa: BLE001 - fall through to the plainest ending
            log.exception("flow %s: its own failure handling failed", flow_id)
        if queries.transition_flow(
            self._db,
            flow_id,
            [state],
            "failed",
            device_flow=None,
            error=error_label(error),
        ):
            self.signin.drop_session(flow_id)
            self.record.audit(flow, f"{kind}.failed", "failed", reason=str(error)[:300])
            self.ctx.notifier.thread(
                flow["channel_id"],
                flow.get("parent_ts"),
                blocks.note(
                    f":x: {flow_failure(error)} {self.record.leftover_text(flow)}",
                    account=flow["name"],
                ),
            )
            self.record.finish_steps(flow_id, running="failed", outcome=":x: Failed.")

    def watchdog(self, now: datetime) -> list[str]:
        """Find flows whose state has not moved for longer than their step can take and for
        which no job is scheduled or running; resume them, or end them cleanly, and say so.
        Returns a line per flow it acted on."""
        acted: list[str] = []
        for flow in queries.open_flows(self._db):
            if self.ctx.workers.has_work_for(flow["id"]):
                continue
            state = flow["state"]
            try:
                moved = datetime.fromisoformat(str(flow["updated_at"]).replace("Z", "+00:00"))
            except ValueError:
                continue
            if moved.tzinfo is None:
                moved = moved.replace(tzinfo=UTC)
            age = (now - moved).total_seconds()
            if state in PARKED_STATES:
                if age > PARKED_LIMIT_S:
                    self._close_parked(flow)
                    acted.append(f"{flow['name']}: closed after waiting {age / 3600:.0f} h")
                continue
            limit = STEP_LIMITS_S.get(state)
            if limit is None or age < limit:
                continue
            where = f"`{flow['name']}` had stopped in {state.replace('_', ' ')}"
            if state == "starting":
                self.record.say(flow, f":stethoscope: {where}; the bot picked it up again.")
                self.ctx.workers.submit(self.signin.start, flow["id"])
                acted.append(f"{flow['name']}: resumed from {state}")
            elif state == "awaiting_sign_in":
                self.ctx.workers.submit(self.signin.poll, flow["id"])
                acted.append(f"{flow['name']}: polling again")
            elif self.signin.session(flow["id"]) is None:
                self._ask_to_sign_in_again(flow)
                acted.append(f"{flow['name']}: asked to sign in again")
            else:
                reference = uuid.uuid4().hex[:12]
                log.error("flow %s stuck in %s (reference %s)", flow["id"], state, reference)
                self.record.say(flow, f":stethoscope: {where} with nothing running; ending it.")
                self.end_stuck(
                    flow, UnexpectedError(reference, "a step that stopped without finishing")
                )
                acted.append(f"{flow['name']}: ended from {state}")
        return acted

    def _close_parked(self, flow: dict[str, Any]) -> None:
        """A flow waiting for a person (Recheck, a subscription choice) for too long: close
        it. Nothing was created before these steps."""
        if not queries.transition_flow(self._db, flow["id"], [flow["state"]], "expired"):
            return
        self.signin.drop_session(flow["id"])
        self.record.audit(flow, f"{flow['kind']}.expired", "expired", waited_in=flow["state"])
        self.record.say(
            flow,
            f":hourglass: Closed: `{flow['name']}` waited a day for "
            + ("a Recheck" if flow["state"] == "blocked" else "a choice of subscriptions")
            + f". Nothing was created; run `/veeam-sa create {flow['name']}` again when ready.",
        )
        self.record.finish_steps(flow["id"], running="skipped", outcome=":hourglass: Closed.")

    def resume_all(self) -> None:
        """After a restart: poll again every unexpired sign-in; close the expired ones."""
        for flow in queries.open_flows(self._db):
            if flow["state"] == "starting":
                self.ctx.workers.submit(self.signin.start, flow["id"])
            elif flow["state"] == "awaiting_sign_in":
                expires_at = float(flow.get("expires_at") or 0)
                if self.ctx.clock().timestamp() > expires_at:
                    self.signin.expire(flow["id"], while_down=True)
                    continue
                self.ctx.notifier.thread(
                    flow["channel_id"],
                    flow.get("parent_ts"),
                    blocks.note(
                        ":arrows_counterclockwise: The bot restarted; still waiting for the sign-in.",
                        account=flow["name"],
                    ),
                )
                self.ctx.workers.submit(self.signin.poll, flow["id"])
            elif flow["state"] in POST_SIGN_IN_STATES:
                self._ask_to_sign_in_again(flow)

    def _ask_to_sign_in_again(self, flow: dict[str, Any]) -> None:
        """Tokens live in memory only: after a restart the requester signs in again, and the
        creation resumes from the step it reached."""
        data = self.record.data(flow)
        data["resume"] = {
            "tenant_id": data.get("identity", {}).get("tenant_id"),
            "from": flow["state"],
        }
        data.setdefault("steps", {})["sign_in"] = "running"
        if not queries.transition_flow(
            self._db, flow["id"], [flow["state"]], "starting", data=json.dumps(data, sort_keys=True)
        ):
            return
        self.ctx.notifier.thread(
            flow["channel_id"],
            flow.get("parent_ts"),
            blocks.note(
                f":arrows_counterclockwise: The bot restarted while creating `{flow['name']}`. "
                f"<@{flow['requester']}>, sign in again with the new code to finish it "
                "(or cancel it).",
                account=flow["name"],
            ),
        )
        self.ctx.workers.submit(self.signin.start, flow["id"])
