"""Expiry notices, the meta table, the expiry scan's reading, and encrypted values."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlite_utils import Database

from storage.queries.common import utcnow_iso

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
    account's columns plus `secret_id`, `end_at`, `hint`, `snoozed_until` and `announced`
    (the most urgent threshold already announced for the secret, or None)."""
    rows = db.execute(
        """
        SELECT s.id AS secret_id, s.end_at, s.hint, s.snoozed_until, a.*,
               (SELECT MIN(n.threshold) FROM notices n WHERE n.secret_id = s.id) AS announced
        FROM secrets s JOIN accounts a ON a.id = s.account_id
        WHERE s.state = 'active' AND a.state = 'active' AND s.end_at <= ?
        ORDER BY s.end_at
        """,
        [horizon],
    )
    columns = [c[0] for c in rows.description]
    return [dict(zip(columns, values, strict=True)) for values in rows.fetchall()]


# -- alerts: snoozes, the messages that list a secret, renewed marks ----------------------------


def snooze_secret(db: Database, secret_id: int, until: str, by: str) -> None:
    db.execute(
        "UPDATE secrets SET snoozed_until = ?, snoozed_by = ? WHERE id = ?", [until, by, secret_id]
    )


def warned_secret(db: Database, secret_id: int) -> dict[str, Any] | None:
    """A secret with its account's name and state, and the most urgent threshold announced."""
    rows = _dicts(
        db,
        "SELECT s.id AS secret_id, s.account_id, s.end_at, s.state, s.snoozed_until, "
        "a.name, a.state AS account_state, "
        "(SELECT MIN(n.threshold) FROM notices n WHERE n.secret_id = s.id AND n.threshold >= 0) "
        "AS announced "
        "FROM secrets s JOIN accounts a ON a.id = s.account_id WHERE s.id = ?",
        [secret_id],
    )
    return rows[0] if rows else None


def warning_messages(db: Database, secret_ids: list[int]) -> list[dict[str, Any]]:
    """The messages that carry a Renew button for these secrets: every digest that lists
    them and each one's first (top-level) single warning. `channel_id`, `ts`, `digest`."""
    if not secret_ids:
        return []
    marks = ",".join("?" * len(secret_ids))
    return _dicts(
        db,
        f"SELECT DISTINCT channel_id, ts, digest FROM notices WHERE ts IS NOT NULL AND ("  # noqa: S608 - placeholders only
        f"(digest = 1 AND secret_id IN ({marks})) OR id IN (SELECT MIN(id) FROM notices "
        f"WHERE ts IS NOT NULL AND threshold >= 0 AND secret_id IN ({marks}) GROUP BY secret_id)) "
        "ORDER BY ts",
        [*secret_ids, *secret_ids],
    )


def mark_notices_renewed(db: Database, secret_ids: list[int], by: str) -> None:
    if not secret_ids:
        return
    marks = ",".join("?" * len(secret_ids))
    db.execute(
        f"UPDATE notices SET renewed_by = ? WHERE secret_id IN ({marks})",  # noqa: S608 - placeholders only
        [by, *secret_ids],
    )


def digest_rows(db: Database, channel: str, ts: str) -> list[dict[str, Any]]:
    """Everything a digest lists, to draw it again: each row is the account's columns plus
    `secret_id`, `threshold`, `posted_at`, `renewed_by`, `end_at` and `hint`."""
    return _dicts(
        db,
        "SELECT n.secret_id, n.threshold, n.posted_at, n.renewed_by, s.end_at, s.hint, a.* "
        "FROM notices n JOIN secrets s ON s.id = n.secret_id JOIN accounts a ON a.id = s.account_id "
        "WHERE n.ts = ? AND n.channel_id = ? AND n.digest = 1 ORDER BY s.end_at",
        [ts, channel],
    )


def listed_secrets(db: Database, ts: str, account_id: int) -> list[dict[str, Any]]:
    """The account's secrets that the warning message `ts` was about (its first single
    warning, a follow-up, or a digest), with their state and `renewed_by`."""
    return _dicts(
        db,
        "SELECT s.id, s.state, s.end_at, n.renewed_by FROM notices n "
        "JOIN secrets s ON s.id = n.secret_id "
        "WHERE n.ts = ? AND s.account_id = ? AND n.threshold >= 0",
        [ts, account_id],
    )


def last_renewal(db: Database, account_id: int) -> dict[str, Any] | None:
    """The account's latest finished renewal: `requester`, `updated_at`."""
    rows = _dicts(
        db,
        "SELECT requester, updated_at FROM flows WHERE account_id = ? AND kind = 'renew' "
        "AND state = 'done' ORDER BY updated_at DESC LIMIT 1",
        [account_id],
    )
    return rows[0] if rows else None


def _dicts(db: Database, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cursor = db.execute(sql, params)
    columns = [c[0] for c in cursor.description]
    return [dict(zip(columns, values, strict=True)) for values in cursor.fetchall()]


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
