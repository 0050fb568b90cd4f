"""Renewal: a new client secret, handed over and proven, before the old one goes.

    starting ─▶ awaiting_sign_in ─▶ signed_in ─▶ renewing ─▶ done
                                                     └──────▶ failed (old secret kept)

The person who clicked Renew (or ran `/veeam-sa renew NAME`) signs in with a device code —
the same sign-in as `create`, code only to them, in the alert's thread. Then:

1. add a new password (explicit end date; the row stores what Graph returned) and store it
   encrypted at once, as `pending`;
2. hand it to its consumer (the encrypted store; the appliance when configured);
3. prove it: the client-credentials grant must return a token (retried briefly: a new
   secret takes seconds to work);
4. make the new one `active`, and retire the old password(s) only once their consumer holds
   the new one:
   - with a VBAzure appliance configured the bot handed it over itself (`updateByApp`), so
     the old password(s) are removed at once;
   - without one, a person copies secrets into Veeam (`veeam-sa-bot secret show`), so the old
     password(s) stay live as `retiring`. The thread says where the new secret is and how to
     put it into Veeam, with a "Veeam has the new secret — remove the old one" button; that
     button (or `/veeam-sa retire NAME`) starts a *retire* flow:

    starting ─▶ awaiting_sign_in ─▶ signed_in ─▶ retiring ─▶ done (old password removed)
                                                     └──────▶ failed (it stays live)

   The clicker signs in with a device code like a renewal (Graph tokens live for one flow
   only), and only a secret that is `retiring` — a previous secret of a live account, kept
   for Veeam — can be removed this way.

Any failure before step 4 leaves the old secret in place and removes the unproven new one.
One open renewal (or retirement) per account: a second click is told who is already at it.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx
from slack_sdk.errors import SlackApiError

from bot.clients.graph import GraphClient
from bot.clients.signin import Identity, Session
from bot.clients.vbazure import ApplianceError
from bot.core.errors import (
    Cancelled,
    CommandError,
    MicrosoftError,
    SignInError,
    VeeamSAError,
    as_flow_error,
    error_label,
)
from bot.flows.appliance import appliance_text, hand_off
from bot.flows.expiry import parse_time
from bot.flows.provision import add_secret, crash_point
from bot.slack import blocks
from bot.slack.messages import flow_failure, secret_policy_note
from storage import queries

if TYPE_CHECKING:
    from bot.flows.create import CreateFlows

log = logging.getLogger(__name__)

#: How long to keep trying a new secret before calling it broken.
PROOF_BUDGET_S = 60.0


class SecretProofFailed(VeeamSAError):
    """The new secret could not obtain a token."""


class Renewals:
    def __init__(self, flows: CreateFlows, sleep: Callable[[float], None] = time.sleep) -> None:
        self.flows = flows
        self.services = flows.services
        self.notifier = flows.notifier
        self._sleep = sleep
        self.proof_budget = PROOF_BUDGET_S

    @property
    def _db(self) -> Any:
        return self.services.store.db

    # -- begin (ack path: database only) ---------------------------------------------------

    def begin(
        self,
        *,
        requester: str,
        account_ref: str,
        by_id: bool,
        channel_id: str | None,
        thread_ts: str | None,
    ) -> str:
        """Record a renewal; raises `CommandError` / `NotAuthorised` with what to tell the user."""
        self.services.authz.require_admin(requester, "renew", account_ref or None)
        with self.services.store.quick() as db, db.atomic():
            if by_id:
                account = (
                    queries.get_account_by_id(db, int(account_ref))
                    if account_ref.isdigit()
                    else None
                )
                if account is not None and account["state"] != "active":
                    account = None
            else:
                account = queries.get_account(db, account_ref)
            if account is None or account["state"] != "active":
                raise CommandError(
                    f"There is no managed service account `{account_ref}`."
                    if not by_id
                    else "That account is not managed by this bot (any more)."
                )
            running = queries.open_flow_for_name(db, account["name"])
            if running is not None:
                who = running["requester"]
                raise CommandError(
                    f"<@{who}> is already {'renewing' if running['kind'] == 'renew' else 'working on'} "
                    f"`{account['name']}`; wait for that to finish."
                )
            flow_id = uuid.uuid4().hex
            now = queries.utcnow_iso(self.services.clock())
            own_parent = thread_ts is None
            digest = thread_ts is not None and queries.is_digest(db, thread_ts)
            queries.insert_flow(
                db,
                {
                    "id": flow_id,
                    "kind": "renew",
                    "state": "starting",
                    "name": account["name"],
                    "account_id": account["id"],
                    "requester": requester,
                    "channel_id": channel_id
                    or account.get("alert_channel_id")
                    or account.get("channel_id"),
                    "parent_ts": thread_ts,
                    "data": json.dumps(
                        {
                            "own_parent": own_parent,
                            "alert_digest": digest,
                            "steps": {"sign_in": "running"},
                        }
                    ),
                    "created_at": now,
                    "updated_at": now,
                },
            )
            queries.add_audit(
                db,
                actor=requester,
                action="renew.requested",
                target=account["name"],
                outcome="accepted",
                detail={"flow": flow_id},
            )
        return flow_id

    # -- after sign-in -----------------------------------------------------------------------

    def on_signed_in(self, flow_id: str, identity: Identity, session: Session) -> None:
        flow = queries.get_flow(self._db, flow_id)
        if flow is not None and flow["kind"] == "retire":
            self._on_signed_in_to_retire(flow, identity, session)
            return
        if flow is None or not queries.transition_flow(
            self._db, flow_id, ["signed_in"], "renewing"
        ):
            return
        account = queries.get_account_by_id(self._db, flow["account_id"])
        assert account is not None
        try:
            if identity.tenant_id.lower() != str(account["tenant_id"]).lower():
                raise SignInError(
                    "other",
                    f"that account is in tenant {identity.tenant_id}; `{account['name']}` lives in tenant "
                    f"{account['tenant_id']}. Sign in with an account of that tenant",
                )
            self._renew(flow, account, session)
        except Exception as exc:  # noqa: BLE001 - every failure keeps the old secret and says so
            self.abandon(flow, account, as_flow_error(exc, flow_id))

    def abandon(self, flow: dict[str, Any], account: dict[str, Any], error: VeeamSAError) -> None:
        """End a renewal that cannot go on: a new secret it added but did not finish is
        removed again (when the sign-in session still allows), the old one stays."""
        pending = [
            s
            for s in self._db.table("secrets").rows_where(
                "account_id = ? AND state = 'pending'", [account["id"]]
            )
        ]
        session = self.flows.session(flow["id"])
        if pending and session is not None and account.get("app_object_id"):
            graph = self._graph(session)
            for new in pending:
                self._discard(graph, str(account["app_object_id"]), new, account)
        self.flows.forget_cancel(flow["id"])
        self._fail(flow, account, error)

    def _graph(self, session: Session) -> GraphClient:
        config = self.services.config
        signin = self.flows.signin
        return GraphClient(
            config.graph_url, self.services.http, lambda: signin.token(session, config.graph_scope)
        )

    def _renew(self, flow: dict[str, Any], account: dict[str, Any], session: Session) -> None:
        graph = self._graph(session)
        object_id = account["app_object_id"]
        if not object_id:  # imported from the appliance: only the client id is known
            found = graph.find_by_app_id(account["app_id"])
            if found is None:
                raise SecretProofFailed(
                    f"no application with client id {account['app_id']} in this tenant"
                )
            object_id = str(found["id"])
            queries.update_account(self._db, account["id"], app_object_id=object_id)
        known = {
            s["key_id"]
            for s in self._db.table("secrets").rows_where("account_id = ?", [account["id"]])
        }
        old = queries.active_secrets(self._db, account["id"])
        pending = list(
            self._db.table("secrets").rows_where(
                "account_id = ? AND state = 'pending'", [account["id"]]
            )
        )

        self.flows.stop_if_cancelled(flow["id"])
        if pending:  # resumed after a crash: the new secret exists and is stored
            new = pending[-1]
        else:
            # 0. a password Graph issued before a crash but the bot never stored is unknowable
            # (an imported account's passwords are all unknown to the bot: leave them be)
            if not account.get("imported"):
                for key_id in graph.password_key_ids(object_id):
                    if key_id not in known:
                        graph.remove_password(object_id, key_id)
            # 1. add the new secret; store it encrypted before anything else
            new = add_secret(
                self.services,
                graph,
                object_id,
                flow,
                account["id"],
                "pending",
                "renew_after_add_password",
            )
        crash_point("after_new_secret")
        if new.get("policy_limit"):
            self.notifier.thread(
                flow["channel_id"],
                flow.get("parent_ts"),
                blocks.note(
                    ":hourglass: "
                    + secret_policy_note(new["policy_limit"], self.services.config.secret_days)
                ),
            )

        # 2. hand-off: the encrypted store already holds it (the appliance comes here too).
        # 3. prove it can obtain a token before the old one goes
        try:
            self.flows.stop_if_cancelled(flow["id"])
            self._prove(account, self.services.cipher.decrypt(new["ciphertext"]))
            self.flows.stop_if_cancelled(flow["id"])
        except Exception:
            self._discard(graph, object_id, new, account)
            raise

        # 3b. hand the new secret to the appliance before the old one goes
        if self.services.appliance is not None:
            try:
                hand_off(
                    self.services,
                    account,
                    self.services.cipher.decrypt(new["ciphertext"]),
                    flow["requester"],
                )
            except Exception:
                self._discard(graph, object_id, new, account)
                raise

        # 4. retire the old secret(s): at once when the appliance holds the new one; else
        # they stay live until someone confirms that Veeam has it.
        keep_old = self.services.appliance is None and bool(old)
        if not keep_old:
            for key_id in self._old_key_ids(graph, object_id, old, new):
                graph.remove_password(object_id, key_id)
        with self._db.atomic():
            if keep_old:
                queries.mark_retiring(
                    self._db,
                    [s["id"] for s in old],
                    replaced_by=new["id"],
                    channel_id=flow["channel_id"],
                    thread_ts=flow.get("parent_ts"),
                )
            else:
                queries.set_secret_state(self._db, [s["id"] for s in old], "retired")
            queries.set_secret_state(self._db, [new["id"]], "active")
            queries.add_audit(
                self._db,
                actor=flow["requester"],
                action="renew.completed",
                target=account["name"],
                outcome="ok",
                detail={
                    "flow": flow["id"],
                    "new_key_id": new["key_id"],
                    "removed": [] if keep_old else [s["key_id"] for s in old],
                    "kept_until_veeam_has_the_new_one": (
                        [s["key_id"] for s in old] if keep_old else []
                    ),
                },
            )
            queries.transition_flow(self._db, flow["id"], ["renewing"], "done")
        self.flows.drop_session(flow["id"])
        end = datetime.fromisoformat(new["end_at"])
        payload = blocks.renewed_alert(
            name=account["name"],
            by=flow["requester"],
            end_ts=end.timestamp(),
            end_date=end.date().isoformat(),
            hint=new["hint"],
            old_removed=not keep_old,
        )
        if flow.get("parent_ts") and not json.loads(flow.get("data") or "{}").get("alert_digest"):
            self.notifier.update(flow["channel_id"], flow["parent_ts"], payload)
        if keep_old:
            self._offer_retirement(flow, account, new, old)
            return
        self.notifier.thread(
            flow["channel_id"],
            flow.get("parent_ts"),
            blocks.note(
                f":white_check_mark: Renewed. The new secret `{new['hint']}…` is in Veeam and in "
                "use; the old one is removed."
            ),
        )

    def _offer_retirement(
        self,
        flow: dict[str, Any],
        account: dict[str, Any],
        new: dict[str, Any],
        old: list[dict[str, Any]],
    ) -> None:
        """Tell the thread where the new secret is and how to put it into Veeam, with the
        button that removes the old secret once Veeam has the new one."""
        end = parse_time(new["end_at"])
        payload = blocks.renewed_keep_old(
            name=account["name"],
            new_hint=new["hint"],
            new_end_ts=end.timestamp(),
            new_end_date=end.date().isoformat(),
            old=[
                {
                    "id": s["id"],
                    "hint": s.get("hint") or "",
                    "end_at": s["end_at"],
                    "end_ts": parse_time(s["end_at"]).timestamp(),
                }
                for s in old
            ],
        )
        try:
            ts = self.notifier.post(flow["channel_id"], payload, thread_ts=flow.get("parent_ts"))
        except SlackApiError as exc:
            log.warning(
                "could not post the retirement offer for %s: %s",
                account["name"],
                exc.response.get("error"),
            )
            return
        queries.set_retire_message(self._db, [s["id"] for s in old], ts)

    # -- retiring the old secret once Veeam has the new one ---------------------------------

    def begin_retire(
        self,
        *,
        requester: str,
        channel_id: str | None,
        secret_ref: str | None = None,
        name: str | None = None,
    ) -> str:
        """Record a retire flow for one old secret (the button's value) or for every old
        secret of an account (`/veeam-sa retire NAME`). Raises `CommandError` /
        `NotAuthorised` with what to tell the user."""
        self.services.authz.require_admin(requester, "retire", name or secret_ref or None)
        with self.services.store.quick() as db, db.atomic():
            if name is not None:
                account = queries.get_account(db, name)
                if account is None or account["state"] != "active":
                    raise CommandError(f"There is no managed service account `{name}`.")
                old = queries.retiring_secrets(db, account["id"])
                if not old:
                    raise CommandError(
                        f"`{account['name']}` has no old secret waiting to be removed: its "
                        "renewals already removed them (or it was never renewed here)."
                    )
                thread_ts = None
            else:
                secret = (
                    queries.get_secret(db, int(secret_ref))
                    if secret_ref and secret_ref.isdigit()
                    else None
                )
                account = queries.get_account_by_id(db, secret["account_id"]) if secret else None
                if (
                    secret is None
                    or account is None
                    or account["state"] != "active"
                    or secret["state"] != "retiring"
                    or not secret.get("replaced_by")
                ):
                    raise CommandError(
                        "That secret is not an old secret of a managed account waiting to be "
                        "removed (it may be removed already); nothing was changed."
                    )
                old = [secret]
                thread_ts = secret.get("retire_thread_ts")
                channel_id = secret.get("retire_channel_id") or channel_id
            running = queries.open_flow_for_name(db, account["name"])
            if running is not None:
                raise CommandError(
                    f"<@{running['requester']}> is already working on `{account['name']}`; "
                    "wait for that to finish."
                )
            flow_id = uuid.uuid4().hex
            now = queries.utcnow_iso(self.services.clock())
            queries.insert_flow(
                db,
                {
                    "id": flow_id,
                    "kind": "retire",
                    "state": "starting",
                    "name": account["name"],
                    "account_id": account["id"],
                    "requester": requester,
                    "channel_id": channel_id
                    or account.get("alert_channel_id")
                    or account.get("channel_id"),
                    "parent_ts": thread_ts,
                    "data": json.dumps(
                        {
                            "own_parent": thread_ts is None,
                            "secret_ids": [s["id"] for s in old],
                            "steps": {"sign_in": "running"},
                        }
                    ),
                    "created_at": now,
                    "updated_at": now,
                },
            )
            queries.add_audit(
                db,
                actor=requester,
                action="retire.requested",
                target=account["name"],
                outcome="accepted",
                detail={"flow": flow_id, "key_ids": [s["key_id"] for s in old]},
            )
        return flow_id

    def _on_signed_in_to_retire(
        self, flow: dict[str, Any], identity: Identity, session: Session
    ) -> None:
        if not queries.transition_flow(self._db, flow["id"], ["signed_in"], "retiring"):
            return
        account = queries.get_account_by_id(self._db, flow["account_id"])
        assert account is not None
        try:
            if identity.tenant_id.lower() != str(account["tenant_id"]).lower():
                raise SignInError(
                    "other",
                    f"that account is in tenant {identity.tenant_id}; `{account['name']}` lives in tenant "
                    f"{account['tenant_id']}. Sign in with an account of that tenant",
                )
            self._retire(flow, account, session)
        except Exception as exc:  # noqa: BLE001 - the old secret stays, and the thread says why
            self.flows.forget_cancel(flow["id"])
            self._fail_retire(flow, account, as_flow_error(exc, flow["id"]))

    def _retire(self, flow: dict[str, Any], account: dict[str, Any], session: Session) -> None:
        wanted = set(json.loads(flow.get("data") or "{}").get("secret_ids") or [])
        # only what is still waiting: a secret retired meanwhile is left alone
        old = [s for s in queries.retiring_secrets(self._db, account["id"]) if s["id"] in wanted]
        current = queries.active_secrets(self._db, account["id"])
        graph = self._graph(session)
        object_id = account["app_object_id"]
        if not object_id:
            found = graph.find_by_app_id(account["app_id"])
            if found is None:
                raise SecretProofFailed(
                    f"no application with client id {account['app_id']} in this tenant"
                )
            object_id = str(found["id"])
            queries.update_account(self._db, account["id"], app_object_id=object_id)
        keep = current[-1] if current else {"key_id": ""}
        self.flows.stop_if_cancelled(flow["id"])
        for key_id in self._old_key_ids(graph, object_id, old, keep):
            if key_id not in {s["key_id"] for s in current}:
                graph.remove_password(object_id, key_id)
        with self._db.atomic():
            queries.set_secret_state(self._db, [s["id"] for s in old], "retired")
            queries.add_audit(
                self._db,
                actor=flow["requester"],
                action="retire.completed",
                target=account["name"],
                outcome="ok",
                detail={"flow": flow["id"], "removed": [s["key_id"] for s in old]},
            )
            queries.transition_flow(self._db, flow["id"], ["retiring"], "done")
        self.flows.drop_session(flow["id"])
        new_hint = current[-1].get("hint") if current else None
        done = blocks.retired_old(
            name=account["name"],
            by=flow["requester"],
            hints=[s.get("hint") or "" for s in old],
            new_hint=new_hint,
        )
        for channel, ts in {
            (s.get("retire_channel_id"), s.get("retire_ts"))
            for s in old
            if s.get("retire_channel_id") and s.get("retire_ts")
        }:
            self.notifier.update(str(channel), str(ts), done)
        self.notifier.thread(flow["channel_id"], flow.get("parent_ts"), done)
        self.flows.render_parent(
            queries.get_flow(self._db, flow["id"]) or flow,
            outcome=":white_check_mark: Old secret removed.",
        )

    def _fail_retire(
        self, flow: dict[str, Any], account: dict[str, Any], error: VeeamSAError
    ) -> None:
        reason = flow_failure(error)
        queries.transition_flow(
            self._db,
            flow["id"],
            ["retiring", "signed_in"],
            "cancelled" if isinstance(error, Cancelled) else "failed",
            error=error_label(error),
        )
        self.flows.drop_session(flow["id"])
        self.flows.audit(flow, "retire.failed", "failed", reason=reason[:300])
        self.notifier.thread(
            flow["channel_id"],
            flow.get("parent_ts"),
            blocks.note(
                f":x: The old secret of `{account['name']}` was not removed: {reason}\n"
                f"It is still live; try again with the button or `/veeam-sa retire {account['name']}`."
            ),
        )

    def _discard(
        self, graph: GraphClient, object_id: str, new: dict[str, Any], account: dict[str, Any]
    ) -> None:
        try:
            graph.remove_password(object_id, new["key_id"])
        except MicrosoftError:
            log.warning("could not remove the unused new secret of %s", account["name"])
        queries.set_secret_state(self._db, [new["id"]], "retired")

    @staticmethod
    def _old_key_ids(
        graph: GraphClient, object_id: str, old: list[dict[str, Any]], new: dict[str, Any]
    ) -> list[str]:
        """Graph key ids of the secrets being replaced. An imported account's old secret is
        known only by the expiry the appliance reported: match Graph's passwords on it."""
        keys = [s["key_id"] for s in old if not s["key_id"].startswith("appliance:")]
        placeholders = [
            parse_time(s["end_at"]) for s in old if s["key_id"].startswith("appliance:")
        ]
        if placeholders:
            for password in graph.passwords(object_id):
                key_id = str(password.get("keyId"))
                end = password.get("endDateTime")
                if key_id == new["key_id"] or not end:
                    continue
                if any(
                    abs((parse_time(str(end)) - p).total_seconds()) <= 86400 for p in placeholders
                ):
                    keys.append(key_id)
        return keys

    def _prove(self, account: dict[str, Any], secret: str) -> None:
        """The client-credentials grant with the new secret, retried while it propagates."""
        config = self.services.config
        url = f"{config.authority_host}/{account['tenant_id']}/oauth2/v2.0/token"
        form = {
            "grant_type": "client_credentials",
            "client_id": account["app_id"],
            "client_secret": secret,
            "scope": config.arm_scope,
        }
        deadline = time.monotonic() + self.proof_budget
        delay = 1.0
        last = "no answer"
        while True:
            try:
                response = self.services.http.post(url, data=form)
                if response.status_code == 200 and "access_token" in response.json():
                    return
                body = (
                    response.json()
                    if response.headers.get("content-type", "").startswith("application/json")
                    else {}
                )
                codes = body.get("error_codes") or []
                last = (
                    f"{body.get('error', response.status_code)} (AADSTS{codes[0]})"
                    if codes
                    else str(body.get("error", response.status_code))
                )
            except (httpx.HTTPError, ValueError) as exc:
                last = type(exc).__name__
            if time.monotonic() + delay > deadline:
                raise SecretProofFailed(f"the new secret could not obtain a token: {last}")
            self._sleep(delay)
            delay = min(delay * 2, 10.0)

    def _fail(self, flow: dict[str, Any], account: dict[str, Any], error: VeeamSAError) -> None:
        if isinstance(error, ApplianceError):
            reason = appliance_text(error)
        else:
            reason = flow_failure(error)
        cancelled = isinstance(error, Cancelled)
        queries.transition_flow(
            self._db,
            flow["id"],
            ["renewing", "signed_in"],
            "cancelled" if cancelled else "failed",
            error=None if cancelled else error_label(error),
        )
        self.flows.drop_session(flow["id"])
        self.flows.audit(
            flow,
            "renew.cancelled" if cancelled else "renew.failed",
            "cancelled" if cancelled else "failed",
            reason=reason[:300],
        )
        head = (
            f":no_entry_sign: Renewal of `{account['name']}` cancelled: {reason}"
            if cancelled
            else f":x: Renewal of `{account['name']}` failed: {reason}"
        )
        self.notifier.thread(
            flow["channel_id"],
            flow.get("parent_ts"),
            blocks.note(f"{head}\nThe old secret is still in place."),
        )
