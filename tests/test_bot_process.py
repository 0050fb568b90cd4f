"""The real bot process, driven over HTTP and Socket Mode against the Slack double."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.fernet import Fernet

from tests.fakes.slack import APP_TOKEN, BOT_TOKEN, SlackDouble
from tests.fakes.slack_requests import post_signed, slash_command_body, slash_command_payload
from tests.process import ROOT, BotProcess

SIGNING_SECRET = "test-signing-secret"


def base_env(slack: SlackDouble, tmp_path: Path) -> dict[str, str]:
    return {
        "SLACK_BOT_TOKEN": BOT_TOKEN,
        "SLACK_API_URL": slack.api_url,
        "VEEAM_SA_ADMINS": "U0ADMIN",
        "VEEAM_SA_DB": str(tmp_path / "veeam-sa.db"),
        "VEEAM_SA_ENCRYPTION_KEY": Fernet.generate_key().decode(),
    }


@pytest.fixture
def http_bot(slack: SlackDouble, tmp_path: Path) -> Iterator[BotProcess]:
    bot = BotProcess(
        {**base_env(slack, tmp_path), "SLACK_SIGNING_SECRET": SIGNING_SECRET}, tmp_path
    )
    bot.start()
    yield bot
    bot.kill()


def test_empty_environment_names_the_bot_token(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bot"],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "SLACK_BOT_TOKEN" in lines[0]
    assert "Traceback" not in result.stderr


def test_rejected_bot_token_is_one_line(slack: SlackDouble, tmp_path: Path) -> None:
    env = {
        **base_env(slack, tmp_path),
        "SLACK_SIGNING_SECRET": SIGNING_SECRET,
        "SLACK_BOT_TOKEN": "xoxb-revoked",
    }
    bot = BotProcess(env, tmp_path).start(wait=False)
    assert bot.proc is not None
    assert bot.proc.wait(30) == 1
    assert "Slack rejected SLACK_BOT_TOKEN (invalid_auth)" in bot.log()
    assert "Traceback" not in bot.log()


def test_http_mode_help_signature_and_health(http_bot: BotProcess, slack: SlackDouble) -> None:
    health = httpx.get(f"{http_bot.url}/healthz")
    assert health.status_code == 200
    assert health.json()["database"] == "ok" and health.json()["mode"] == "http"

    url = f"{http_bot.url}/slack/events"
    body = slash_command_body("help", response_url=slack.response_url())
    answer = post_signed(url, body, SIGNING_SECRET)
    assert answer.status_code == 200
    assert "/veeam-sa create NAME" in answer.text

    assert post_signed(url, body, "wrong-secret").status_code == 401
    stale = int(time.time()) - 6 * 60
    assert post_signed(url, body, SIGNING_SECRET, timestamp=stale).status_code == 401
    unsigned = httpx.post(
        url, content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert unsigned.status_code == 401


def test_http_mode_unknown_subcommand_and_empty_text(
    http_bot: BotProcess, slack: SlackDouble
) -> None:
    url = f"{http_bot.url}/slack/events"
    unknown = post_signed(url, slash_command_body("frobnicate"), SIGNING_SECRET)
    assert unknown.status_code == 200
    assert "not a sub-command I know" in unknown.text
    empty = post_signed(url, slash_command_body(""), SIGNING_SECRET)
    assert "/veeam-sa create NAME" in empty.text


def test_healthz_is_503_when_the_database_is_gone(http_bot: BotProcess, tmp_path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        path = tmp_path / f"veeam-sa.db{suffix}"
        if path.exists():
            path.unlink()
    (tmp_path / "veeam-sa.db").mkdir()  # the path is now a directory: no database there
    response = httpx.get(f"{http_bot.url}/healthz")
    assert response.status_code == 503
    assert response.json()["database"] == "unreachable"


def test_socket_mode_help(slack: SlackDouble, tmp_path: Path) -> None:
    bot = BotProcess({**base_env(slack, tmp_path), "SLACK_APP_TOKEN": APP_TOKEN}, tmp_path)
    bot.start()
    try:
        assert slack.socket_connected(timeout=10)
        assert httpx.get(f"{bot.url}/healthz").json()["mode"] == "socket"
        ack = slack.socket_send("slash_commands", slash_command_payload("help"), timeout=10)
        assert "/veeam-sa create NAME" in str(ack.get("payload"))
        # No HTTP events endpoint in Socket Mode
        assert httpx.post(f"{bot.url}/slack/events", content=b"{}").status_code == 404
        assert bot.terminate() == 0
        assert "Traceback" not in bot.log()
    finally:
        bot.kill()
