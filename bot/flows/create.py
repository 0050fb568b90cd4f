"""The create journey: sign-in in a Slack thread, then provisioning.

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
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from slack_sdk.errors import SlackApiError

from bot.clients.arm import ArmClient
from bot.clients.signin import (
    DeviceSignIn,
    Identity,
    Session,
    TransientError,
    dump_flow,
    needs_interaction,
)
from bot.core import metrics
from bot.core.errors import (
    Cancelled,
    CommandError,
    NotAuthorised,
    SignInError,
    UnexpectedError,
    VeeamSAError,
    as_flow_error,
    error_label,
)
from bot.core.logs import forget, register_secret
from bot.flows.root import Services
from bot.slack import blocks
from bot.slack.grammar import Command
from bot.slack.messages import flow_failure, sign_in_failure, support_suffix
from bot.slack.notify import Notifier
from storage import queries

log = logging.getLogger(__name__)

SIGN_IN_STATES = ("starting", "awaiting_sign_in")
POST_SIGN_IN_STATES = (
    "signed_in",
    "checking",
    "blocked",
    "choosing",
    "provisioning",
    "renewing",
    "retiring",
)
CANCELLABLE_AFTER_SIGN_IN = ("signed_in", "blocked", "choosing")
TRANSIENT_BACKOFF_CAP = 30.0
#: States in which a step runs in the background; a cancel stops it at its next boundary.
RUNNING_STATES = ("checking", "provisioning", "renewing", "retiring")
#: A poll that keeps failing for a reason other than the database gives up after this many.
MAX_STALLED_POLLS = 5
#: How long a state may stand still with no job for it before the watchdog acts (seconds).
STEP_LIMITS_S = {
    "starting": 120,
    "awaiting_sign_in": 120,
    "signed_in": 600,
    "checking": 900,
    "provisioning": 1800,
    "renewing": 1800,
    "retiring": 900,
}
#: States that wait for a person; closed after a day.
PARKED_STATES = ("blocked", "choosing")
PARKED_LIMIT_S = 86400
#: Further sign-ins a tenant may ask for (MFA or consent per resource) before the flow fails.
MAX_EXTRA_SIGN_INS = 2


class _NeedsSignIn(Exception):
    """A resource's silent token needs the person again."""

    def __init__(self, scope: str, error: SignInError) -> None:
        self.scope = scope
        self.error = error
        super().__init__(scope)
#: What the sign-in code is for, as the code's message says it ("to … `NAME`").
PURPOSES = {"create": "create", "renew": "renew", "retire": "remove the old secret of"}


