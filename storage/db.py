"""Opening the database: one SQLite file, WAL mode, one connection per thread.

sqlite-utils' `Database` wraps a single `sqlite3.Connection`, and a connection's
transaction is shared by whoever uses it. Each thread therefore gets its own connection
(`Store.db`); SQLite's WAL mode lets readers run beside the one writer, and the busy
timeout makes concurrent writers queue instead of failing.

The writers of this process take turns on one lock per file (`_Database.turn`) before they
ask SQLite for its write lock. SQLite's busy handler waits by sleeping and trying again
(1, 2, 5, 10 … ms); a writer waiting for another thread of the same process wakes the
moment that one is done instead. The busy handler is left for other processes (the
operator's commands).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import threading
import time
import urllib.parse
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlite_utils import Database

from bot.core.errors import StorageError
from storage.migrations import LATEST, migrations

BUSY_TIMEOUT_S = 30.0
#: Name prefixes of the threads that may run WAL checkpoints (workers, timer, scheduler).
BACKGROUND_THREADS = ("veeam-sa", "APScheduler", "MainThread")
#: Free space below which the disk counts as full for `/healthz`.
MIN_FREE_BYTES = 16 * 1024 * 1024


#: The statements that write, when they start a statement (`execute` outside a transaction).
_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLACE")
_TURNS: dict[str, threading.Lock] = {}
_TURNS_GUARD = threading.Lock()


def _turn_lock(path: Path) -> threading.Lock:
    key = os.path.realpath(path)
    with _TURNS_GUARD:
        return _TURNS.setdefault(key, threading.Lock())


class _Database(Database):
    """sqlite-utils' Database whose outermost transactions start with BEGIN IMMEDIATE, and
    whose writes take their turn among the process's writers first (`turn`).

    A deferred transaction that reads before it writes cannot wait for another writer:
    SQLite fails it at once with "database is locked". Taking the write lock up front
    lets the busy timeout queue concurrent writers instead.
    """

    #: The file's turn lock, shared by every connection of this process to it.
    turn_lock: threading.Lock
    #: How long a write may wait, for its turn and then for SQLite (`Store.quick` lowers it).
    busy_seconds: float

    @contextlib.contextmanager
    def turn(self) -> Iterator[None]:
        """Wait for this process's other writers (at most `busy_seconds`, then "database is
        locked", as SQLite says it); what is left of the wait goes to SQLite's own."""
        started = time.monotonic()
        if not self.turn_lock.acquire(timeout=self.busy_seconds):
            raise sqlite3.OperationalError("database is locked")
        try:
            waited = time.monotonic() - started
            if waited > 0.05:
                left = max(0.001, self.busy_seconds - waited)
                self.conn.execute(f"PRAGMA busy_timeout = {int(left * 1000)}")
            try:
                yield
            finally:
                if waited > 0.05:
                    self.conn.execute(f"PRAGMA busy_timeout = {int(self.busy_seconds * 1000)}")
        finally:
            self.turn_lock.release()

    def execute(self, sql: str, parameters: Any = None) -> sqlite3.Cursor:
        if self.conn.in_transaction or not sql.lstrip()[:7].upper().startswith(_WRITES):
            return super().execute(sql, parameters)
        with self.turn():
            return super().execute(sql, parameters)

    @contextlib.contextmanager
    def atomic(self) -> Iterator[Database]:
        if self.conn.in_transaction:
            with super().atomic() as db:
                yield db
            return
        with self.turn():
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                yield self
            except BaseException:
                self.rollback()
                raise
            else:
                try:
                    self.conn.execute("COMMIT")
                except BaseException:
                    self.rollback()
                    raise


def _connect(path: Path, create: bool = False) -> _Database:
    # mode=rw: a connection opened after the file was deleted fails instead of quietly
    # creating an empty database in its place; only `open_store` creates the file.
    uri = f"file:{urllib.parse.quote(str(path))}?mode={'rwc' if create else 'rw'}"
    conn = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, check_same_thread=False)
    db = _Database(conn)
    db.turn_lock = _turn_lock(path)
    db.busy_seconds = BUSY_TIMEOUT_S
    db.execute("PRAGMA foreign_keys = ON")
    # WAL with synchronous=NORMAL: a crash of the process loses nothing; a power cut may lose
    # the last transactions, never corrupt the file. FULL would sync on every commit.
    db.execute("PRAGMA synchronous = NORMAL")
    if not threading.current_thread().name.startswith(BACKGROUND_THREADS):
        # Slack's request threads never run a WAL checkpoint themselves (the commit that
        # crosses the threshold would wait for the disk inside a 3-second ack); the
        # background threads' commits do it, and `checkpoint()` runs on a schedule.
        db.execute("PRAGMA wal_autocheckpoint = 0")
    return db


