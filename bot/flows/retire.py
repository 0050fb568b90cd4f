"""Retiring an old secret once Veeam has the new one (after a renewal without an appliance).

    starting ─▶ awaiting_sign_in ─▶ signed_in ─▶ retiring ─▶ done (old password removed)
                                                     └──────▶ failed (it stays live)

The clicker of "Veeam has the new secret — remove the old one" (or `/veeam-sa retire NAME`)
signs in with a device code like a renewal, and only a secret that is `retiring` — a
previous secret of a live account, kept for Veeam — can be removed this way.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from bot.clients.signin import Identity, Session
from bot.core.errors import (
    Cancelled,
    CommandError,
    VeeamSAError,
    as_flow_error,
    error_label,
)
from bot.flows.context import Context
from bot.flows.record import Record
from bot.flows.secrets import (
    check_tenant,
    object_id_of,
    old_key_ids,
    stored_certificate,
)
from bot.flows.signin import SignInEngine
from bot.slack import blocks
from bot.slack.messages import flow_failure
from storage import queries

log = logging.getLogger(__name__)


class Retirements:
    def __init__(self, ctx: Context, record: Record, signin: SignInEngine) -> None:
        self.ctx = ctx
        self.record = record
        self.signin = signin
        self.notifier = ctx.notifier

    @property
    def _db(self) -> Any:
        return self.ctx.store.db

    def begin(
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
        with self.ctx.store.quick() as db, db.atomic():
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
                    if secret_ref and secret_ref.isascii() and secret_ref.isdigit()
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
            flow_id = self.record.new_flow(
                db,
                kind="retire",
                name=account["name"],
                requester=requester,
                channel_id=channel_id
                or account.get("alert_channel_id")
                or account.get("channel_id"),
                data={
                    "own_parent": thread_ts is None,
                    "secret_ids": [s["id"] for s in old],
                    "steps": {"sign_in": "running"},
                },
                account_id=account["id"],
                parent_ts=thread_ts,
                detail={"key_ids": [s["key_id"] for s in old]},
            )
        return flow_id

    def on_signed_in(self, flow_id: str, identity: Identity, session: Session) -> None:
        flow = queries.get_flow(self._db, flow_id)
        if flow is None:
            return
        if not queries.transition_flow(self._db, flow["id"], ["signed_in"], "retiring"):
            return
        account = queries.get_account_by_id(self._db, flow["account_id"])
        assert account is not None
        try:
            check_tenant(identity, account)
            self._retire(flow, account, session)
        except Exception as exc:  # noqa: BLE001 - the old secret stays, and the thread says why
            self.signin.forget_cancel(flow["id"])
            self.fail(flow, account, as_flow_error(exc, flow["id"]))

    def _retire(self, flow: dict[str, Any], account: dict[str, Any], session: Session) -> None:
        wanted = set(json.loads(flow.get("data") or "{}").get("secret_ids") or [])
        # only what is still waiting: a secret retired meanwhile is left alone
        old = [s for s in queries.retiring_secrets(self._db, account["id"]) if s["id"] in wanted]
        current = queries.active_secrets(self._db, account["id"])
        graph = self.ctx.graph(session)
        object_id = object_id_of(self._db, graph, account)
        keep = current[-1] if current else {"key_id": ""}
        self.signin.stop_if_cancelled(flow["id"])
        certificates = [s for s in old if s.get("kind") == "certificate"]
        passwords = [s for s in old if s.get("kind") != "certificate"]
        for key_id in old_key_ids(graph, object_id, passwords, keep):
            if key_id not in {s["key_id"] for s in current}:
                graph.remove_password(object_id, key_id)
        if certificates:
            # removeKey needs a proof signed by a certificate that stays: the current one
            signer = stored_certificate(self.ctx, current[-1])
            for s in certificates:
                if s["key_id"] not in {c["key_id"] for c in current}:
                    graph.remove_key(
                        object_id, s["key_id"], signer.proof_token(object_id, self.ctx.clock())
                    )
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
        self.signin.drop_session(flow["id"])
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
        self.record.render_parent(
            queries.get_flow(self._db, flow["id"]) or flow,
            outcome=":white_check_mark: Old secret removed.",
        )

    def fail(
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
        self.signin.drop_session(flow["id"])
        self.record.audit(flow, "retire.failed", "failed", reason=reason[:300])
        self.notifier.thread(
            flow["channel_id"],
            flow.get("parent_ts"),
            blocks.note(
                f":x: The old secret of `{account['name']}` was not removed: {reason}\n"
                f"It is still live; try again with the button or `/veeam-sa retire {account['name']}`.",
                account=flow["name"],
            ),
        )

    def end(self, flow: dict[str, Any], error: VeeamSAError) -> bool:
        """End a retirement that cannot go on; False when its account is gone."""
        account = queries.get_account_by_id(self._db, flow["account_id"])
        if account is None:
            return False
        self.fail(flow, account, error)
        return True
