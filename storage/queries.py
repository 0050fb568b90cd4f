"""The queries: small functions over a sqlite-utils `Database`.

Rows come back as plain dicts. JSON columns are decoded by the caller that needs them;
secrets stay as ciphertext here (the service layer holds the `Cipher`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from sqlite_utils import Database

audit_log = logging.getLogger("veeam_sa.audit")

TERMINAL_FLOW_STATES = frozenset({"done", "failed", "cancelled", "expired", "rolled_back"})


def _pk(value: Any) -> int:
    assert value is not None, "insert returned no primary key"
    return int(value)


def utcnow_iso(now: datetime | None = None) -> str:
    return (now or datetime.now(UTC)).astimezone(UTC).isoformat(timespec="seconds")


# -- audit -------------------------------------------------------------------------------


def add_audit(
    db: Database,
    *,
    actor: str,
    action: str,
    outcome: str,
    target: str | None = None,
    detail: dict[str, Any] | None = None,
    correlation_id: str | None = None,
    now: datetime | None = None,
) -> int:
    details = detail or {}
    # Every audited step is also a log event, carrying the flow, user, account and
    # correlation id as structured fields (JSON logs show them as keys).
    audit_log.info(
        "%s %s: %s",
        action,
        target or "-",
        outcome,
        extra={
            "flow": details.get("flow"),
            "user": actor,
            "account": target,
            "correlation_id": correlation_id or details.get("correlation_id"),
            "step": action,
        },
    )
    # Plain SQL: this runs on Slack's ack path, where sqlite-utils' table checks cost time.
    cursor = db.execute(
        "INSERT INTO audit (at, actor, action, target, outcome, detail, correlation_id) VALUES (?, ?, ?, ?, ?, ?, ?)",
        [
            utcnow_iso(now),
            actor,
            action,
            target,
            outcome,
            json.dumps(details, sort_keys=True),
            correlation_id,
        ],
    )
    return _pk(cursor.lastrowid)


def audit_rows(
    db: Database, *, target: str | None = None, since: str | None = None, limit: int | None = None
) -> list[dict[str, Any]]:
    where: list[str] = []
    params: list[Any] = []
    if target is not None:
        where.append("target = ?")
        params.append(target)
    if since is not None:
        where.append("at >= ?")
        params.append(since)
    return list(
        db.table("audit").rows_where(
            " AND ".join(where) or None, params, order_by="id", limit=limit
        )
    )


# -- flows -------------------------------------------------------------------------------


def insert_flow(db: Database, row: dict[str, Any]) -> None:
    columns = list(row)
    unknown = set(columns) - _FLOW_COLUMNS - {"id", "kind", "created_at"}
    if unknown:
        raise ValueError(f"not flow columns: {sorted(unknown)}")
    db.execute(
        f"INSERT INTO flows ({', '.join(columns)}) VALUES ({', '.join('?' for _ in columns)})",  # noqa: S608 - checked
        [row[c] for c in columns],
    )


def get_flow(db: Database, flow_id: str) -> dict[str, Any] | None:
    rows = list(db.table("flows").rows_where("id = ?", [flow_id], limit=1))
    return rows[0] if rows else None


def update_flow(db: Database, flow_id: str, **changes: Any) -> None:
    changes.setdefault("updated_at", utcnow_iso())
    db.table("flows").update(flow_id, changes)


_FLOW_COLUMNS = frozenset(
    {
        "state",
        "name",
        "account_id",
        "requester",
        "channel_id",
        "parent_ts",
        "data",
        "device_flow",
        "expires_at",
        "updated_at",
        "error",
    }
)


def transition_flow(
    db: Database, flow_id: str, from_states: Iterable[str], to_state: str, **changes: Any
) -> bool:
    """Move a flow to `to_state` only if it is in one of `from_states` (compare-and-set).

    Returns False when another thread or process moved it first: the caller lost the race
    and must not act on the flow.
    """
    states = list(from_states)
    changes["state"] = to_state
    changes.setdefault("updated_at", utcnow_iso())
    unknown = set(changes) - _FLOW_COLUMNS
    if unknown:
        raise ValueError(f"not flow columns: {sorted(unknown)}")
    columns = ", ".join(f"[{k}] = ?" for k in changes)
    placeholders = ",".join("?" for _ in states)
    with db.atomic():
        cursor = db.execute(
            f"UPDATE flows SET {columns} WHERE id = ? AND state IN ({placeholders})",  # noqa: S608 - names checked
            [*changes.values(), flow_id, *states],
        )
        return cursor.rowcount == 1


def open_flows(db: Database) -> list[dict[str, Any]]:
    placeholders = ",".join("?" for _ in TERMINAL_FLOW_STATES)
    return list(
        db.table("flows").rows_where(
            f"state NOT IN ({placeholders})", sorted(TERMINAL_FLOW_STATES), order_by="created_at"
        )
    )


def open_flow_for_name(db: Database, name: str) -> dict[str, Any] | None:
    placeholders = ",".join("?" for _ in TERMINAL_FLOW_STATES)
    return _one(
        db,
        f"SELECT * FROM flows WHERE name = ? COLLATE NOCASE AND state NOT IN ({placeholders}) LIMIT 1",  # noqa: S608
        [name, *sorted(TERMINAL_FLOW_STATES)],
    )


def open_flows_of(db: Database, requester: str) -> list[dict[str, Any]]:
    placeholders = ",".join("?" for _ in TERMINAL_FLOW_STATES)
    return list(
        db.table("flows").rows_where(
            f"requester = ? AND state NOT IN ({placeholders})",
            [requester, *sorted(TERMINAL_FLOW_STATES)],
            order_by="created_at",
        )
    )


# -- accounts and secrets ----------------------------------------------------------------


def _one(db: Database, sql: str, params: list[Any]) -> dict[str, Any] | None:
    cursor = db.execute(sql, params)
    row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip([c[0] for c in cursor.description], row, strict=True))


def get_account(db: Database, name: str) -> dict[str, Any] | None:
    """The account of that name, whatever its state, unless it was rolled back."""
    return _one(
        db,
        "SELECT * FROM accounts WHERE name = ? COLLATE NOCASE AND state != 'rolled_back' LIMIT 1",
        [name],
    )


def get_account_by_id(db: Database, account_id: int) -> dict[str, Any] | None:
    rows = list(db.table("accounts").rows_where("id = ?", [account_id], limit=1))
    return rows[0] if rows else None


def insert_account(db: Database, row: dict[str, Any]) -> int:
    table = db.table("accounts")
    table.insert(row)
    return _pk(table.last_pk)


def update_account(db: Database, account_id: int, **changes: Any) -> None:
    changes.setdefault("updated_at", utcnow_iso())
    db.table("accounts").update(account_id, changes)


def active_accounts_by_app_id(db: Database, app_id: str) -> list[dict[str, Any]]:
    """The live accounts of an application (client) id, compared case-insensitively."""
    return list(
        db.table("accounts").rows_where("lower(app_id) = ? AND state = 'active'", [app_id.lower()])
    )


def list_accounts(db: Database) -> list[dict[str, Any]]:
    return list(db.table("accounts").rows_where("state != 'rolled_back'", order_by="name"))


def insert_secret(db: Database, row: dict[str, Any]) -> int:
    table = db.table("secrets")
    table.insert(row)
    return _pk(table.last_pk)


def active_secrets(db: Database, account_id: int) -> list[dict[str, Any]]:
    return list(
        db.table("secrets").rows_where(
            "account_id = ? AND state = 'active'", [account_id], order_by="end_at"
        )
    )


def pending_secrets(db: Database, account_id: int) -> list[dict[str, Any]]:
    return list(
        db.table("secrets").rows_where("account_id = ? AND state = 'pending'", [account_id])
    )


def secret_key_ids(db: Database, account_id: int) -> set[str]:
    """The Graph key id of every secret the bot ever stored for the account."""
    return {s["key_id"] for s in db.table("secrets").rows_where("account_id = ?", [account_id])}


def live_secrets(db: Database) -> list[dict[str, Any]]:
    """Every account's current secrets, soonest end first."""
    return list(db.table("secrets").rows_where("state = 'active'", order_by="end_at"))


