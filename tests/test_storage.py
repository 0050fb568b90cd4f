from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest
from sqlite_utils import Database

from bot.core.errors import StorageError
from storage import queries
from storage.db import Store, open_store
from storage.migrations import LATEST, migrations


def test_open_creates_schema_in_wal_mode(tmp_path: Path) -> None:
    store = open_store(tmp_path / "a" / "veeam-sa.db")
    db = store.db
    assert {"accounts", "secrets", "flows", "notices", "audit"} <= set(db.table_names())
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert store.schema_current()
    store.close()


def test_migrations_are_idempotent(tmp_path: Path) -> None:
    path = tmp_path / "veeam-sa.db"
    open_store(path).close()
    store = open_store(path)
    names = [m.name for m in migrations.applied(store.db)]
    assert len(names) == len(set(names))
    assert names[-1] == LATEST
    store.close()


def test_older_schema_is_upgraded_on_open(tmp_path: Path) -> None:
    path = tmp_path / "veeam-sa.db"
    old = Database(path)
    migrations.apply(old, stop_before="m002_lookup_indexes")
    old.table("accounts").insert({"name": "kept", "created_at": "2026-01-01T00:00:00+00:00"})
    assert not migrations.pending(old) == []
    old.close()

    store = open_store(path)
    assert store.schema_current()
    assert "idx_secrets_state_end_at" in {i.name for i in store.db.table("secrets").indexes}
    assert queries.get_account(store.db, "KEPT")["name"] == "kept"  # type: ignore[index]
    store.close()


def test_audit_is_append_only(tmp_path: Path) -> None:
    store = open_store(tmp_path / "veeam-sa.db")
    queries.add_audit(
        store.db, actor="U1", action="create", target="prod", outcome="ok", detail={"a": 1}
    )
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store.db.execute("UPDATE audit SET outcome = 'forged'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        store.db.execute("DELETE FROM audit")
    rows = queries.audit_rows(store.db, target="prod")
    assert [(r["actor"], r["outcome"]) for r in rows] == [("U1", "ok")]
    store.close()


def test_each_thread_writes_through_its_own_connection(tmp_path: Path) -> None:
    store = open_store(tmp_path / "veeam-sa.db")
    errors: list[BaseException] = []

    def writer(n: int) -> None:
        try:
            for i in range(50):
                with store.db.atomic():
                    queries.add_audit(
                        store.db, actor=f"U{n}", action="x", target=str(i), outcome="ok"
                    )
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert store.db.table("audit").count == 400
    store.close()


def test_flow_queries_track_open_flows(tmp_path: Path) -> None:
    store = open_store(tmp_path / "veeam-sa.db")
    db = store.db
    now = queries.utcnow_iso()
    for fid, name, state in [("f1", "prod", "signing_in"), ("f2", "dev", "done")]:
        queries.insert_flow(
            db,
            {
                "id": fid,
                "kind": "create",
                "state": state,
                "name": name,
                "requester": "U1",
                "created_at": now,
            },
        )
    assert [f["id"] for f in queries.open_flows(db)] == ["f1"]
    assert queries.open_flow_for_name(db, "PROD")["id"] == "f1"  # type: ignore[index]
    assert queries.open_flow_for_name(db, "dev") is None
    queries.update_flow(db, "f1", state="cancelled")
    assert queries.open_flows(db) == []
    store.close()


def test_unopenable_database_is_a_storage_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(StorageError, match="cannot open the database"):
        open_store(blocker / "veeam-sa.db")


def _meta_writer(store: Store, key: str, done: threading.Event, errors: list[BaseException]) -> None:
    try:
        # SQLite itself would not wait at all on this connection: only the turn can.
        store.db.conn.execute("PRAGMA busy_timeout = 0")
        store.db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", [key, "b"])
    except BaseException as exc:  # noqa: BLE001 - handed to the test
        errors.append(exc)
    finally:
        done.set()


def test_a_writer_waits_for_its_turn_behind_another_thread_not_on_sqlites_lock(
    tmp_path: Path,
) -> None:
    store = open_store(tmp_path / "t.db")
    done, errors = threading.Event(), []
    with store.db.atomic():
        store.db.execute("INSERT INTO meta (key, value) VALUES (?, ?)", ["first", "a"])
        other = threading.Thread(target=_meta_writer, args=(store, "second", done, errors))
        other.start()
        # the other thread is waiting for this transaction, not failing on SQLite's lock
        assert not done.wait(0.3)
    other.join(10)
    assert errors == []
    rows = dict(store.db.execute("SELECT key, value FROM meta WHERE key IN ('first', 'second')"))
    assert rows == {"first": "a", "second": "b"}


def test_a_quick_write_gives_up_on_its_turn_within_its_bound(tmp_path: Path) -> None:
    store = open_store(tmp_path / "t.db")
    outcome: list[BaseException] = []

    def quick_write() -> None:
        try:
            with store.quick(0.2) as db, db.atomic():
                db.execute("INSERT INTO meta (key, value) VALUES ('quick', 'x')")
        except sqlite3.OperationalError as exc:
            outcome.append(exc)

    with store.db.atomic():
        store.db.execute("INSERT INTO meta (key, value) VALUES ('holder', 'x')")
        writer = threading.Thread(target=quick_write)
        writer.start()
        writer.join(10)
        assert not writer.is_alive()  # gave up while the holder still holds
    assert [str(e) for e in outcome] == ["database is locked"]
    assert store.db.execute("SELECT count(*) FROM meta WHERE key = 'quick'").fetchone()[0] == 0
