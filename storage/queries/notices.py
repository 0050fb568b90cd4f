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
