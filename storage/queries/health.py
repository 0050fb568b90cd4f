"""The health check's records: each account's health, and the drifts it found."""

from __future__ import annotations

from typing import Any

from sqlite_utils import Database

from storage.queries.common import _one, _pk, _rows

#: Health states an account can be in (None until its first check).
HEALTH_STATES = ("healthy", "drift", "unknown", "unchecked")


def accounts_to_check(db: Database, name: str | None = None) -> list[dict[str, Any]]:
    """Active accounts (or the one named), with their newest current secret's id, in a
    stable order (the check spreads them over its interval in this order)."""
    sql = (
        "SELECT a.*, (SELECT s.id FROM secrets s WHERE s.account_id = a.id "
        "AND s.state = 'active' ORDER BY s.end_at DESC LIMIT 1) AS secret_id "
        "FROM accounts a WHERE a.state = 'active'"
    )
    params: list[Any] = []
    if name is not None:
        sql += " AND a.name = ? COLLATE NOCASE"
        params.append(name)
    return _rows(db, sql + " ORDER BY a.id", params)


def set_health(
    db: Database, account_id: int, state: str, checked_at: str, ok: bool
) -> None:
    changes: dict[str, Any] = {"health_state": state, "health_checked_at": checked_at}
    if ok:
        changes["health_ok_at"] = checked_at
    db.table("accounts").update(account_id, changes)


def health_counts(db: Database) -> dict[str, int]:
    """Active accounts by health state ("unchecked" before their first check)."""
    counts = dict.fromkeys(HEALTH_STATES, 0)
    for state, count in db.execute(
        "SELECT COALESCE(health_state, 'unchecked'), count(*) FROM accounts "
        "WHERE state = 'active' GROUP BY 1"
    ).fetchall():
        counts[str(state)] = counts.get(str(state), 0) + int(count)
    return counts


def open_drifts(db: Database, account_id: int) -> list[dict[str, Any]]:
    return list(
        db.table("drifts").rows_where(
            "account_id = ? AND state = 'open'", [account_id], order_by="id"
        )
    )


def get_drift(db: Database, drift_id: int) -> dict[str, Any] | None:
    return _one(db, "SELECT * FROM drifts WHERE id = ? LIMIT 1", [drift_id])


def open_drift(
    db: Database,
    *,
    account_id: int,
    kind: str,
    detail: str,
    missing: str,
    since: str,
    last_ok_at: str | None,
    channel_id: str | None,
) -> int | None:
    """Record a new drift; None when one of that kind is already open for the account."""
    cursor = db.execute(
        "INSERT OR IGNORE INTO drifts (account_id, kind, detail, missing, since, last_ok_at, "
        "seen_at, channel_id, state) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'open')",
        [account_id, kind, detail, missing, since, last_ok_at, since, channel_id],
    )
    if cursor.rowcount != 1:
        return None
    return _pk(cursor.lastrowid)


def seen_drift(db: Database, drift_id: int, seen_at: str, detail: str, missing: str) -> None:
    db.table("drifts").update(drift_id, {"seen_at": seen_at, "detail": detail, "missing": missing})


def set_drift_ts(db: Database, drift_id: int, channel_id: str | None, ts: str | None) -> None:
    db.table("drifts").update(drift_id, {"channel_id": channel_id, "ts": ts})


def close_drift(db: Database, drift_id: int, state: str, at: str, by: str | None) -> bool:
    """Close an open drift (`cleared` or `repaired`); False when it was closed already."""
    cursor = db.execute(
        "UPDATE drifts SET state = ?, closed_at = ?, closed_by = ? WHERE id = ? AND state = 'open'",
        [state, at, by, drift_id],
    )
    return cursor.rowcount == 1


def open_drift_kinds(db: Database, account_id: int | None = None) -> dict[int, list[str]]:
    """The kinds of drift open per account (of one account, or of all)."""
    sql = "SELECT account_id, kind FROM drifts WHERE state = 'open'"
    params: list[Any] = []
    if account_id is not None:
        sql += " AND account_id = ?"
        params.append(account_id)
    kinds: dict[int, list[str]] = {}
    for row in _rows(db, sql + " ORDER BY id", params):
        kinds.setdefault(int(row["account_id"]), []).append(str(row["kind"]))
    return kinds
