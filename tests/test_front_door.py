"""The HTTP front door of the real bot process: bursts, slow clients, descriptors, malformed
and replayed requests, and a `cancel` that acks before it works."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from bot.runtime import STOP_TIMEOUT_S
from tests.fakes.microsoft import MicrosoftDouble
from tests.fakes.slack import SlackDouble
from tests.fakes.slack_requests import post_signed, sign, slash_command_body
from tests.harness import SIGNING_SECRET
from tests.process import SUB, BotProcess, flow_row, launch, wait_until


def fd_count(bot: BotProcess) -> int:
    assert bot.proc is not None
    return len(os.listdir(f"/proc/{bot.proc.pid}/fd"))


def signed_request(bot: BotProcess, body: str, headers: dict[str, str]) -> bytes:
    """A raw HTTP/1.1 POST to /slack/events."""
    raw = body.encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (
        f"POST /slack/events HTTP/1.1\r\nHost: 127.0.0.1:{bot.port}\r\n{head}"
        f"Content-Length: {len(raw)}\r\nConnection: close\r\n\r\n"
    ).encode() + raw


def read_response(sock: socket.socket) -> tuple[int, bytes]:
    sock.settimeout(15)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def test_two_hundred_simultaneous_signed_requests_are_all_answered(
    env: dict[str, str], tmp_path: Path, procs: list[BotProcess]
) -> None:
    bot = launch(env, tmp_path, procs)
    count = 200
    requests = []
    for n in range(count):
        body = slash_command_body("help", trigger_id=f"burst-{n}")
        requests.append(signed_request(bot, body, sign(body, SIGNING_SECRET)))
    barrier = threading.Barrier(count)
    results: list[tuple[int, bytes] | Exception] = [ValueError("not run")] * count

    def one(n: int) -> None:
        try:
            barrier.wait(10)
            with socket.create_connection(("127.0.0.1", bot.port), timeout=15) as sock:
                sock.sendall(requests[n])
                results[n] = read_response(sock)
        except Exception as exc:  # recorded and asserted below
            results[n] = exc

    threads = [threading.Thread(target=one, args=(n,)) for n in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    failures = [r for r in results if isinstance(r, Exception) or r[0] != 200]
    assert failures == [], failures[:5]
    assert all(b"/veeam-sa create NAME" in r[1] for r in results if not isinstance(r, Exception))


def test_slow_clients_hold_neither_the_door_nor_shutdown(
    env: dict[str, str], slack: SlackDouble, tmp_path: Path, procs: list[BotProcess]
) -> None:
    bot = launch(env, tmp_path, procs)
    held = []
    try:
        for _ in range(300):
            sock = socket.create_connection(("127.0.0.1", bot.port), timeout=5)
            sock.sendall(b"POST /slack/events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
            held.append(sock)
        body = slash_command_body("help", response_url=slack.response_url())
        answer = post_signed(f"{bot.url}/slack/events", body, SIGNING_SECRET)
        assert answer.status_code == 200 and "/veeam-sa create NAME" in answer.text
        assert httpx.get(f"{bot.url}/healthz", timeout=5).status_code == 200
        assert bot.proc is not None
        threads = len(os.listdir(f"/proc/{bot.proc.pid}/task"))
        assert threads < 60, threads  # a pool, not a thread per connection

        started = time.monotonic()
        bot.proc.send_signal(signal.SIGTERM)
        assert bot.proc.wait(STOP_TIMEOUT_S + 5) == 0
        took = time.monotonic() - started
        assert took < 5, took  # as when idle: the held connections are closed, not awaited
    finally:
        for sock in held:
            sock.close()
    assert "veeam_sa: stopped" in bot.log()
    assert "Traceback" not in bot.log()


def test_descriptors_stay_flat_over_thirty_thousand_health_checks(
    env: dict[str, str], tmp_path: Path, procs: list[BotProcess]
) -> None:
    bot = launch(env, tmp_path, procs)
    request = f"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1:{bot.port}\r\n\r\n".encode()

    def burst(total: int, per_connection: int = 500, batch: int = 50) -> None:
        """`total` requests, pipelined `batch` at a time, a new connection every
        `per_connection` (so connections come and go too); every answer must be 200."""
        done = 0
        while done < total:
            with socket.create_connection(("127.0.0.1", bot.port), timeout=10) as sock:
                buffer = b""
                for _ in range(per_connection // batch):
                    sock.sendall(request * batch)
                    answered = 0
                    while answered < batch:
                        head_end = buffer.find(b"\r\n\r\n")
                        if head_end < 0:
                            chunk = sock.recv(1 << 16)
                            assert chunk, "connection closed"
                            buffer += chunk
                            continue
                        head = buffer[:head_end].decode()
                        assert head.startswith("HTTP/1.1 200"), head
                        length = int(
                            next(
                                line.split(":", 1)[1]
                                for line in head.split("\r\n")
                                if line.lower().startswith("content-length:")
                            )
                        )
                        end = head_end + 4 + length
                        while len(buffer) < end:
                            buffer += sock.recv(1 << 16)
                        buffer = buffer[end:]
                        answered += 1
                    done += batch

    burst(2000)  # warm: the pool's threads and their database connections exist
    before = fd_count(bot)
    burst(30_000)
    after = fd_count(bot)
    assert after - before <= 3, (before, after)
    assert httpx.get(f"{bot.url}/healthz").status_code == 200


@pytest.mark.parametrize(
    ("body", "timestamp", "signed", "status"),
    [
        ("payload={bad", None, False, 401),
        ("payload={bad", None, True, 400),
        ("payload=" + json.dumps([1, 2]), None, True, 400),
        ("payload=" + json.dumps("text"), None, True, 400),
        ("payload=" + json.dumps([1, 2]), None, False, 401),
        ("command=%2Fveeam-sa&text=help", "abc", True, 401),
        ("command=%2Fveeam-sa&text=help", "1.5", True, 401),
        ("command=%2Fveeam-sa&text=help", "\u0661\u0662", True, 401),
        ("command=%2Fveeam-sa&text=help", " 1", True, 401),
        ("command=%2Fveeam-sa&text=help", "9" * 40, True, 401),
    ],
)
def test_malformed_requests_get_an_answer_and_one_log_line(
    http_json_bot: BotProcess, body: str, timestamp: str | None, signed: bool, status: int
) -> None:
    bot = http_json_bot
    headers = sign(body, SIGNING_SECRET if signed else "someone-else")
    if timestamp is not None:
        headers["X-Slack-Request-Timestamp"] = timestamp
    lines_before = len(bot.log().splitlines())
    conn = http.client.HTTPConnection("127.0.0.1", bot.port, timeout=10)
    conn.putrequest("POST", "/slack/events")
    for name, value in headers.items():
        conn.putheader(name, value.encode("utf-8"))
    raw = body.encode()
    conn.putheader("Content-Length", str(len(raw)))
    conn.endheaders(raw)
    answer = conn.getresponse()
    assert answer.status == status
    assert json.loads(answer.read())["error"]
    conn.close()
    new = bot.log().splitlines()[lines_before:]
    assert len(new) == 1, new
    entry = json.loads(new[0])
    assert entry["level"] == "WARNING" and "refused a request" in entry["message"]
    assert "exception" not in entry
    assert "Traceback" not in bot.log()


@pytest.fixture(scope="module")
def http_json_bot(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[BotProcess]:
    from cryptography.fernet import Fernet

    from tests.fakes.slack import BOT_TOKEN

    tmp = tmp_path_factory.mktemp("json-bot")
    with SlackDouble() as slack:
        bot = BotProcess(
            {
                "SLACK_BOT_TOKEN": BOT_TOKEN,
                "SLACK_SIGNING_SECRET": SIGNING_SECRET,
                "SLACK_API_URL": slack.api_url,
                "VEEAM_SA_ADMINS": "U0ADMIN",
                "VEEAM_SA_DB": str(tmp / "veeam-sa.db"),
                "VEEAM_SA_ENCRYPTION_KEY": Fernet.generate_key().decode(),
                "VEEAM_SA_LOG_FORMAT": "json",
            },
            tmp,
        )
        bot.start()
        # the start-up expiry scan logs its own lines: let them land before any test counts
        wait_until(
            lambda: "run_scan" in bot.log() and "executed successfully" in bot.log(),
            20,
            "the start-up expiry scan",
        )
        try:
            yield bot
        finally:
            bot.kill()


def test_a_replayed_signed_create_starts_nothing(
    env: dict[str, str],
    slack: SlackDouble,
    ms: MicrosoftDouble,
    tmp_path: Path,
    procs: list[BotProcess],
) -> None:
    db = Path(env["VEEAM_SA_DB"])
    bot = launch(env, tmp_path, procs)
    url = f"{bot.url}/slack/events"
    body = slash_command_body(f"create prod --subscription {SUB}", response_url=slack.response_url())
    headers = sign(body, SIGNING_SECRET)
    first = httpx.post(url, content=body, headers=headers)
    assert first.status_code == 200 and "Starting" in first.text
    wait_until(lambda: flow_row(db, "prod").get("state") == "awaiting_sign_in", what="sign-in")
    cancel = slash_command_body("cancel", response_url=slack.response_url())
    assert "Cancelling" in post_signed(url, cancel, SIGNING_SECRET).text
    wait_until(lambda: flow_row(db, "prod").get("state") == "cancelled", what="cancel")

    replay = httpx.post(url, content=body, headers=headers)
    assert replay.status_code == 200 and replay.text == ""  # what Slack's retry would expect
    time.sleep(0.5)  # a second flow, if one were started, would be written by now
    assert flow_row(db, "prod")["state"] == "cancelled"
    assert len(ms.flows) == 1
    assert "ignored a Slack request already answered" in bot.log()


def test_cancel_acks_in_time_with_ten_flows_and_a_slow_slack(
    env: dict[str, str],
    slack: SlackDouble,
    ms: MicrosoftDouble,
    tmp_path: Path,
    procs: list[BotProcess],
) -> None:
    db = Path(env["VEEAM_SA_DB"])
    bot = launch(env, tmp_path, procs)
    url = f"{bot.url}/slack/events"
    names = [f"acct-{n}" for n in range(10)]
    for name in names:
        body = slash_command_body(f"create {name} --subscription {SUB}", response_url=slack.response_url())
        assert "Starting" in post_signed(url, body, SIGNING_SECRET).text
    for name in names:
        wait_until(
            lambda name=name: flow_row(db, name).get("state") == "awaiting_sign_in", what=name
        )
    slack.latency = 0.3
    mark = slack.mark()
    started = time.monotonic()
    answer = post_signed(url, slash_command_body("cancel", response_url=slack.response_url()), SIGNING_SECRET)
    took = time.monotonic() - started
    assert answer.status_code == 200 and "Cancelling" in answer.text, answer.text
    assert took < 3.0, took
    told = slack.wait_for(
        lambda c: c.method == "response_url" and "Cancelled:" in json.dumps(c.args),
        timeout=30,
        after=mark,
    )
    assert all(f"`{name}`" in told.args["text"] for name in names)
    assert all(flow_row(db, name)["state"] == "cancelled" for name in names)
