"""What every query module shares: the terminal flow states, timestamps, row helpers."""

from __future__ import annotations

import json
import logging
import re
from datetime import UTC, datetime
from typing import Any

from sqlite_utils import Database
from sqlite_utils.db import NotFoundError

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


_COLUMN = re.compile(r"[a-z_][a-z0-9_]*")


def _stored(value: Any) -> Any:
    return json.dumps(value, sort_keys=True) if isinstance(value, dict | list | tuple) else value


def _names(columns: Any) -> list[str]:
    names = list(columns)
    for column in names:
        if not _COLUMN.fullmatch(column):
            raise ValueError(f"not a column name: {column!r}")
    return names


def _insert(db: Database, table: str, row: dict[str, Any]) -> int:
    """`INSERT INTO table …` in one statement; returns the new row's id. Lists and dicts are
    stored as JSON, as sqlite-utils' `Table.insert` does (which reads the schema first)."""
    columns = _names(row)
    cursor = db.execute(
        f"INSERT INTO [{table}] ({', '.join(f'[{c}]' for c in columns)}) "  # noqa: S608
        f"VALUES ({', '.join('?' for _ in columns)})",
        [_stored(v) for v in row.values()],
    )
    return _pk(cursor.lastrowid)


def _update(db: Database, table: str, row_id: Any, changes: dict[str, Any]) -> None:
    """`UPDATE table SET … WHERE id = ?` in one statement (sqlite-utils' `Table.update`
    reads the table's schema and the row first; flows update their row at every step).
    Lists and dicts are stored as JSON; a missing row raises `NotFoundError`, as there."""
    if not changes:
        return
    values = [_stored(v) for v in changes.values()]
    columns = ", ".join(f"[{c}] = ?" for c in _names(changes))
    cursor = db.execute(
        f"UPDATE [{table}] SET {columns} WHERE id = ?",  # noqa: S608 - names checked above
        [*values, row_id],
    )
    if cursor.rowcount == 0:
        raise NotFoundError(f"no {table} row {row_id!r}")
