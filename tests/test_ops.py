"""Operator commands through the real CLI entry point: scan, audit, rotate-key, secret show."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography.fernet import Fernet, InvalidToken

from bot.cli import main
from bot.core.crypto import Cipher, key_file_for, load_or_create_key, read_key_file
from storage import queries
from storage.db import open_store
from tests.fakes.slack import BOT_TOKEN, SlackDouble
from tests.test_expiry import add_account


@pytest.fixture
def db_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, slack: SlackDouble) -> Path:
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "veeam-sa.db"
    for key, value in {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_SIGNING_SECRET": "x",
        "VEEAM_SA_ADMINS": "U0ADMIN",
        "SLACK_API_URL": slack.api_url,
        "VEEAM_SA_DB": str(path),
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("VEEAM_SA_ENCRYPTION_KEY", raising=False)
    return path


def seed(path: Path, cipher: Cipher, days: int = 5) -> None:
    store = open_store(path)
    add_account(store, "prod", datetime.now(UTC) + timedelta(days=days))
    secret = next(store.db.table("secrets").rows)
    store.db.table("secrets").update(
        secret["id"], {"ciphertext": cipher.encrypt("the-real-secret")}
    )
    queries.insert_flow(
        store.db,
        {
            "id": "f1",
            "kind": "create",
            "state": "awaiting_sign_in",
            "name": "next",
            "requester": "U0ADMIN",
            "created_at": queries.utcnow_iso(),
            "device_flow": cipher.encrypt('{"device_code": "DAQAB-secret-device-code"}'),
        },
    )
    queries.add_audit(
        store.db, actor="U0ADMIN", action="create.completed", target="prod", outcome="ok"
    )
    queries.add_audit(
        store.db, actor="U0OTHER", action="renew.refused", target="other", outcome="refused"
    )
    store.close()


def test_scan_dry_run_then_for_real(
    db_path: Path, slack: SlackDouble, capsys: pytest.CaptureFixture[str]
) -> None:
    cipher, _ = load_or_create_key(db_path, None)
    seed(db_path, cipher)
    assert main(["scan", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "would post: prod — 7-day warning" in out and "nothing posted" in out
    assert slack.calls_to("chat.postMessage") == []
    assert main(["scan"]) == 0
    assert "posted 1 message(s)" in capsys.readouterr().out
    assert len(slack.calls_to("chat.postMessage", channel="C0OPS")) == 1
    assert main(["scan"]) == 0
    assert "0 warning(s) due" in capsys.readouterr().out


def test_audit_filters_and_json_lines(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cipher, _ = load_or_create_key(db_path, None)
    seed(db_path, cipher)
    assert main(["audit", "--account", "prod", "--json"]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["action"] for r in rows] == ["create.completed"]
    assert main(["audit", "--since", "2999-01-01"]) == 0
    assert capsys.readouterr().out == ""
    assert main(["audit"]) == 0
    assert "renew.refused" in capsys.readouterr().out
    assert main(["audit", "--since", "yesterday"]) == 2


def test_rotate_key_with_a_key_file(db_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    old_cipher, _ = load_or_create_key(db_path, None)
    seed(db_path, old_cipher)
    old_key = read_key_file(key_file_for(db_path))[0]
    reader, _ = load_or_create_key(db_path, None)  # a running bot, loaded before the rotation

    assert main(["rotate-key"]) == 0
    assert "re-encrypted 2 value(s)" in capsys.readouterr().out
    new_keys = read_key_file(key_file_for(db_path))
    assert len(new_keys) == 1 and new_keys[0] != old_key

    store = open_store(db_path)
    values = [r["ciphertext"] for r in store.db.table("secrets").rows] + [
        r["device_flow"] for r in store.db.table("flows").rows
    ]
    new_only = Fernet(new_keys[0].encode())
    assert new_only.decrypt(values[0].encode()) == b"the-real-secret"
    assert b"DAQAB-secret-device-code" in new_only.decrypt(values[1].encode())
    for value in values:
        with pytest.raises(InvalidToken):
            Fernet(old_key.encode()).decrypt(value.encode())
    assert reader.decrypt(values[0]) == "the-real-secret"  # re-read the key file and carried on
    assert [r["action"] for r in store.db.table("audit").rows_where("action = 'key.rotated'")] == [
        "key.rotated"
    ]
    store.close()


def test_rotate_key_with_an_environment_key(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = Fernet.generate_key().decode(), Fernet.generate_key().decode()
    seed(db_path, Cipher(old))
    monkeypatch.setenv("VEEAM_SA_ENCRYPTION_KEY", old)
    assert main(["rotate-key"]) == 2
    assert "NEW,OLD" in capsys.readouterr().err
    monkeypatch.setenv("VEEAM_SA_ENCRYPTION_KEY", f"{new},{old}")
    assert main(["rotate-key"]) == 0
    store = open_store(db_path)
    value = next(store.db.table("secrets").rows)["ciphertext"]
    assert Cipher(new).decrypt(value) == "the-real-secret"
    store.close()


def test_secret_show_asks_and_audits(
    db_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    cipher, _ = load_or_create_key(db_path, None)
    seed(db_path, cipher)
    monkeypatch.setattr("sys.stdin", io.StringIO("wrong\n"))
    assert main(["secret", "show", "prod"]) == 1
    captured = capsys.readouterr()
    assert "the-real-secret" not in captured.out + captured.err
    monkeypatch.setattr("sys.stdin", io.StringIO("prod\n"))
    assert main(["secret", "show", "prod"]) == 0
    assert capsys.readouterr().out.strip() == "the-real-secret"
    assert main(["secret", "show", "ghost", "--yes"]) == 1
    store = open_store(db_path)
    outcomes = [r["outcome"] for r in store.db.table("audit").rows_where("action = 'secret.show'")]
    assert outcomes == ["declined", "shown"]
    store.close()
