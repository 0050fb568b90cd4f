"""What every query module shares: the terminal flow states, timestamps, row helpers."""

from __future__ import annotations

import logging
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



def _one(db: Database, sql: str, params: list[Any]) -> dict[str, Any] | None:
    cursor = db.execute(sql, params)
    row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip([c[0] for c in cursor.description], row, strict=True))


def _rows(db: Database, sql: str, params: list[Any]) -> list[dict[str, Any]]:
    cursor = db.execute(sql, params)
    columns = [c[0] for c in cursor.description]
    return [dict(zip(columns, row, strict=True)) for row in cursor.fetchall()]