def set_secret_state(db: Database, secret_ids: Iterable[int], state: str) -> None:
    for secret_id in secret_ids:
        db.table("secrets").update(secret_id, {"state": state})


def get_secret(db: Database, secret_id: int) -> dict[str, Any] | None:
    return _one(db, "SELECT * FROM secrets WHERE id = ? LIMIT 1", [secret_id])


def mark_retiring(
    db: Database,
    secret_ids: Iterable[int],
    *,
    replaced_by: int,
    channel_id: str | None,
    thread_ts: str | None,
) -> None:
    """Old secrets that stay live until someone confirms Veeam holds `replaced_by`."""
    for secret_id in secret_ids:
        db.table("secrets").update(
            secret_id,
            {
                "state": "retiring",
                "replaced_by": replaced_by,
                "retire_channel_id": channel_id,
                "retire_thread_ts": thread_ts,
            },
        )


def set_retire_message(db: Database, secret_ids: Iterable[int], ts: str) -> None:
    for secret_id in secret_ids:
        db.table("secrets").update(secret_id, {"retire_ts": ts})


def retiring_secrets(db: Database, account_id: int | None = None) -> list[dict[str, Any]]:
    """Old secrets still live after a renewal (of one account, or of every live account)."""
    if account_id is not None:
        return list(
            db.table("secrets").rows_where(
                "account_id = ? AND state = 'retiring'", [account_id], order_by="end_at"
            )
        )
    return [
        dict(row)
        for row in _rows(
            db,
            "SELECT s.* FROM secrets s JOIN accounts a ON a.id = s.account_id "
            "WHERE s.state = 'retiring' AND a.state = 'active' ORDER BY s.end_at",
            [],
        )
    ]


