"""Managed accounts and their client secrets."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlite_utils import Database

from storage.queries.common import _insert, _one, _rows, _update, utcnow_iso


def get_account(db: Database, name: str) -> dict[str, Any] | None:
    """The account of that name, whatever its state, unless it was rolled back."""
    return _one(
        db,
        "SELECT * FROM accounts WHERE name = ? COLLATE NOCASE AND state != 'rolled_back' LIMIT 1",
        [name],
    )


def get_account_by_id(db: Database, account_id: int) -> dict[str, Any] | None:
    return _one(db, "SELECT * FROM accounts WHERE id = ?", [account_id])


def insert_account(db: Database, row: dict[str, Any]) -> int:
    return _insert(db, "accounts", row)


def update_account(db: Database, account_id: int, **changes: Any) -> None:
    changes.setdefault("updated_at", utcnow_iso())
    _update(db, "accounts", account_id, changes)


def active_accounts_by_app_id(db: Database, app_id: str) -> list[dict[str, Any]]:
    """The live accounts of an application (client) id, compared case-insensitively."""
    return list(
        db.table("accounts").rows_where("lower(app_id) = ? AND state = 'active'", [app_id.lower()])
    )


def group_accounts(db: Database) -> list[dict[str, Any]]:
    """The live accounts made for a management group."""
    return list(
        db.table("accounts").rows_where(
            "state = 'active' AND management_group IS NOT NULL", order_by="id"
        )
    )


def list_accounts(db: Database) -> list[dict[str, Any]]:
    return list(db.table("accounts").rows_where("state != 'rolled_back'", order_by="name"))


def insert_secret(db: Database, row: dict[str, Any]) -> int:
    return _insert(db, "secrets", row)


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
        _update(db, "secrets", secret_id, {"state": state})


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
        _update(
            db,
            "secrets",
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
        _update(db, "secrets", secret_id, {"retire_ts": ts})


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
