"""The device-code sign-in every flow kind runs first, in the flow's Slack thread.

States of a create flow (the `flows.state` column):

    starting ──▶ awaiting_sign_in ──▶ signed_in ──▶ … provisioning (bot.flows.provision) … ──▶ done
        │               │                 │
        └───────────────┴─────────────────┴──▶ failed | cancelled | expired

Handlers call `begin()` (a fast database write, safe on the ack path) and then
`workers.submit(flows.start, id)`. Everything slow — Slack posts, Microsoft calls, polls —
runs on the worker pool; polls are re-scheduled with `workers.call_later`, never slept.
Transitions are compare-and-set on the database row, so a cancel racing a poll, or two
processes racing each other, leave exactly one winner.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from typing import Any

from slack_sdk.errors import SlackApiError

from bot.clients.signin import (
    Identity,
    Session,
    TransientError,
    dump_flow,
)
from bot.core import metrics
from bot.core.errors import Cancelled, SignInError, VeeamSAError, as_flow_error, error_label
from bot.core.fanout import both
from bot.core.logs import forget, register_secret
from bot.flows.context import Context
from bot.flows.record import Record
from bot.flows.redeem import Redemption
from bot.flows.states import SIGN_IN_STATES
from bot.slack import blocks
from bot.slack.messages import flow_failure, sign_in_failure
from storage import queries

log = logging.getLogger(__name__)

TRANSIENT_BACKOFF_CAP = 30.0
#: A poll that keeps failing for a reason other than the database gives up after this many.
MAX_STALLED_POLLS = 5
#: What the sign-in code is for, as the code's message says it ("to … `NAME`").
PURPOSES = {
    "create": "create",
    "renew": "renew",
    "retire": "remove the old secret of",
    "repair": "repair",
}




class SignInEngine:
    def __init__(
        self,
        ctx: Context,
        record: Record,
        on_signed_in: Callable[[str, Identity, Session], None] | None = None,
    ) -> None:
        self.ctx = ctx
        self.record = record
        self.device = ctx.device
        self.notifier = ctx.notifier
        self.on_signed_in = on_signed_in
        #: Called once the sign-in's own token is there, beside the fetch of the flow's other
        #: tokens: the next step's reads that need only that token start early.
        self.on_token: Callable[[dict[str, Any], Identity, Session], None] | None = None
        self._sessions: dict[str, Session] = {}
        self._transient: dict[str, tuple[int, float]] = {}
        #: Cancels asked for while a step runs: flow id → who; the step stops at its next
        #: boundary (`stop_if_cancelled`) and rolls back.
        self._cancel_requests: dict[str, str] = {}
        #: Poll bookkeeping that failed (a database write): flow id → (failures, identity
        #: already obtained); the poll is rescheduled, and a redeemed code is not polled again.
        self._stalled: dict[str, tuple[int, Identity | None]] = {}
        #: How long Microsoft may keep failing (network, 429, 5xx) before a sign-in gives up.
        self.transient_budget = 120.0
        self._lock = threading.Lock()
        self.redemption = Redemption(self)

    @property
    def _db(self) -> Any:
        return self.ctx.store.db

    def _now(self) -> float:
        return self.ctx.clock().timestamp()

    def session(self, flow_id: str) -> Session | None:
        with self._lock:
            return self._sessions.get(flow_id)

    def choose_tenant(self, flow_id: str, user: str, tenant_id: str) -> str | None:
        """The requester chose the tenant to create in (`bot.flows.tenant`)."""
        return self.redemption.tenant.choose(flow_id, user, tenant_id)

    def keep_session(self, flow_id: str, session: Session) -> None:
        """`session` is the flow's from now on (a sign-in against another authority)."""
        with self._lock:
            self._sessions[flow_id] = session

    def drop_session(self, flow_id: str) -> None:
        with self._lock:
            self._sessions.pop(flow_id, None)
            self._transient.pop(flow_id, None)
        forget(flow_id)

    def stop_if_cancelled(self, flow_id: str) -> None:
        """A step boundary: raise `Cancelled` when someone cancelled the flow meanwhile."""
        with self._lock:
            by = self._cancel_requests.get(flow_id)
        if by is not None:
            raise Cancelled(by)

    def request_cancel(self, flow_id: str, by: str) -> None:
        """Ask the running step of `flow_id` to stop at its next boundary."""
        with self._lock:
            self._cancel_requests[flow_id] = by

    def forget_cancel(self, flow_id: str) -> None:
        with self._lock:
            self._cancel_requests.pop(flow_id, None)

    def start(self, flow_id: str) -> None:
        try:
            self._start(flow_id)
        except Exception as exc:  # noqa: BLE001 - a flow never stays in `starting` unsaid
            self.fail(flow_id, unexpected_sign_in(as_flow_error(exc, flow_id)))

    def _start(self, flow_id: str) -> None:
        flow = queries.get_flow(self._db, flow_id)
        if flow is None or flow["state"] != "starting":
            return
        if flow.get("parent_ts"):  # resuming after a restart: the thread exists
            self._begin_sign_in(flow)
            return
        payload = self.record.parent_payload(flow)
        assert payload is not None

        def post_parent() -> str | SlackApiError:
            try:
                return self.notifier.post(flow["channel_id"], payload)
            except SlackApiError as exc:
                return exc

        def device_code() -> tuple[Session, dict[str, Any]] | SignInError:
            try:
                data = self.record.data(flow)
                return self.device.begin(data.get("sign_in_scope"), tenant=data.get("tenant"))
            except SignInError as exc:
                return exc

        # The parent message and the device code do not depend on each other: ask Slack and
        # Microsoft side by side, so the code reaches the person one round trip sooner (the
        # longer of the two, Microsoft's, is asked first, from this thread).
        started, posted = both(device_code, post_parent)
        if isinstance(posted, SlackApiError):
            exc = posted
            error = exc.response.get("error")
            queries.transition_flow(
                self._db, flow_id, ["starting"], "failed", error=f"slack:{error}"
            )
            self.record.audit(flow, f"{flow['kind']}.failed", "slack_error", error=error)
            hint = (
                "Invite me to this channel (`/invite @veeam-sa`) and try again."
                if error in ("not_in_channel", "channel_not_found", "is_archived")
                else "Try again in a moment."
            )
            self._tell_requester_directly(
                flow, f"`{flow['name']}`: I could not post in this channel (`{error}`). {hint}"
            )
            return
        queries.update_flow(self._db, flow_id, parent_ts=posted)
        flow["parent_ts"] = posted
        if isinstance(started, SignInError):
            self.fail(flow_id, started)
            return
        self._signing_in(flow, *started)

    def _begin_sign_in(self, flow: dict[str, Any]) -> None:
        try:
            data = self.record.data(flow)
            session, device = self.device.begin(
                data.get("sign_in_scope"), tenant=data.get("tenant")
            )
        except SignInError as exc:
            self.fail(flow["id"], exc)
            return
        self._signing_in(flow, session, device)

    def _signing_in(self, flow: dict[str, Any], session: Session, device: dict[str, Any]) -> None:
        """A device code was issued: keep it (encrypted), schedule the first poll, send it."""
        flow_id = flow["id"]
        with self._lock:
            self._sessions[flow_id] = session
        register_secret(str(device.get("device_code", "")), owner=flow_id)
        register_secret(
            str(device.get("user_code", "")), owner=flow_id
        )  # the requester's, not the logs
        encrypted = self.ctx.cipher.encrypt(dump_flow(device))
        moved = queries.transition_flow(
            self._db,
            flow_id,
            ["starting"],
            "awaiting_sign_in",
            device_flow=encrypted,
            expires_at=str(device.get("expires_at")),
        )
        if not moved:  # cancelled meanwhile
            self.drop_session(flow_id)
            return
        # the first poll is scheduled before anything else can fail: the flow never waits
        # for a sign-in nobody polls
        self.ctx.workers.call_later(int(device.get("interval", 5)), self.poll, flow_id)
        where = self.send_code(flow, device)
        self.record.audit(flow, "sign_in.started", "pending", delivered=where)

    def send_code(
        self, flow: dict[str, Any], device: dict[str, Any], again: str | None = None
    ) -> str:
        payload = blocks.device_code_message(
            user_code=str(device["user_code"]),
            verification_uri=str(
                device.get("verification_uri") or "https://microsoft.com/devicelogin"
            ),
            expires_at=float(device["expires_at"]),
            flow_id=flow["id"],
            name=flow["name"],
            purpose=PURPOSES.get(flow["kind"], "create"),
            again=again,
        )
        try:
            where, dm_channel, dm_ts = self.notifier.to_user_at(
                flow["channel_id"], flow["requester"], payload
            )
            if dm_ts and dm_channel:
                self._keep_code_message(flow, dm_channel, dm_ts)
        except SlackApiError as exc:
            log.warning(
                "could not deliver the sign-in code for flow %s: %s",
                flow["id"],
                exc.response.get("error"),
            )
            where = "undelivered"
        self.notifier.thread(
            flow["channel_id"],
            flow.get("parent_ts"),
            blocks.note(blocks.code_delivery_note(flow["requester"], where), account=flow["name"]),
            wait=False,
        )
        return where

    def _keep_code_message(self, flow: dict[str, Any], channel: str, ts: str) -> None:
        """Remember where the code's direct message is, so it can be closed once sign-in is
        over; compare-and-set on the state, so a sign-in that finished meanwhile (and wrote
        the flow's data) is not overwritten: its message is closed at once instead."""
        current = self.record.get(flow["id"])
        data = self.record.data(current)
        data["code_dm"] = {
            "channel": channel,
            "ts": ts,
            "purpose": PURPOSES.get(flow["kind"], "create"),
        }
        state = current["state"]
        if state in SIGN_IN_STATES and queries.transition_flow(
            self._db, flow["id"], [state], state, data=json.dumps(data, sort_keys=True)
        ):
            return
        current = self.record.get(flow["id"])
        current["data"] = json.dumps({**self.record.data(current), "code_dm": data["code_dm"]})
        self.record.retire_controls(current)

    def _tell_requester_directly(self, flow: dict[str, Any], text: str) -> None:
        try:
            self.notifier.to_user(flow["channel_id"], flow["requester"], blocks.error_message(text))
        except SlackApiError:
            log.warning("could not tell %s that flow %s failed", flow["requester"], flow["id"])

    def poll(self, flow_id: str) -> None:
        """One poll of a pending sign-in. Whatever goes wrong around it is retried or ends
        the flow: a failed database write reschedules the poll (backing off, for as long as
        it takes: the code's expiry ends it otherwise), and a sign-in that succeeded is not
        polled again but carried on from there."""
        try:
            with self._lock:
                stalled = self._stalled.get(flow_id)
            if stalled is not None and stalled[1] is not None:
                flow = queries.get_flow(self._db, flow_id)
                session = self.session(flow_id)
                if flow is None or flow["state"] != "awaiting_sign_in" or session is None:
                    self._forget_stall(flow_id)
                    return
                self.redemption.signed_in(flow, stalled[1], session)
            else:
                self._poll(flow_id)
            self._forget_stall(flow_id)
        except Exception as exc:  # noqa: BLE001 - a poll must never strand its flow
            error = as_flow_error(exc, flow_id)
            with self._lock:
                failures, identity = self._stalled.get(flow_id, (0, None))
                failures += 1
                self._stalled[flow_id] = (failures, identity)
            bookkeeping = isinstance(exc, sqlite3.Error | OSError)
            if not bookkeeping and failures >= MAX_STALLED_POLLS:
                self._forget_stall(flow_id)
                self.fail(flow_id, unexpected_sign_in(error))
                return
            delay = min(2.0**failures, TRANSIENT_BACKOFF_CAP * 2)
            log.warning(
                "flow %s: sign-in bookkeeping failed (%s); trying again in %.0fs",
                flow_id,
                error,
                delay,
            )
            self.ctx.workers.call_later(delay, self.poll, flow_id)

    def _forget_stall(self, flow_id: str) -> None:
        with self._lock:
            self._stalled.pop(flow_id, None)

    def _poll(self, flow_id: str) -> None:
        flow = queries.get_flow(self._db, flow_id)
        if flow is None or flow["state"] != "awaiting_sign_in":
            self.drop_session(flow_id)
            return
        device = json.loads(self.ctx.cipher.decrypt(flow["device_flow"]))
        register_secret(str(device.get("device_code", "")), owner=flow_id)  # after a restart, too
        register_secret(str(device.get("user_code", "")), owner=flow_id)
        if self._now() > float(device.get("expires_at", 0)):
            self.expire(flow_id)
            return
        before = int(device.get("interval", 5))
        try:
            session = self.session(flow_id)
            if session is None:
                # after a restart: against the chosen tenant's authority when there is one
                session = self.device.new_session(self.record.data(flow).get("tenant"))
                with self._lock:
                    self._sessions[flow_id] = session
            with metrics.SIGNIN_POLL_SECONDS.time():
                result = self.device.poll(session, device)
        except SignInError as exc:
            self.fail(flow_id, exc)
            return
        except Exception as exc:  # noqa: BLE001 - a poll must never strand its flow
            if not isinstance(exc, TransientError):
                log.exception("flow %s: unexpected error while polling", flow_id)

            now = time.monotonic()
            with self._lock:
                failures, first = self._transient.get(flow_id, (0, now))
                failures += 1
                self._transient[flow_id] = (failures, first)
            if now - first >= self.transient_budget:
                self.fail(flow_id, SignInError("unreachable", f"sign-in kept failing ({exc})"))
                return
            delay = min(before * (2 ** (failures - 1)), TRANSIENT_BACKOFF_CAP)
            log.info(
                "flow %s: transient sign-in failure %d (%s); retrying in %ss",
                flow_id,
                failures,
                exc,
                delay,
            )
            self.ctx.workers.call_later(delay, self.poll, flow_id)
            return
        with self._lock:
            self._transient.pop(flow_id, None)
        if result.pending:
            if result.interval != before:
                # slow_down: MSAL raised the interval in the flow dict; keep it for a restart.
                queries.update_flow(
                    self._db, flow_id, device_flow=self.ctx.cipher.encrypt(dump_flow(device))
                )
            self.ctx.workers.call_later(result.interval, self.poll, flow_id)
            return
        assert result.identity is not None
        with self._lock:  # the code is redeemed: a retry goes on from here, never polls again
            self._stalled[flow_id] = (self._stalled.get(flow_id, (0, None))[0], result.identity)
        self.redemption.signed_in(flow, result.identity, session)

    def sign_in_once_more(
        self,
        flow: dict[str, Any],
        data: dict[str, Any],
        begin: Callable[[], tuple[Session, dict[str, Any]]],
        *,
        audit: tuple[str, dict[str, Any]],
        note: str,
        again: str,
    ) -> None:
        """A further device code for a flow whose first sign-in is done (the tenant asks for
        MFA or consent for one resource, or the account lives in another tenant): the
        checklist's "sign in once more" step, the code masked in logs and kept encrypted,
        the audit row, the thread's `note`, the code to the same person, polling."""
        flow_id = flow["id"]
        steps = data.setdefault("steps", {})
        steps["sign_in"] = "done"
        steps["sign_in_again"] = "running"
        try:
            session, device = begin()
        except SignInError as exc:
            self.fail(flow_id, exc)
            return
        register_secret(str(device.get("device_code", "")), owner=flow_id)
        register_secret(str(device.get("user_code", "")), owner=flow_id)
        if not queries.transition_flow(
            self._db,
            flow_id,
            ["awaiting_sign_in"],
            "awaiting_sign_in",
            device_flow=self.ctx.cipher.encrypt(dump_flow(device)),
            expires_at=str(device.get("expires_at")),
            data=json.dumps(data, sort_keys=True),
        ):
            self.drop_session(flow_id)
            return
        self.keep_session(flow_id, session)
        flow = queries.get_flow(self._db, flow_id) or flow
        action, detail = audit
        self.record.audit(flow, action, "pending", **detail)
        self.notifier.thread(
            flow["channel_id"], flow.get("parent_ts"), blocks.note(note, account=flow["name"])
        )
        self.record.render_parent(flow)
        self.send_code(flow, device, again=again)
        self.ctx.workers.call_later(int(device.get("interval", 5)), self.poll, flow_id)

    def close_failed(
        self, flow: dict[str, Any], states: list[str], kind: str, error: VeeamSAError
    ) -> tuple[str, bool]:
        """End a flow after sign-in that failed or was cancelled (from one of `states`):
        its state and error label, its session dropped, its audit row (`KIND.failed` /
        `KIND.cancelled`). Returns the reason in words and whether it was a cancel."""
        reason = flow_failure(error)
        cancelled = isinstance(error, Cancelled)
        queries.transition_flow(
            self._db,
            flow["id"],
            states,
            "cancelled" if cancelled else "failed",
            error=None if cancelled else error_label(error),
        )
        self.drop_session(flow["id"])
        self.forget_cancel(flow["id"])
        self.record.audit(
            flow,
            f"{kind}.cancelled" if cancelled else f"{kind}.failed",
            "cancelled" if cancelled else "failed",
            reason=reason[:300],
        )
        return reason, cancelled

    def fail(self, flow_id: str, error: SignInError, who: str | None = None) -> None:
        flow = queries.get_flow(self._db, flow_id)
        if flow is None:
            return
        moved = queries.transition_flow(
            self._db,
            flow_id,
            [*SIGN_IN_STATES, "signed_in"],
            "failed",
            device_flow=None,
            error=f"{error.kind}:{error.aadsts or error.error or ''}",
        )
        self.drop_session(flow_id)
        if not moved:
            return
        self.record.audit(
            flow,
            "sign_in.failed",
            error.kind,
            aadsts=error.aadsts,
            correlation_id=error.correlation_id,
            who=who,
        )
        text = sign_in_failure(error)
        if who:
            text = f"{who}: {text}"
        if flow.get("account_id"):
            text += "\n" + self.record.leftover_text(flow)
        self.notifier.thread(
            flow["channel_id"], flow.get("parent_ts"), blocks.note(f":x: {text}", account=flow["name"])
        )
        self.record.finish_steps(
            flow_id, running="failed", outcome=":x: Sign-in failed; nothing was created."
        )

    def expire(self, flow_id: str, while_down: bool = False) -> None:
        flow = queries.get_flow(self._db, flow_id)
        if flow is None:
            return
        if not queries.transition_flow(
            self._db, flow_id, list(SIGN_IN_STATES), "expired", device_flow=None
        ):
            return
        self.drop_session(flow_id)
        self.record.audit(flow, "sign_in.expired", "expired", while_down=while_down)
        text = (
            "The sign-in code expired while the bot was offline."
            if while_down
            else "The sign-in code expired before anyone used it (codes last about 15 minutes)."
        )
        self.notifier.thread(
            flow["channel_id"],
            flow.get("parent_ts"),
            blocks.note(
                f":hourglass: {text} Run `/veeam-sa create {flow['name']}` again for a fresh code.",
                account=flow["name"],
            ),
        )
        self.record.finish_steps(
            flow_id,
            running="failed",
            outcome=":hourglass: Sign-in code expired; nothing was created.",
        )


def unexpected_sign_in(error: VeeamSAError) -> SignInError:
    """An unexpected failure around sign-in, as the sign-in error the thread reports."""
    if isinstance(error, SignInError):
        return error
    return SignInError("unexpected", str(error))