class Store:
    """The database file and this thread's connection to it."""

    def __init__(self, path: Path, min_free_bytes: int = MIN_FREE_BYTES) -> None:
        self.path = Path(path)
        self.min_free_bytes = min_free_bytes
        #: (device, inode) of the file opened: a file put in its place is another database.
        self.identity: tuple[int, int] | None = None
        self._create = False
        self._local = threading.local()
        self._lock = threading.Lock()
        # Weak: a connection goes with its thread (HTTP request threads come and go).
        self._all: weakref.WeakSet[_Database] = weakref.WeakSet()

    @property
    def db(self) -> _Database:
        db = getattr(self._local, "db", None)
        if db is None:
            db = _connect(self.path, create=self._create)
            self._local.db = db
            with self._lock:
                self._all.add(db)
        return db

    @contextlib.contextmanager
    def quick(self, seconds: float = 2.0) -> Iterator[Database]:
        """This thread's connection, waiting at most `seconds` for a lock: for writes on
        Slack's 3-second ack path, which must fail fast rather than wait."""
        db = self.db
        db.execute(f"PRAGMA busy_timeout = {int(seconds * 1000)}")
        db.busy_seconds = seconds
        try:
            yield db
        finally:
            db.busy_seconds = BUSY_TIMEOUT_S
            db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")

    def checkpoint(self) -> None:
        """Fold the WAL into the database file without blocking readers or writers."""
        try:
            self.db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error:
            pass

    def ping(self) -> bool:
        """True when the database answers a trivial query (for /healthz)."""
        try:
            self.db.execute("SELECT 1").fetchone()
        except sqlite3.Error:
            return False
        return True

    def remember_identity(self) -> None:
        st = os.stat(self.path)
        self.identity = (st.st_dev, st.st_ino)

    def problem(self) -> str | None:
        """What keeps the database from taking writes (for /healthz), or None: the file is
        gone, replaced, read-only, the disk is full, or it does not answer."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return "the database file is gone"
        except OSError as exc:
            return f"the database file cannot be read ({exc.strerror})"
        if not stat.S_ISREG(st.st_mode):
            return "the database path is not a file"
        if self.identity is not None and (st.st_dev, st.st_ino) != self.identity:
            return "the database file was replaced by another"
        # Mode bits as well as access(): a process running as root may write anyway, but an
        # operator who made the file read-only meant it.
        if not st.st_mode & 0o222 or not os.access(self.path, os.W_OK):
            return "the database file is read-only"
        if not os.access(self.path.parent, os.W_OK):
            return "the database directory is read-only"
        try:
            fs = os.statvfs(self.path.parent)
        except OSError as exc:
            return f"the database's file system cannot be read ({exc.strerror})"
        if fs.f_bavail * fs.f_frsize < self.min_free_bytes:
            return f"the disk is full ({fs.f_bavail * fs.f_frsize // 1024} KiB free)"
        if not self.ping():
            return "the database does not answer"
        return None

    def schema_current(self) -> bool:
        return not migrations.pending(self.db) and any(
            m.name == LATEST for m in migrations.applied(self.db)
        )

    def close(self) -> None:
        with self._lock:
            for db in list(self._all):
                try:
                    db.close()
                except sqlite3.Error:
                    pass
            self._all.clear()
        self._local = threading.local()


def open_store(path: Path) -> Store:
    """Open (creating if needed) and migrate the database; raise `StorageError` when it can't."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        store = Store(path)
        store._create = True
        try:
            db = store.db
        finally:
            store._create = False
        db.enable_wal()
        migrations.apply(db)
        store.remember_identity()
    except (sqlite3.Error, OSError) as exc:
        raise StorageError(f"cannot open the database {path}: {exc}") from exc
    return store