def retiring_due(db: Database, horizon: str) -> list[dict[str, Any]]:
    """Retiring secrets of live accounts that end by `horizon` and were not yet called out
    (a reminder is a notice row with threshold -1)."""
    return _rows(
        db,
        "SELECT s.id AS secret_id, s.end_at, s.hint, s.retire_channel_id, s.retire_thread_ts, "
        "a.name, a.alert_channel_id, a.channel_id "
        "FROM secrets s JOIN accounts a ON a.id = s.account_id "
        "WHERE s.state = 'retiring' AND a.state = 'active' AND s.end_at <= ? "
        "AND NOT EXISTS (SELECT 1 FROM notices n WHERE n.secret_id = s.id AND n.threshold = ?) "
        "ORDER BY s.end_at",
        [horizon, RETIRING_REMINDER],
    )


#: The notice threshold that records "the retiring secret's own expiry was called out".
RETIRING_REMINDER = -1


def _rows(db: Database, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cursor = db.execute(sql, params)
    columns = [c[0] for c in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]


# -- expiry notices ----------------------------------------------------------------------


def first_notice(db: Database, secret_id: int) -> dict[str, Any] | None:
    rows = list(
        db.table("notices").rows_where(
            "secret_id = ? AND ts IS NOT NULL", [secret_id], order_by="id", limit=1
        )
    )
    return rows[0] if rows else None


def claim_notice(db: Database, secret_id: int, threshold: int, channel: str, now: datetime) -> bool:
    """Record that this warning is being posted; False when it already was (or is)."""
    cursor = db.execute(
        "INSERT OR IGNORE INTO notices (secret_id, threshold, posted_at, channel_id) VALUES (?, ?, ?, ?)",
        [secret_id, threshold, utcnow_iso(now), channel],
    )
    return cursor.rowcount == 1


def drop_notice(db: Database, secret_id: int, threshold: int) -> None:
    db.execute("DELETE FROM notices WHERE secret_id = ? AND threshold = ?", [secret_id, threshold])


def set_notice_ts(
    db: Database, secret_id: int, threshold: int, ts: str, digest: bool = False
) -> None:
    db.execute(
        "UPDATE notices SET ts = ?, digest = ? WHERE secret_id = ? AND threshold = ?",
        [ts, int(digest), secret_id, threshold],
    )


#: `meta` key: fingerprints (comma-separated) of the keys stored values may be encrypted under.
META_KEY_FINGERPRINTS = "key_fingerprints"


def encrypted_sample(db: Database) -> str | None:
    """One encrypted value held in the database (a client secret or a device flow), if any."""
    row = db.execute(
        "SELECT ciphertext FROM secrets WHERE ciphertext IS NOT NULL "
        "UNION ALL SELECT device_flow FROM flows WHERE device_flow IS NOT NULL LIMIT 1"
    ).fetchone()
    return str(row[0]) if row else None


def set_meta(db: Database, key: str, value: str) -> None:
    db.table("meta").upsert({"key": key, "value": value}, pk="key")


def get_meta(db: Database, key: str) -> str | None:
    rows = list(db.table("meta").rows_where("key = ?", [key], limit=1))
    return str(rows[0]["value"]) if rows else None


def is_digest(db: Database, ts: str) -> bool:
    return (
        db.execute("SELECT 1 FROM notices WHERE ts = ? AND digest = 1 LIMIT 1", [ts]).fetchone()
        is not None
    )


# -- the expiry scan ---------------------------------------------------------------------------


def secrets_due_by(db: Database, horizon: str) -> list[dict[str, Any]]:
    """Active secrets of active accounts ending by `horizon`, soonest first: each row is the
    account's columns plus `secret_id`, `end_at`, `hint` and `announced` (the most urgent
    threshold already announced for the secret, or None)."""
    rows = db.execute(
        """
        SELECT s.id AS secret_id, s.end_at, s.hint, a.*,
               (SELECT MIN(n.threshold) FROM notices n WHERE n.secret_id = s.id) AS announced
        FROM secrets s JOIN accounts a ON a.id = s.account_id
        WHERE s.state = 'active' AND a.state = 'active' AND s.end_at <= ?
        ORDER BY s.end_at
        """,
        [horizon],
    )
    columns = [c[0] for c in rows.description]
    return [dict(zip(columns, values, strict=True)) for values in rows.fetchall()]


# -- what /metrics reads -----------------------------------------------------------------------


def flow_counts(db: Database) -> list[tuple[str, str, int]]:
    """(kind, state, number of flows) for every kind and state present."""
    return [
        (str(kind), str(state), int(count))
        for kind, state, count in db.execute(
            "SELECT kind, state, COUNT(*) FROM flows GROUP BY kind, state"
        ).fetchall()
    ]


def failure_counts(db: Database, states: Iterable[str]) -> list[tuple[str, str | None, int]]:
    """(kind, error, number of flows) of the flows that ended in one of `states`."""
    states = list(states)
    placeholders = ",".join("?" for _ in states)
    return [
        (str(kind), error, int(count))
        for kind, error, count in db.execute(
            f"SELECT kind, error, COUNT(*) FROM flows WHERE state IN ({placeholders}) "  # noqa: S608 - placeholders
            "GROUP BY kind, error",
            states,
        ).fetchall()
    ]


def active_secret_ends(db: Database) -> list[str]:
    """The end of every active secret of an active account."""
    return [
        str(end_at)
        for (end_at,) in db.execute(
            "SELECT s.end_at FROM secrets s JOIN accounts a ON a.id = s.account_id "
            "WHERE s.state = 'active' AND a.state = 'active'"
        ).fetchall()
    ]


# -- encrypted values (the doctor, key rotation) -----------------------------------------------

#: Every column that holds a value encrypted with the database's key: (table, column).
ENCRYPTED_COLUMNS = (("secrets", "ciphertext"), ("flows", "device_flow"))


def count_encrypted(db: Database) -> tuple[int, str | None]:
    """How many encrypted values the database holds, and one of them (to try a key on).
    Works on a database whose tables may not exist yet."""
    total, sample = 0, None
    for table, column in ENCRYPTED_COLUMNS:
        if not db[table].exists():
            continue
        count = db.execute(
            f"SELECT count(*) FROM {table} WHERE {column} IS NOT NULL"  # noqa: S608 - fixed names
        ).fetchone()[0]
        total += int(count)
        if sample is None and count:
            sample = db.execute(
                f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL LIMIT 1"  # noqa: S608
            ).fetchone()[0]
    return total, sample


def rewrap_encrypted(db: Database, rewrap: Callable[[str], str]) -> int:
    """Replace every encrypted value with `rewrap(value)`, in one transaction; returns how
    many were rewritten."""
    count = 0
    with db.atomic():
        for table, column in ENCRYPTED_COLUMNS:
            select = f"SELECT rowid, {column} FROM {table} WHERE {column} IS NOT NULL"  # noqa: S608 - fixed names
            update = f"UPDATE {table} SET {column} = ? WHERE rowid = ?"  # noqa: S608 - fixed names
            rows = db.execute(select).fetchall()
            for rowid, value in rows:
                db.execute(update, [rewrap(value), rowid])
                count += 1
    return count
