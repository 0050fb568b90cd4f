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
from collections.abc import Callable
from datetime import datetime
from typing import Any

from slack_sdk.errors import SlackApiError

from bot.clients.graph import GraphClient
from bot.clients.signin import Identity, Session
from bot.core.certs import Certificate
from bot.core.clock import parse_time
from bot.core.errors import (
    CommandError,
    MicrosoftError,
    VeeamSAError,
    as_flow_error,
)
from bot.flows import expiry
from bot.flows.appliance import hand_off_stored
from bot.flows.context import Context
from bot.flows.record import Record
from bot.flows.secrets import (
    SecretProofFailed,
    add_certificate,
    add_secret,
    check_tenant,
    crash_point,
    object_id_of,
    old_key_ids,
    prove_certificate,
    stored_certificate,
)
from bot.flows.signin import SignInEngine
from bot.slack import blocks
from bot.slack.messages import secret_policy_note
from storage import queries

log = logging.getLogger(__name__)

#: How long to keep trying a new secret before calling it broken.
PROOF_BUDGET_S = 60.0


def _refuse_if_already_renewed(db: Any, account: dict[str, Any], message_ts: str) -> None:
    """A Renew clicked on a warning whose secrets were all replaced since: say so (and by
    whom) instead of starting a sign-in. A click elsewhere (no warning of ours) goes on."""
    listed = queries.listed_secrets(db, message_ts, account["id"])
    if not listed or any(s["state"] == "active" for s in listed):
        return
    last = queries.last_renewal(db, account["id"])
    who = next((s["renewed_by"] for s in listed if s.get("renewed_by")), None) or (
        last["requester"] if last else None
    )
    current = queries.active_secrets(db, account["id"])
    ends = (
        f"; its current secret expires {max(s['end_at'] for s in current)[:10]}"
        if current
        else ""
    )
    raise CommandError(
        f"`{account['name']}` was already renewed"
        + (f" by <@{who}>" if who else "")
        + f"{ends}. Nothing to do: no sign-in was started."
    )


