"""Flows and their audit trail; the counts `/metrics` reads."""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlite_utils import Database

from storage.queries.common import TERMINAL_FLOW_STATES, _one, _pk, _update, audit_log, utcnow_iso

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
    return _one(db, "SELECT * FROM flows WHERE id = ?", [flow_id])


def create_flow_of_account(db: Database, account_id: int) -> dict[str, Any] | None:
    """The creation that made an account (its latest, should there be several)."""
    rows = list(
        db.table("flows").rows_where(
            "account_id = ? AND kind = 'create'",
            [account_id],
            order_by="created_at desc",
            limit=1,
        )
    )
    return rows[0] if rows else None


def update_flow(db: Database, flow_id: str, **changes: Any) -> None:
    changes.setdefault("updated_at", utcnow_iso())
    _update(db, "flows", flow_id, changes)


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


def active_credential_ends(db: Database) -> list[tuple[str, str]]:
    """(end, kind) of every active secret or certificate of an active account."""
    return [
        (str(end_at), str(kind or "password"))
        for (end_at, kind) in db.execute(
            "SELECT s.end_at, s.kind FROM secrets s JOIN accounts a ON a.id = s.account_id "
            "WHERE s.state = 'active' AND a.state = 'active'"
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