class CreateFlows:
    def __init__(
        self,
        services: Services,
        signin: DeviceSignIn,
        notifier: Notifier,
        on_signed_in: Callable[[str, Identity, Session], None] | None = None,
    ) -> None:
        self.services = services
        self.signin = signin
        self.notifier = notifier
        self.on_signed_in = on_signed_in
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

    # -- helpers ----------------------------------------------------------------------------

    @property
    def _db(self) -> Any:
        return self.services.store.db

    def _now(self) -> float:
        return self.services.clock().timestamp()

    def session(self, flow_id: str) -> Session | None:
        with self._lock:
            return self._sessions.get(flow_id)

    def drop_session(self, flow_id: str) -> None:
        with self._lock:
            self._sessions.pop(flow_id, None)
            self._transient.pop(flow_id, None)
        forget(flow_id)

    # -- cancelling a running step ------------------------------------------------------------

    def stop_if_cancelled(self, flow_id: str) -> None:
        """A step boundary: raise `Cancelled` when someone cancelled the flow meanwhile."""
        with self._lock:
            by = self._cancel_requests.get(flow_id)
        if by is not None:
            raise Cancelled(by)

    def forget_cancel(self, flow_id: str) -> None:
        with self._lock:
            self._cancel_requests.pop(flow_id, None)

    @staticmethod
    def data(flow: dict[str, Any]) -> dict[str, Any]:
        return json.loads(flow.get("data") or "{}")

    def save_data(self, flow_id: str, data: dict[str, Any]) -> None:
        queries.update_flow(self._db, flow_id, data=json.dumps(data, sort_keys=True))

    def parent_payload(
        self, flow: dict[str, Any], outcome: str | None = None, summary: list[str] | None = None
    ) -> dict[str, Any] | None:
        """The flow's parent message; None for a renewal that lives in an alert's thread."""
        data = self.data(flow)
        if flow["kind"] in ("renew", "retire"):
            if not data.get("own_parent"):
                return None
            parent = blocks.renew_parent if flow["kind"] == "renew" else blocks.retire_parent
            return parent(name=flow["name"], requester=flow["requester"], outcome=outcome)
        return blocks.create_parent(
            name=flow["name"],
            requester=flow["requester"],
            subscriptions=data.get("subscriptions", []),
            description=data.get("description"),
            steps=data.get("steps", {}),
            outcome=outcome,
            summary=summary,
        )

    def render_parent(
        self, flow: dict[str, Any], outcome: str | None = None, summary: list[str] | None = None
    ) -> None:
        if not flow.get("parent_ts"):
            return
        payload = self.parent_payload(flow, outcome, summary)
        if payload is not None:
            final = outcome is not None or summary is not None
            self.notifier.update_latest(flow["channel_id"], flow["parent_ts"], payload, wait=final)

    def set_step(
        self, flow_id: str, step: str, status: str, outcome: str | None = None
    ) -> dict[str, Any]:
        flow = queries.get_flow(self._db, flow_id)
        assert flow is not None
        data = self.data(flow)
        data.setdefault("steps", {})[step] = status
        self.save_data(flow_id, data)
        flow["data"] = json.dumps(data)
        self.render_parent(flow, outcome)
        return flow

    def audit(self, flow: dict[str, Any], action: str, outcome: str, **detail: Any) -> None:
        queries.add_audit(
            self._db,
            actor=flow["requester"],
            action=action,
            target=flow.get("name"),
            outcome=outcome,
            detail={"flow": flow["id"], **detail},
            correlation_id=detail.get("correlation_id"),
        )

    # -- begin (ack path: database only) ---------------------------------------------------

    def begin(self, *, requester: str, channel_id: str, command: Command) -> str:
        """Record a new create flow; refuse a name that is managed or already in flight."""
        assert command.name is not None
        flow_id = uuid.uuid4().hex
        with self.services.store.quick() as db, db.atomic():
            existing = queries.get_account(db, command.name)
            if existing is not None and existing["state"] == "active":
                raise CommandError(
                    f"`{command.name}` is already a managed service account. "
                    f"To get it a new secret, use `/veeam-sa renew {command.name}`."
                )
            if existing is not None:
                raise CommandError(
                    f"`{command.name}` has an unfinished creation ({existing['state']}); "
                    f"`/veeam-sa show {command.name}` says what exists. Pick another name, or remove "
                    f"application `{existing.get('app_id')}` in Entra first."
                )
            running = queries.open_flow_for_name(db, command.name)
            if running is not None:
                raise CommandError(
                    f"A flow for `{command.name}` is already in progress (started by "
                    f"<@{running['requester']}>). Wait for it, or cancel it with `/veeam-sa cancel`; "
                    f"to renew an existing account use `/veeam-sa renew {command.name}`."
                )
            now = queries.utcnow_iso(self.services.clock())
            queries.insert_flow(
                db,
                {
                    "id": flow_id,
                    "kind": "create",
                    "state": "starting",
                    "name": command.name,
                    "requester": requester,
                    "channel_id": channel_id,
                    "data": json.dumps(
                        {
                            "subscriptions": list(command.subscriptions),
                            "description": command.description,
                            "steps": {"sign_in": "running"},
                        },
                        sort_keys=True,
                    ),
                    "created_at": now,
                    "updated_at": now,
                },
            )
            queries.add_audit(
                db,
                actor=requester,
                action="create.requested",
                target=command.name,
                outcome="accepted",
                detail={"flow": flow_id, "subscriptions": list(command.subscriptions)},
            )
        return flow_id

    # -- start: parent message, device code, first poll ------------------------------------

    def start(self, flow_id: str) -> None:
        try:
            self._start(flow_id)
        except Exception as exc:  # noqa: BLE001 - a flow never stays in `starting` unsaid
            self.fail(flow_id, _unexpected_sign_in(as_flow_error(exc, flow_id)))

    def _start(self, flow_id: str) -> None:
        flow = queries.get_flow(self._db, flow_id)
        if flow is None or flow["state"] != "starting":
            return
        if flow.get("parent_ts"):  # resuming after a restart: the thread exists
            self._begin_sign_in(flow)
            return
        payload = self.parent_payload(flow)
        assert payload is not None
        try:
            parent_ts = self.notifier.post(flow["channel_id"], payload)
        except SlackApiError as exc:
            error = exc.response.get("error")
            queries.transition_flow(
                self._db, flow_id, ["starting"], "failed", error=f"slack:{error}"
            )
            self.audit(flow, f"{flow['kind']}.failed", "slack_error", error=error)
            hint = (
                "Invite me to this channel (`/invite @veeam-sa`) and try again."
                if error in ("not_in_channel", "channel_not_found", "is_archived")
                else "Try again in a moment."
            )
            self._tell_requester_directly(
                flow, f"I could not post in this channel (`{error}`). {hint}"
            )
            return
        queries.update_flow(self._db, flow_id, parent_ts=parent_ts)
        flow["parent_ts"] = parent_ts
        self._begin_sign_in(flow)

    def _begin_sign_in(self, flow: dict[str, Any]) -> None:
        flow_id = flow["id"]
        try:
            session = self.signin.new_session()
            device = self.signin.initiate(session, self.data(flow).get("sign_in_scope"))
        except SignInError as exc:
            self.fail(flow_id, exc)
            return
        except TransientError as exc:
            self.fail(flow_id, SignInError("unreachable", str(exc)))
            return
        with self._lock:
            self._sessions[flow_id] = session
        register_secret(str(device.get("device_code", "")), owner=flow_id)
        register_secret(
            str(device.get("user_code", "")), owner=flow_id
        )  # the requester's, not the logs
        encrypted = self.services.cipher.encrypt(dump_flow(device))
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
        self.services.workers.call_later(int(device.get("interval", 5)), self.poll, flow_id)
        where = self._send_code(flow, device)
        self.audit(flow, "sign_in.started", "pending", delivered=where)

    def _send_code(
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
            where = self.notifier.to_user(flow["channel_id"], flow["requester"], payload)
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
            blocks.note(blocks.code_delivery_note(flow["requester"], where)),
        )
        return where

    def _tell_requester_directly(self, flow: dict[str, Any], text: str) -> None:
        try:
            self.notifier.to_user(flow["channel_id"], flow["requester"], blocks.error_message(text))
        except SlackApiError:
            log.warning("could not tell %s that flow %s failed", flow["requester"], flow["id"])

    # -- polling ---------------------------------------------------------------------------

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
                self._signed_in(flow, stalled[1], session)
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
                self.fail(flow_id, _unexpected_sign_in(error))
                return
            delay = min(2.0**failures, TRANSIENT_BACKOFF_CAP * 2)
            log.warning(
                "flow %s: sign-in bookkeeping failed (%s); trying again in %.0fs",
                flow_id,
                error,
                delay,
            )
            self.services.workers.call_later(delay, self.poll, flow_id)

    def _forget_stall(self, flow_id: str) -> None:
        with self._lock:
            self._stalled.pop(flow_id, None)

    def _poll(self, flow_id: str) -> None:
        flow = queries.get_flow(self._db, flow_id)
        if flow is None or flow["state"] != "awaiting_sign_in":
            self.drop_session(flow_id)
            return
        device = json.loads(self.services.cipher.decrypt(flow["device_flow"]))
        register_secret(str(device.get("device_code", "")), owner=flow_id)  # after a restart, too
        register_secret(str(device.get("user_code", "")), owner=flow_id)
        if self._now() > float(device.get("expires_at", 0)):
            self.expire(flow_id)
            return
        before = int(device.get("interval", 5))
        try:
            session = self.session(flow_id)
            if session is None:
                session = self.signin.new_session()
                with self._lock:
                    self._sessions[flow_id] = session
            with metrics.SIGNIN_POLL_SECONDS.time():
                result = self.signin.poll(session, device)
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
            self.services.workers.call_later(delay, self.poll, flow_id)
            return
        with self._lock:
            self._transient.pop(flow_id, None)
        if result.pending:
            if result.interval != before:
                # slow_down: MSAL raised the interval in the flow dict; keep it for a restart.
                queries.update_flow(
                    self._db, flow_id, device_flow=self.services.cipher.encrypt(dump_flow(device))
                )
            self.services.workers.call_later(result.interval, self.poll, flow_id)
            return
        assert result.identity is not None
        with self._lock:  # the code is redeemed: a retry goes on from here, never polls again
            self._stalled[flow_id] = (self._stalled.get(flow_id, (0, None))[0], result.identity)
        self._signed_in(flow, result.identity, session)

    def _signed_in(self, flow: dict[str, Any], identity: Identity, session: Session) -> None:
        flow_id = flow["id"]
        data = self.data(flow)
        first = data.get("first_identity")
        if first is not None:
            # a further sign-in the tenant asked for: it must be the same person
            if (first["object_id"], first["tenant_id"]) != (
                identity.object_id,
                identity.tenant_id,
            ):
                self.fail(
                    flow_id,
                    SignInError(
                        "other_person",
                        "the second sign-in was made with another account",
                    ),
                    who=blocks.escape(f"{identity.upn} (first sign-in: {first['upn']})"),
                )
                return
        elif not self._acceptable(flow, identity):
            return
        try:
            tenant_name = self._tokens_and_tenant_name(session, identity)
        except _NeedsSignIn as need:
            if int(data.get("extra_sign_ins", 0)) < MAX_EXTRA_SIGN_INS:
                self._sign_in_again(flow, identity, session, need.scope, need.error)
            else:
                self.fail(flow_id, need.error)
            return
        except SignInError as exc:
            self.fail(flow_id, exc)
            return
        identity.tenant_name = tenant_name
        data = self.data(queries.get_flow(self._db, flow_id) or flow)
        data["identity"] = {
            "upn": identity.upn,
            "name": identity.name,
            "tenant_id": identity.tenant_id,
            "tenant_name": tenant_name,
            "object_id": identity.object_id,
        }
        data.pop("sign_in_scope", None)
        steps = data.setdefault("steps", {})
        steps["sign_in"] = "done"
        if "sign_in_again" in steps:
            steps["sign_in_again"] = "done"
        moved = queries.transition_flow(
            self._db,
            flow_id,
            ["awaiting_sign_in"],
            "signed_in",
            device_flow=None,
            data=json.dumps(data, sort_keys=True),
        )
        if not moved:
            self.drop_session(flow_id)
            return
        flow = queries.get_flow(self._db, flow_id) or flow
        self.audit(
            flow,
            "sign_in.completed",
            "ok",
            entra_upn=identity.upn,
            tenant_id=identity.tenant_id,
            sign_ins=1 + int(data.get("extra_sign_ins", 0)),
        )
        tenant = (
            f"{blocks.escape(tenant_name)} (`{blocks.escape(identity.tenant_id)}`)"
            if tenant_name
            else f"`{blocks.escape(identity.tenant_id)}`"
        )
        who = blocks.escape(
            f"{identity.name} ({identity.upn})" if identity.name else identity.upn
        )
        self.notifier.thread(
            flow["channel_id"],
            flow.get("parent_ts"),
            blocks.note(f":key: Signed in as *{who}* in tenant {tenant}."),
        )
        self.render_parent(flow)
        if self.on_signed_in is not None:
            self.on_signed_in(flow_id, identity, session)

    def _acceptable(self, flow: dict[str, Any], identity: Identity) -> bool:
        """Refuse personal accounts (unless allowed) and, when required, another's account."""
        flow_id = flow["id"]
        if identity.personal and not self.services.config.allow_personal_accounts:
            self.fail(
                flow_id,
                SignInError("personal", "personal Microsoft account"),
                who=blocks.escape(f"{identity.name} ({identity.upn})"),
            )
            return False
        if self.services.config.require_email_match:
            email = self._slack_email(flow["requester"])
            if not email or email.lower() != identity.upn.lower():
                self.fail(
                    flow_id,
                    SignInError(
                        "email_mismatch", "signed-in account does not match the Slack profile"
                    ),
                    who=blocks.escape(
                        f"{identity.upn} (your Slack email is {email or 'not visible to the bot'})"
                    ),
                )
                return False
        return True

    def _sign_in_again(
        self,
        flow: dict[str, Any],
        identity: Identity,
        session: Session,
        scope: str,
        error: SignInError,
    ) -> None:
        """The tenant wants the person again for `scope` (MFA or consent for that resource
        alone): a further device code, for that resource, to the same person, in the same
        way — a normal step of the flow, shown in the checklist."""
        flow_id = flow["id"]
        data = self.data(flow)
        data["first_identity"] = data.get("first_identity") or {
            "upn": identity.upn,
            "object_id": identity.object_id,
            "tenant_id": identity.tenant_id,
        }
        data["sign_in_scope"] = scope
        data["extra_sign_ins"] = int(data.get("extra_sign_ins", 0)) + 1
        steps = data.setdefault("steps", {})
        steps["sign_in"] = "done"
        steps["sign_in_again"] = "running"
        try:
            device = self.signin.initiate(session, scope)
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
            device_flow=self.services.cipher.encrypt(dump_flow(device)),
            expires_at=str(device.get("expires_at")),
            data=json.dumps(data, sort_keys=True),
        ):
            self.drop_session(flow_id)
            return
        flow = queries.get_flow(self._db, flow_id) or flow
        resource = self.signin.resource_name(scope)
        reason = (
            "multi-factor authentication"
            if error.kind == "mfa"
            else ("consent" if error.kind == "consent" else "a fresh sign-in")
        )
        self.audit(
            flow,
            "sign_in.again",
            "pending",
            resource=resource,
            aadsts=error.aadsts,
            correlation_id=error.correlation_id,
        )
        self.notifier.thread(
            flow["channel_id"],
            flow.get("parent_ts"),
            blocks.note(
                f":closed_lock_with_key: Signed in as {blocks.escape(identity.upn)}, but the tenant asks for "
                f"{reason} to reach {resource}{support_suffix(error.aadsts, error.correlation_id)}. "
                "One more sign-in is needed."
            ),
        )
        self.render_parent(flow)
        self._send_code(flow, device, again=resource)
        self.services.workers.call_later(int(device.get("interval", 5)), self.poll, flow_id)

    def _tokens_and_tenant_name(self, session: Session, identity: Identity) -> str | None:
        """Every token the flow needs (silently, each resource side by side), and the tenant's
        display name (None when it can't be read: it is decoration). Raises `_NeedsSignIn`
        when a resource needs the person again, `SignInError` when it refuses otherwise."""
        config = self.services.config
        signin = self.signin

        def fetch(scope: str) -> SignInError | None:
            try:
                signin.token(session, scope)
                return None
            except SignInError as exc:
                return exc

        def tenant_name() -> str | None:
            try:
                token = signin.token(session, signin.sign_in_scope)  # the sign-in's own
                arm = ArmClient(config.arm_url, signin.http, lambda: token, attempts=2)
                return arm.tenant_name(identity.tenant_id)
            except Exception:  # noqa: BLE001 - the name is decoration; sign-in already succeeded
                log.info("could not read the tenant's display name", exc_info=True)
                return None

        from bot.flows.provision import both

        others = [scope for scope in signin.scopes if scope != signin.sign_in_scope]
        name, errors = both(tenant_name, lambda: [fetch(scope) for scope in others])
        for scope, error in zip(others, errors, strict=True):
            if error is None:
                continue
            if needs_interaction(error):
                raise _NeedsSignIn(scope, error)
            raise error
        return name

    def _slack_email(self, user: str) -> str | None:
        try:
            profile = self.services.slack.users_info(user=user)["user"].get("profile") or {}
        except SlackApiError as exc:
            log.warning(
                "could not read the Slack profile of %s: %s", user, exc.response.get("error")
            )
            return None
        email = profile.get("email")
        return str(email) if email else None

    # -- endings ---------------------------------------------------------------------------

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
        self.audit(
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
            text += "\n" + self._leftover_text(flow)
        self.notifier.thread(flow["channel_id"], flow.get("parent_ts"), blocks.note(f":x: {text}"))
        self.set_step(
            flow_id, "sign_in", "failed", outcome=":x: Sign-in failed; nothing was created."
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
        self.audit(flow, "sign_in.expired", "expired", while_down=while_down)
        text = (
            "The sign-in code expired while the bot was offline."
            if while_down
            else "The sign-in code expired before anyone used it (codes last about 15 minutes)."
        )
        self.notifier.thread(
            flow["channel_id"],
            flow.get("parent_ts"),
            blocks.note(
                f":hourglass: {text} Run `/veeam-sa create {flow['name']}` again for a fresh code."
            ),
        )
        self.set_step(
            flow_id,
            "sign_in",
            "failed",
            outcome=":hourglass: Sign-in code expired; nothing was created.",
        )

    def cancel(self, flow_id: str, by: str) -> dict[str, Any]:
        """Cancel an open flow. Raises `NotAuthorised` or `CommandError`."""
        flow = queries.get_flow(self._db, flow_id)
        if flow is None:
            raise CommandError("That flow does not exist (any more).")
        self.services.authz.require_requester_or_admin(
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
        self.drop_session(flow_id)
        queries.add_audit(
            self._db,
            actor=by,
            action="create.cancelled",
            target=flow["name"],
            outcome="cancelled",
            detail={"flow": flow_id},
        )
        self.notifier.thread(
            flow["channel_id"],
            flow.get("parent_ts"),
            blocks.note(f":no_entry_sign: Cancelled by <@{by}>. {self._leftover_text(flow)}"),
        )
        steps = self.data(flow).get("steps", {})
        self.set_step(
            flow_id,
            "sign_in",
            "done" if steps.get("sign_in") == "done" else "skipped",
            outcome=f":no_entry_sign: Cancelled by <@{by}>.",
        )
        return flow

    def _cancel_running(self, flow: dict[str, Any], by: str) -> dict[str, Any]:
        """A step is running: it stops at the next step boundary, and what the flow made is
        rolled back (a renewal keeps the old secret)."""
        with self._lock:
            self._cancel_requests[flow["id"]] = by
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
        self.notifier.thread(
            flow["channel_id"],
            flow.get("parent_ts"),
            blocks.note(
                f":no_entry_sign: <@{by}> cancelled this; it stops at the next step and {undo}."
            ),
        )
        return flow

    def _leftover_text(self, flow: dict[str, Any]) -> str:
        if flow["kind"] != "create":
            return "The current secret is unchanged."
        account = (
            queries.get_account_by_id(self._db, flow["account_id"])
            if flow.get("account_id")
            else None
        )
        if account is None or account["state"] == "rolled_back":
            return "Nothing was created."
        return (
            f"The application created before the interruption (`{account['app_id']}`) is still in the "
            "tenant; delete it in the Entra admin center if you don't want it."
        )

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

    # -- the last nets: a job that raised past every handler, and the watchdog ----------------

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
                self.fail(flow_id, _unexpected_sign_in(error))
                return
            if kind == "create":
                self.services.provision._stop(flow_id, error, created=True)
                return
            account = queries.get_account_by_id(self._db, flow["account_id"])
            if kind == "renew" and account is not None:
                self.services.renew.abandon(flow, account, error)
                return
            if kind == "retire" and account is not None:
                self.services.renew._fail_retire(flow, account, error)
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
            self.drop_session(flow_id)
            self.audit(flow, f"{kind}.failed", "failed", reason=str(error)[:300])
            self.notifier.thread(
                flow["channel_id"],
                flow.get("parent_ts"),
                blocks.note(f":x: {flow_failure(error)} {self._leftover_text(flow)}"),
            )

    def watchdog(self, now: datetime) -> list[str]:
        """Find flows whose state has not moved for longer than their step can take and for
        which no job is scheduled or running; resume them, or end them cleanly, and say so.
        Returns a line per flow it acted on."""
        acted: list[str] = []
        for flow in queries.open_flows(self._db):
            if self.services.workers.has_work_for(flow["id"]):
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
                self._say(flow, f":stethoscope: {where}; the bot picked it up again.")
                self.services.workers.submit(self.start, flow["id"])
                acted.append(f"{flow['name']}: resumed from {state}")
            elif state == "awaiting_sign_in":
                self.services.workers.submit(self.poll, flow["id"])
                acted.append(f"{flow['name']}: polling again")
            elif self.session(flow["id"]) is None:
                self._ask_to_sign_in_again(flow)
                acted.append(f"{flow['name']}: asked to sign in again")
            else:
                reference = uuid.uuid4().hex[:12]
                log.error("flow %s stuck in %s (reference %s)", flow["id"], state, reference)
                self._say(flow, f":stethoscope: {where} with nothing running; ending it.")
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
        self.drop_session(flow["id"])
        self.audit(flow, f"{flow['kind']}.expired", "expired", waited_in=flow["state"])
        self._say(
            flow,
            f":hourglass: Closed: `{flow['name']}` waited a day for "
            + ("a Recheck" if flow["state"] == "blocked" else "a choice of subscriptions")
            + f". Nothing was created; run `/veeam-sa create {flow['name']}` again when ready.",
        )
        self.render_parent(
            queries.get_flow(self._db, flow["id"]) or flow, outcome=":hourglass: Closed."
        )

    def _say(self, flow: dict[str, Any], text: str) -> None:
        self.notifier.thread(flow["channel_id"], flow.get("parent_ts"), blocks.note(text))

    # -- restart ---------------------------------------------------------------------------

    def resume_all(self) -> None:
        """After a restart: poll again every unexpired sign-in; close the expired ones."""
        for flow in queries.open_flows(self._db):
            if flow["state"] == "starting":
                self.services.workers.submit(self.start, flow["id"])
            elif flow["state"] == "awaiting_sign_in":
                expires_at = float(flow.get("expires_at") or 0)
                if self._now() > expires_at:
                    self.expire(flow["id"], while_down=True)
                    continue
                self.notifier.thread(
                    flow["channel_id"],
                    flow.get("parent_ts"),
                    blocks.note(
                        ":arrows_counterclockwise: The bot restarted; still waiting for the sign-in."
                    ),
                )
                self.services.workers.submit(self.poll, flow["id"])
            elif flow["state"] in POST_SIGN_IN_STATES:
                self._ask_to_sign_in_again(flow)

    def _ask_to_sign_in_again(self, flow: dict[str, Any]) -> None:
        """Tokens live in memory only: after a restart the requester signs in again, and the
        creation resumes from the step it reached."""
        data = self.data(flow)
        data["resume"] = {
            "tenant_id": data.get("identity", {}).get("tenant_id"),
            "from": flow["state"],
        }
        data.setdefault("steps", {})["sign_in"] = "running"
        if not queries.transition_flow(
            self._db, flow["id"], [flow["state"]], "starting", data=json.dumps(data, sort_keys=True)
        ):
            return
        self.notifier.thread(
            flow["channel_id"],
            flow.get("parent_ts"),
            blocks.note(
                f":arrows_counterclockwise: The bot restarted while creating `{flow['name']}`. "
                f"<@{flow['requester']}>, sign in again with the new code to finish it "
                "(or cancel it)."
            ),
        )
        self.services.workers.submit(self.start, flow["id"])


def _unexpected_sign_in(error: VeeamSAError) -> SignInError:
    """An unexpected failure around sign-in, as the sign-in error the thread reports."""
    if isinstance(error, SignInError):
        return error
    return SignInError("unexpected", str(error))
