"""Read models of the managed accounts, for `list`, `show` and the renew checks."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from bot.core.clock import days_left, parse_time
from storage import queries
from storage.db import Store


def _status(end: datetime | None, now: datetime, warn_days: tuple[int, ...]) -> str:
    if end is None:
        return "none"
    if end <= now:
        return "expired"
    if end - now <= timedelta(days=max(warn_days)):
        return "expiring"
    return "valid"


def _view(
    account: dict[str, Any],
    secret: dict[str, Any] | None,
    now: datetime,
    warn: tuple[int, ...],
    retiring: list[dict[str, Any]] | None = None,
    drift_kinds: list[str] | None = None,
) -> dict[str, Any]:
    view = dict(account)
    view["drift_kinds"] = drift_kinds or []
    view["subscriptions"] = json.loads(account.get("subscriptions") or "[]")
    view["roles"] = json.loads(account.get("roles") or "{}")
    view["management_group"] = json.loads(account.get("management_group") or "null")
    view["custom_role"] = json.loads(account.get("custom_role") or "null")
    view["permissions_state"] = json.loads(account.get("permissions_state") or "null")
    view["permissions_detail"] = json.loads(account.get("permissions_detail") or "null")
    end = parse_time(secret["end_at"]) if secret else None
    view["hint"] = secret.get("hint") if secret else None
    view["end_at"] = secret["end_at"] if secret else None
    view["end_ts"] = end.timestamp() if end else None
    view["days_left"] = days_left(end, now) if end else None
    view["status"] = _status(end, now, warn) if account["state"] == "active" else account["state"]
    view["appliance_flag"] = _appliance_flag(account, end)
    # Old secrets still live after a renewal without an appliance: Veeam may still use them.
    view["retiring"] = [
        {
            "id": old["id"],
            "hint": old.get("hint") or "",
            "end_at": old["end_at"],
            "end_ts": parse_time(old["end_at"]).timestamp(),
            "days_left": days_left(parse_time(old["end_at"]), now),
        }
        for old in retiring or []
    ]
    return view


def _appliance_flag(account: dict[str, Any], end: datetime | None) -> str | None:
    """Where the appliance's view disagrees with the bot's records, say how; else None."""
    state = account.get("appliance_state")
    if account.get("handoff") == "failed":
        return "hand-off to Veeam failed: `/veeam-sa sync` retries it"
    if state and state != "Valid":
        return f"Veeam reports {state}"
    expiry = account.get("appliance_expiry")
    if expiry and end is not None and abs((parse_time(expiry) - end).total_seconds()) > 86400:
        return f"Veeam expects the secret to expire {expiry[:10]}, the bot {end.date().isoformat()}"
    return None


def account_views(store: Store, now: datetime, warn_days: tuple[int, ...]) -> list[dict[str, Any]]:
    """Every managed account with its newest live secret, soonest expiry first."""
    db = store.db
    latest: dict[int, dict[str, Any]] = {}
    for secret in queries.live_secrets(db):
        latest[secret["account_id"]] = secret  # ordered by end_at: the last one wins
    retiring: dict[int, list[dict[str, Any]]] = {}
    for old in queries.retiring_secrets(db):
        retiring.setdefault(old["account_id"], []).append(old)
    drifts = queries.open_drift_kinds(db)
    views = [
        _view(a, latest.get(a["id"]), now, warn_days, retiring.get(a["id"]), drifts.get(a["id"]))
        for a in queries.list_accounts(db)
    ]
    far = float("inf")
    return sorted(views, key=lambda v: (v["end_ts"] if v["end_ts"] is not None else far, v["name"]))


def account_view(
    store: Store, name: str, now: datetime, warn_days: tuple[int, ...]
) -> dict[str, Any] | None:
    account = queries.get_account(store.db, name)
    if account is None:
        return None
    secrets = queries.active_secrets(store.db, account["id"])
    return _view(
        account,
        secrets[-1] if secrets else None,
        now,
        warn_days,
        queries.retiring_secrets(store.db, account["id"]),
        queries.open_drift_kinds(store.db, account["id"]).get(account["id"]),
    )


def account_history(store: Store, name: str) -> list[dict[str, Any]]:
    """The audit rows about an account, oldest first."""
    return queries.audit_rows(store.db, target=name)


def health_summary(store: Store) -> dict[str, Any]:
    """The health check's state for a dashboard (the App Home): accounts by health state,
    the open drifts by account name and kind, and when the last check run ended."""
    db = store.db
    names = {a["id"]: a["name"] for a in queries.list_accounts(db)}
    return {
        "counts": queries.health_counts(db),
        "drifts": {
            names[account_id]: kinds
            for account_id, kinds in queries.open_drift_kinds(db).items()
            if account_id in names
        },
        "last_check_at": queries.get_meta(db, "last_health_check_at"),
    }
