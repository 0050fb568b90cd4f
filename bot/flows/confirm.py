"""Veeam's own word on a new account: the last step of a creation asks the appliance to check
the account's Azure permissions for its subscriptions and purposes (`checkPermissions`),
and shows the answer in the creation's thread — every permission present, or per
subscription the missing permissions, data actions and resource providers and what to do.

Rights granted a moment ago can take up to 15 minutes to show at the appliance, so while
something is missing the bot asks again on a backoff for `permission_check_window_s`; the
message keeps a Recheck button that asks once more at any time (also after that window, or
after a restart, which forgets the scheduled re-asks). Every answer is recorded on the
account (`permissions_state` is the appliance's `azurePermissionsState`), which `show`
displays.

Runs only with an appliance, after the account was handed to it; a failure here never
undoes the creation: the account works or it does not, and the thread says which.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

from bot.core.errors import ApplianceError, CommandError
from bot.flows.context import Context
from bot.flows.record import Record
from bot.slack import blocks
from bot.slack.messages import appliance_text
from storage import queries

log = logging.getLogger(__name__)

STEP = "confirm"


class Confirmations:
    def __init__(
        self, ctx: Context, record: Record, monotonic: Callable[[], float] = time.monotonic
    ) -> None:
        self.ctx = ctx
        self.record = record
        self._monotonic = monotonic

    @property
    def _db(self) -> Any:
        return self.ctx.store.db

    # -- the backoff --------------------------------------------------------------------------

    def delays(self) -> list[float]:
        """The pauses between automatic asks: doubling from 1/60 of the window, each at most a
        quarter of it, until the window is used up (15 min: 15 s, 30 s, 1, 2, 3¾, 3¾, … min)."""
        window = self.ctx.config.permission_check_window_s
        out: list[float] = []
        delay, total = window / 60, 0.0
        while window > 0 and total + delay <= window:
            out.append(delay)
            total += delay
            delay = min(delay * 2, window / 4)
        return out

    # -- asking ------------------------------------------------------------------------------

    def begin(self, account_id: int, flow_id: str) -> None:
        """The creation's last step: ask now, and again on the backoff while missing."""
        self.ask(account_id, flow_id=flow_id, attempt=0)

    def recheck(self, account_ref: str, user: str) -> None:
        """The Recheck button: an admin asks the appliance once more (on the worker pool)."""
        account = (
            queries.get_account_by_id(self._db, int(account_ref))
            if account_ref.isascii() and account_ref.isdigit()
            else None
        )
        if account is None or account["state"] != "active" or not account.get("appliance_id"):
            raise CommandError(
                "That account is not managed here with a Veeam appliance (any more)."
            )
        self.ctx.authz.require_admin(user, "recheck permissions of", account["name"])
        if self.ctx.appliance is None:
            raise CommandError(
                "No Veeam appliance is configured (VEEAM_URL), so none can be asked."
            )
        flow = queries.create_flow_of_account(self._db, account["id"])
        self.ctx.workers.submit(self.ask, account["id"], flow["id"] if flow else None, None, user)

    def ask(
        self,
        account_id: int,
        flow_id: str | None = None,
        attempt: int | None = None,
        by: str | None = None,
    ) -> str | None:
        """Ask the appliance once; show and record the answer. `attempt` counts the automatic
        asks (None: a Recheck, which schedules nothing). Returns the state recorded."""
        account = queries.get_account_by_id(self._db, account_id)
        appliance = self.ctx.appliance
        if account is None or appliance is None or not account.get("appliance_id"):
            return None
        flow = queries.get_flow(self._db, flow_id) if flow_id else None
        subscriptions = [str(s) for s in json.loads(account.get("subscriptions") or "[]")]
        purposes = list(self.ctx.config.veeam_purposes)
        delays = self.delays()
        try:
            answer = appliance.check_permissions(
                str(account["appliance_id"]), subscriptions=subscriptions, purposes=purposes
            )
            held = appliance.get_account(str(account["appliance_id"]))
        except ApplianceError as exc:
            log.warning("permission check of %s failed: %s", account["name"], exc.kind)
            self._show(
                account,
                flow,
                blocks.permissions_unknown(
                    name=account["name"], account_id=account["id"], reason=appliance_text(exc)
                ),
                "failed",
            )
            return None
        findings = _findings(answer, subscriptions)
        missing = [f for f in findings if f["missing"]]
        state = (held or {}).get("azurePermissionsState") or (
            ["MissingPermissions"] if missing else ["AllPermissionsAvailable"]
        )
        retrying = bool(missing) and attempt is not None and attempt < len(delays)
        now = self.ctx.clock()
        with self._db.atomic():
            queries.update_account(
                self._db,
                account_id,
                permissions_state=json.dumps([str(s) for s in state]),
                permissions_detail=json.dumps(findings),
                permissions_checked_at=queries.utcnow_iso(now),
            )
            queries.add_audit(
                self._db,
                actor=by or "veeam-sa",
                action="appliance.check_permissions",
                target=account["name"],
                outcome="missing" if missing else "ok",
                detail={
                    "state": [str(s) for s in state],
                    "missing": {
                        f["id"]: len(f["permissions"])
                        + len(f["data_actions"])
                        + len(f["providers"])
                        for f in missing
                    },
                },
            )
        custom = json.loads(account.get("custom_role") or "null")
        payload = blocks.permissions_message(
            name=account["name"],
            account_id=account["id"],
            findings=findings,
            custom_role=custom.get("name") if isinstance(custom, dict) else None,
            retrying_for_s=sum(delays[attempt:]) if retrying and attempt is not None else None,
            by=by,
        )
        self._show(
            account, flow, payload, "running" if retrying else ("failed" if missing else "done")
        )
        if retrying and attempt is not None:
            self.ctx.workers.call_later(delays[attempt], self.ask, account_id, flow_id, attempt + 1)
        return str(state[0]) if state else None

    def _show(
        self,
        account: dict[str, Any],
        flow: dict[str, Any] | None,
        payload: dict[str, Any],
        step: str,
    ) -> None:
        """Post the answer in the creation's thread (editing the previous answer), and tick the
        checklist's last step."""
        channel = (flow or {}).get("channel_id") or account.get("channel_id")
        thread = (flow or {}).get("parent_ts")
        if not channel:
            return
        ts = account.get("permissions_ts")
        if ts:
            self.ctx.notifier.update(channel, ts, payload)
        else:
            ts = self.ctx.notifier.post(channel, payload, thread_ts=thread)
            queries.update_account(self._db, account["id"], permissions_ts=ts)
        if flow is None:
            return
        data = self.record.data(flow)
        data.setdefault("steps", {})[STEP] = step
        self.record.save_data(flow["id"], data)
        flow = {**flow, "data": json.dumps(data)}
        final = data.get("final") or {}
        self.record.render_parent(flow, outcome=final.get("outcome"), summary=final.get("summary"))


def _findings(answer: dict[str, Any], asked: list[str]) -> list[dict[str, Any]]:
    """Per subscription: what the appliance says is missing (empty lists: all present)."""
    out = []
    seen = set()
    for sub in answer.get("subscriptions") or []:
        if not isinstance(sub, dict):
            continue
        sid = str(sub.get("id") or "").lower()
        seen.add(sid)
        permissions = [str(p) for p in sub.get("missingPermissions") or []]
        data_actions = [str(p) for p in sub.get("missingDataActions") or []]
        providers = [str(p) for p in sub.get("missingResourceProviders") or []]
        unknown = (
            sub.get("permissionsState") == "Unknown" or sub.get("availability") == "NotAvailable"
        )
        out.append(
            {
                "id": sid,
                "name": sub.get("name"),
                "permissions": permissions,
                "data_actions": data_actions,
                "providers": providers,
                "unavailable": bool(unknown),
                "missing": bool(permissions or data_actions or providers or unknown),
            }
        )
    for sid in asked:
        if sid.lower() not in seen:
            out.append(
                {
                    "id": sid.lower(),
                    "name": None,
                    "permissions": [],
                    "data_actions": [],
                    "providers": [],
                    "unavailable": True,
                    "missing": True,
                }
            )
    return out