class Renewals:
    def __init__(
        self,
        ctx: Context,
        record: Record,
        signin: SignInEngine,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.ctx = ctx
        self.record = record
        self.signin = signin
        self.notifier = ctx.notifier
        self._sleep = sleep
        self.proof_budget = PROOF_BUDGET_S

    @property
    def _db(self) -> Any:
        return self.ctx.store.db

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
        with self.ctx.store.quick() as db, db.atomic():
            if by_id:
                account = (
                    queries.get_account_by_id(db, int(account_ref))
                    if account_ref.isascii() and account_ref.isdigit()
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
            if thread_ts is not None:
                _refuse_if_already_renewed(db, account, thread_ts)
            own_parent = thread_ts is None
            digest = thread_ts is not None and queries.is_digest(db, thread_ts)
            flow_id = self.record.new_flow(
                db,
                kind="renew",
                name=account["name"],
                requester=requester,
                channel_id=channel_id
                or account.get("alert_channel_id")
                or account.get("channel_id"),
                data={
                    "own_parent": own_parent,
                    "alert_digest": digest,
                    "steps": {"sign_in": "running"},
                },
                account_id=account["id"],
                parent_ts=thread_ts,
            )
        return flow_id

    def on_signed_in(self, flow_id: str, identity: Identity, session: Session) -> None:
        flow = queries.get_flow(self._db, flow_id)
        if flow is None or not queries.transition_flow(
            self._db, flow_id, ["signed_in"], "renewing"
        ):
            return
        account = queries.get_account_by_id(self._db, flow["account_id"])
        assert account is not None
        try:
            check_tenant(identity, account)
            self._renew(flow, account, session)
        except Exception as exc:  # noqa: BLE001 - every failure keeps the old secret and says so
            self.abandon(flow, account, as_flow_error(exc, flow_id))

    def abandon(self, flow: dict[str, Any], account: dict[str, Any], error: VeeamSAError) -> None:
        """End a renewal that cannot go on: a new secret it added but did not finish is
        removed again (when the sign-in session still allows), the old one stays."""
        pending = [
            s
            for s in queries.pending_secrets(self._db, account["id"])
        ]
        session = self.signin.session(flow["id"])
        if pending and session is not None and account.get("app_object_id"):
            graph = self.ctx.graph(session)
            for new in pending:
                self._discard(graph, str(account["app_object_id"]), new, account)
        self.signin.forget_cancel(flow["id"])
        self._fail(flow, account, error)

    def end(self, flow: dict[str, Any], error: VeeamSAError) -> bool:
        """End a renewal that cannot go on; False when its account is gone."""
        account = queries.get_account_by_id(self._db, flow["account_id"])
        if account is None:
            return False
        self.abandon(flow, account, error)
        return True

    def _renew(self, flow: dict[str, Any], account: dict[str, Any], session: Session) -> None:
        graph = self.ctx.graph(session)
        object_id = object_id_of(self._db, graph, account)
        known = queries.secret_key_ids(self._db, account["id"])
        old = queries.active_secrets(self._db, account["id"])
        pending = queries.pending_secrets(self._db, account["id"])

        self.signin.stop_if_cancelled(flow["id"])
        certificate = any(s.get("kind") == "certificate" for s in old) or (
            account.get("credential") == "certificate"
        )
        signer = self._signer(old) if certificate else None
        if pending:  # resumed after a crash: the new secret exists and is stored
            new = pending[-1]
        elif signer is not None:
            # 0. a certificate added before a crash but never stored is unknowable
            for key in graph.key_credentials(object_id):
                key_id = str(key.get("keyId"))
                if key_id not in known:
                    graph.remove_key(
                        object_id, key_id, signer.proof_token(object_id, self.ctx.clock())
                    )
            # 1. add the new certificate beside the current one (addKey proves possession
            # of the current one); store it encrypted before anything else
            new = add_certificate(
                self.ctx,
                graph,
                object_id,
                flow,
                account["id"],
                "pending",
                "renew_after_add_key",
                current=signer,
            )
        else:
            # 0. a password Graph issued before a crash but the bot never stored is unknowable
            # (an imported account's passwords are all unknown to the bot: leave them be)
            if not account.get("imported"):
                for key_id in graph.password_key_ids(object_id):
                    if key_id not in known:
                        graph.remove_password(object_id, key_id)
            # 1. add the new secret; store it encrypted before anything else
            new = add_secret(
                self.ctx,
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
                    + secret_policy_note(
                        new["policy_limit"],
                        self.ctx.config.secret_days,
                        "certificate" if new.get("kind") == "certificate" else "client secret",
                    ),
                    account=flow["name"],
                ),
            )

        # 2. hand-off: the encrypted store already holds it (the appliance comes here too).
        # 3. prove it can obtain a token before the old one goes
        try:
            self.signin.stop_if_cancelled(flow["id"])
            if new.get("kind") == "certificate":
                prove_certificate(self.ctx, account, new, self.proof_budget, self._sleep)
            else:
                self._prove(account, self.ctx.cipher.decrypt(new["ciphertext"]))
            self.signin.stop_if_cancelled(flow["id"])
        except Exception:
            self._discard(graph, object_id, new, account, signer)
            raise

        # 3b. hand the new secret to the appliance before the old one goes
        appliance_id: str | None = None
        if self.ctx.appliance is not None:
            try:
                appliance_id = hand_off_stored(self.ctx, account, new, flow["requester"])
            except Exception:
                self._discard(graph, object_id, new, account, signer)
                raise

        # 4. retire the old secret(s): at once when the appliance holds the new one; else
        # they stay live until someone confirms that Veeam has it.
        keep_old = self.ctx.appliance is None and bool(old)
        if not keep_old and new.get("kind") == "certificate":
            # the proof is signed by the new certificate, which stays
            newest = stored_certificate(self.ctx, new)
            for s in old:
                if s.get("kind") == "certificate":
                    graph.remove_key(
                        object_id, s["key_id"], newest.proof_token(object_id, self.ctx.clock())
                    )
        elif not keep_old:
            for key_id in old_key_ids(graph, object_id, old, new):
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
        self.signin.drop_session(flow["id"])
        end = datetime.fromisoformat(new["end_at"])
        payload = blocks.renewed_alert(
            name=account["name"],
            by=flow["requester"],
            end_ts=end.timestamp(),
            end_date=end.date().isoformat(),
            hint=new["hint"],
            old_removed=not keep_old,
            certificate=new.get("kind") == "certificate",
        )
        if flow.get("parent_ts") and not json.loads(flow.get("data") or "{}").get("alert_digest"):
            self.notifier.update(flow["channel_id"], flow["parent_ts"], payload)
        # every other warning that offered Renew for the old secret says it is done
        expiry.mark_renewed(
            self.ctx,
            [s["id"] for s in old],
            flow["requester"],
            single=payload,
            skip=(flow["channel_id"], flow.get("parent_ts")),
        )
        if keep_old:
            self._offer_retirement(flow, account, new, old)
            return
        self.notifier.thread(
            flow["channel_id"],
            flow.get("parent_ts"),
            blocks.note(
                blocks.renewal_done(
                    name=account["name"],
                    new_hint=new["hint"],
                    new_key_id=new.get("key_id"),
                    end_ts=end.timestamp(),
                    end_date=end.date().isoformat(),
                    old_hints=[s.get("hint") or "?" for s in old],
                    appliance_id=appliance_id,
                    noun="certificate" if new.get("kind") == "certificate" else "secret",
                ),
                account=flow["name"],
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
            certificate=new.get("kind") == "certificate",
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

    def _signer(self, old: list[dict[str, Any]]) -> Certificate:
        """The current certificate: it signs the proofs `addKey` and `removeKey` need."""
        held = [s for s in old if s.get("kind") == "certificate" and s.get("ciphertext")]
        if not held:
            raise SecretProofFailed(
                "the bot holds no current certificate of this account to prove possession "
                "with; add a certificate in the Entra admin center, or create the account again"
            )
        return stored_certificate(self.ctx, held[-1])

    def _discard(
        self,
        graph: GraphClient,
        object_id: str,
        new: dict[str, Any],
        account: dict[str, Any],
        signer: Certificate | None = None,
    ) -> None:
        try:
            if new.get("kind") == "certificate":
                if signer is None:
                    signer = stored_certificate(self.ctx, new)
                graph.remove_key(
                    object_id, new["key_id"], signer.proof_token(object_id, self.ctx.clock())
                )
            else:
                graph.remove_password(object_id, new["key_id"])
        except MicrosoftError:
            log.warning("could not remove the unused new secret of %s", account["name"])
        queries.set_secret_state(self._db, [new["id"]], "retired")

    def _prove(self, account: dict[str, Any], secret: str) -> None:
        """The client-credentials grant with the new secret, retried while it propagates."""
        failure = self.ctx.device.prove_secret(
            account["tenant_id"], account["app_id"], secret, self.proof_budget, self._sleep
        )
        if failure is not None:
            raise SecretProofFailed(f"the new secret could not obtain a token: {failure}")

    def _fail(self, flow: dict[str, Any], account: dict[str, Any], error: VeeamSAError) -> None:
        reason, cancelled = self.signin.close_failed(flow, ["renewing", "signed_in"], "renew", error)
        head = (
            f":no_entry_sign: Renewal of `{account['name']}` cancelled: {reason}"
            if cancelled
            else f":x: Renewal of `{account['name']}` failed: {reason}"
        )
        self.notifier.thread(
            flow["channel_id"],
            flow.get("parent_ts"),
            blocks.note(f"{head}\nThe old secret is still in place.", account=flow["name"]),
        )
