"""The database and its encryption key belong together: a replaced or missing key, or a
lost database, stops start-up with one line and changes nothing; /healthz sees the
database file go, be replaced, turn read-only or run out of disk."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from bot.cli import main
from bot.core.config import load_config
from bot.core.crypto import Cipher, key_file_for, read_key_file, write_key_file
from bot.server import Health, HttpServer
from storage import queries
from storage.db import Store, open_store
from storage.keys import (
    DatabaseMissing,
    KeyMismatch,
    fingerprint,
    open_bound,
    recorded_fingerprints,
)
from tests.fakes.microsoft import MicrosoftDouble
from tests.fakes.slack import SlackDouble
from tests.process import SUB, BotProcess, create, flow_row, launch, thread_has, wait_until


def dump(db: Path) -> list[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


def files(directory: Path) -> set[str]:
    return {p.name for p in directory.iterdir() if not p.name.startswith("bot-")}


def refused(bot: BotProcess) -> str:
    """Start `bot`, expect it to stop at once; return its one line of output."""
    bot.start(wait=False)
    assert bot.proc is not None
    assert bot.proc.wait(30) == 1, bot.log()
    lines = [line for line in bot.log().splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert "Traceback" not in lines[0]
    return lines[0]


@pytest.fixture
def keyless_env(env: dict[str, str]) -> dict[str, str]:
    """Key-file mode: no VEEAM_SA_ENCRYPTION_KEY, the key lives beside the database."""
    return {k: v for k, v in env.items() if k != "VEEAM_SA_ENCRYPTION_KEY"}


def pending_sign_in(
    env: dict[str, str], slack: SlackDouble, tmp_path: Path, procs: list[BotProcess]
) -> Path:
    """Run the bot until a sign-in is pending (an encrypted device flow in the database),
    then stop it; returns the database path."""
    db = Path(env["VEEAM_SA_DB"])
    bot = launch(env, tmp_path, procs)
    create(bot, slack, f"create prod --subscription {SUB}")
    wait_until(lambda: flow_row(db, "prod").get("state") == "awaiting_sign_in", what="sign-in")
    assert bot.terminate() == 0
    assert flow_row(db, "prod")["device_flow"]
    return db


def test_a_replaced_key_file_stops_start_up_and_changes_nothing(
    keyless_env: dict[str, str],
    slack: SlackDouble,
    ms: MicrosoftDouble,
    tmp_path: Path,
    procs: list[BotProcess],
) -> None:
    db = pending_sign_in(keyless_env, slack, tmp_path, procs)
    key_file = key_file_for(db)
    original = key_file.read_text()
    expected = fingerprint(original.strip())
    before = dump(db)
    stand_in = Fernet.generate_key().decode()
    write_key_file(key_file, [stand_in])
    listing = files(tmp_path)

    bot = BotProcess(keyless_env, tmp_path)
    procs.append(bot)
    line = refused(bot)
    assert expected in line and str(key_file) in line and "restore" in line, line
    assert fingerprint(stand_in) in line
    assert dump(db) == before
    assert key_file.read_text().strip() == stand_in
    assert files(tmp_path) == listing

    # The original key back: the bot starts and resumes the pending sign-in.
    key_file.write_text(original)
    launch(keyless_env, tmp_path, procs)
    wait_until(lambda: thread_has(slack, "still waiting for the sign-in"), what="resume note")
    assert len(ms.flows) == 1


def test_a_missing_key_file_is_not_replaced_by_a_fresh_key(
    keyless_env: dict[str, str],
    slack: SlackDouble,
    tmp_path: Path,
    procs: list[BotProcess],
) -> None:
    db = pending_sign_in(keyless_env, slack, tmp_path, procs)
    key_file = key_file_for(db)
    expected = fingerprint(key_file.read_text().strip())
    key_file.unlink()
    before = dump(db)

    bot = BotProcess(keyless_env, tmp_path)
    procs.append(bot)
    line = refused(bot)
    assert "missing" in line and str(key_file) in line and expected in line, line
    assert not key_file.exists()  # no stand-in key generated
    assert dump(db) == before


def test_a_database_deleted_while_running_turns_health_503_and_is_not_recreated(
    keyless_env: dict[str, str],
    slack: SlackDouble,
    tmp_path: Path,
    procs: list[BotProcess],
) -> None:
    db = Path(keyless_env["VEEAM_SA_DB"])
    bot = launch(keyless_env, tmp_path, procs)
    assert httpx.get(f"{bot.url}/healthz").status_code == 200
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    health = httpx.get(f"{bot.url}/healthz")
    assert health.status_code == 503
    assert health.json()["database_problem"] == "the database file is gone"
    assert bot.terminate() == 0

    again = BotProcess(keyless_env, tmp_path)
    procs.append(again)
    line = refused(again)
    assert "is missing, but its key file" in line and "veeam-sa-bot init" in line, line
    assert not db.exists()

    # Told to: `init` makes an empty database for the existing key, and says so in the audit.
    result = subprocess.run(
        [sys.executable, "-m", "bot", "init"],
        cwd=tmp_path,
        env={**again.env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    assert "created an empty database" in result.stdout
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT actor, action, detail FROM audit").fetchall()
    conn.close()
    assert [(r[0].startswith("host"), r[1]) for r in rows] == [(True, "database.created")]
    assert json.loads(rows[0][2])["key_fingerprint"] == fingerprint(
        key_file_for(db).read_text().strip()
    )
    launch(keyless_env, tmp_path, procs)


def test_the_environment_key_is_checked_too(
    env: dict[str, str], slack: SlackDouble, tmp_path: Path, procs: list[BotProcess]
) -> None:
    db = pending_sign_in(env, slack, tmp_path, procs)
    before = dump(db)
    bot = BotProcess({**env, "VEEAM_SA_ENCRYPTION_KEY": Fernet.generate_key().decode()}, tmp_path)
    procs.append(bot)
    line = refused(bot)
    assert fingerprint(env["VEEAM_SA_ENCRYPTION_KEY"]) in line
    assert "VEEAM_SA_ENCRYPTION_KEY" in line
    assert dump(db) == before


# -- in-process: the binding rules --------------------------------------------------------


@pytest.fixture
def config_env(tmp_path: Path, slack: SlackDouble) -> dict[str, str]:
    return {
        "SLACK_BOT_TOKEN": "xoxb-test",
        "SLACK_SIGNING_SECRET": "x",
        "VEEAM_SA_ADMINS": "U0ADMIN",
        "SLACK_API_URL": slack.api_url,
        "VEEAM_SA_DB": str(tmp_path / "veeam-sa.db"),
    }


def put_secret(store: Store, cipher: Cipher) -> None:
    queries.insert_flow(
        store.db,
        {
            "id": "f1",
            "kind": "create",
            "state": "awaiting_sign_in",
            "name": "prod",
            "requester": "U0ADMIN",
            "created_at": queries.utcnow_iso(),
            "device_flow": cipher.encrypt('{"device_code": "x"}'),
        },
    )


def test_key_rotation_with_old_and_new_keys_then_the_new_alone(config_env: dict[str, str]) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    bound = open_bound(load_config({**config_env, "VEEAM_SA_ENCRYPTION_KEY": old}, dotenv=None))
    put_secret(bound.store, bound.cipher)
    bound.store.close()
    # NEW,OLD: new values under NEW, old ones still under OLD: both are needed now.
    both = open_bound(load_config({**config_env, "VEEAM_SA_ENCRYPTION_KEY": f"{new},{old}"}, dotenv=None))
    assert set(recorded_fingerprints(both.store)) == {fingerprint(old), fingerprint(new)}
    both.store.close()
    with pytest.raises(KeyMismatch):
        open_bound(load_config({**config_env, "VEEAM_SA_ENCRYPTION_KEY": new}, dotenv=None))


def test_rotate_key_records_the_new_fingerprint(
    config_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for key, value in config_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("VEEAM_SA_ENCRYPTION_KEY", raising=False)
    config = load_config(dotenv=None)
    bound = open_bound(config)
    put_secret(bound.store, bound.cipher)
    old = bound.keys[0]
    bound.store.close()

    assert main(["rotate-key"]) == 0
    new = read_key_file(key_file_for(config.db_path))
    assert new != [old]
    again = open_bound(config)  # the rotated key opens the database
    assert recorded_fingerprints(again.store) == [fingerprint(new[0])]
    again.store.close()
    write_key_file(key_file_for(config.db_path), [old])
    with pytest.raises(KeyMismatch):
        open_bound(config)
    assert main(["rotate-key"]) == 1  # nor does rotate-key run with the wrong key


def test_operator_commands_do_not_recreate_a_lost_database(
    config_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)
    for key, value in config_env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("VEEAM_SA_ENCRYPTION_KEY", raising=False)
    config = load_config(dotenv=None)
    open_bound(config).store.close()
    config.db_path.unlink()
    with pytest.raises(DatabaseMissing):
        open_bound(config)
    assert main(["audit"]) == 1
    assert not config.db_path.exists()


def test_a_database_without_fingerprints_is_checked_by_decrypting(
    config_env: dict[str, str],
) -> None:
    key = Fernet.generate_key().decode()
    store = open_store(Path(config_env["VEEAM_SA_DB"]))
    put_secret(store, Cipher(key))  # written before fingerprints were recorded
    store.close()
    with pytest.raises(KeyMismatch):
        open_bound(
            load_config(
                {**config_env, "VEEAM_SA_ENCRYPTION_KEY": Fernet.generate_key().decode()},
                dotenv=None,
            )
        )
    bound = open_bound(load_config({**config_env, "VEEAM_SA_ENCRYPTION_KEY": key}, dotenv=None))
    assert recorded_fingerprints(bound.store) == [fingerprint(key)]
    bound.store.close()


# -- /healthz and the database file -------------------------------------------------------


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Store, str]]:
    store = open_store(tmp_path / "veeam-sa.db")
    server = HttpServer(
        0, None, Health(store.ping, lambda: True, "socket", database_problem=store.problem),
        host="127.0.0.1",
    )
    server.start()
    yield store, f"http://127.0.0.1:{server.port}/healthz"
    server.stop(1)
    store.close()


def test_health_sees_a_read_only_database(served: tuple[Store, str]) -> None:
    store, url = served
    assert httpx.get(url).status_code == 200
    os.chmod(store.path, 0o444)
    answer = httpx.get(url)
    assert answer.status_code == 503
    assert answer.json()["database_problem"] == "the database file is read-only"
    os.chmod(store.path, 0o600)
    assert httpx.get(url).status_code == 200


def test_health_sees_a_replaced_database(served: tuple[Store, str], tmp_path: Path) -> None:
    store, url = served
    other = open_store(tmp_path / "other.db")
    other.close()
    os.replace(tmp_path / "other.db", store.path)
    answer = httpx.get(url)
    assert answer.status_code == 503
    assert answer.json()["database_problem"] == "the database file was replaced by another"


def test_health_sees_a_full_disk(served: tuple[Store, str]) -> None:
    store, url = served
    fs = os.statvfs(store.path.parent)
    store.min_free_bytes = fs.f_bavail * fs.f_frsize + (1 << 30)  # less free than needed
    answer = httpx.get(url)
    assert answer.status_code == 503
    assert answer.json()["database_problem"].startswith("the disk is full")
