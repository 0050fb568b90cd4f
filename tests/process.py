"""Running the real bot as a child process, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from tests.fakes.microsoft import DEFAULT_SUBSCRIPTIONS
from tests.fakes.slack import SlackDouble
from tests.fakes.slack_requests import post_signed, slash_command_body
from tests.harness import SIGNING_SECRET

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BotProcess:
    """`python -m bot` with a clean environment; stderr goes to a file the test can read."""

    def __init__(self, env: dict[str, str], workdir: Path) -> None:
        self.port = int(env.get("PORT") or free_port())
        self.env = {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(ROOT),
            "PORT": str(self.port),
            **env,
        }
        self.workdir = workdir
        self.log_path = workdir / f"bot-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: bool = True, timeout: float = 20.0) -> BotProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bot"], cwd=self.workdir, env=self.env, stdout=log, stderr=log
        )
        if wait:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"bot exited with {self.proc.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise AssertionError(f"bot not healthy after {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)


# -- helpers the end-to-end tests share -------------------------------------------------------

SUB = DEFAULT_SUBSCRIPTIONS[0][0]


def flow_row(db: Path, name: str) -> dict[str, Any]:
    conn = sqlite3.connect(db)
    conn.row_factory = sqlite3.Row
    try:
        row = conn.execute(
            "SELECT * FROM flows WHERE name = ? ORDER BY created_at DESC", [name]
        ).fetchone()
        return dict(row) if row else {}
    finally:
        conn.close()


def wait_until(predicate: Any, timeout: float = 20.0, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def thread_has(slack: SlackDouble, fragment: str) -> bool:
    return any(fragment in (m.get("text") or "") for m in slack.messages())


def launch(
    env: dict[str, str], tmp_path: Path, procs: list[BotProcess], **extra: str
) -> BotProcess:
    bot = BotProcess({**env, **extra}, tmp_path)
    procs.append(bot)
    return bot.start()


def create(bot: BotProcess, slack: SlackDouble, text: str) -> None:
    body = slash_command_body(text, response_url=slack.response_url())
    answer = post_signed(f"{bot.url}/slack/events", body, SIGNING_SECRET)
    assert answer.status_code == 200 and "Starting" in answer.text, answer.text
