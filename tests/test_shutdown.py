"""SIGTERM: the real process finishes the step in progress, closes Slack, exits 0 within
the bound, and the next start resumes the flow it left; plus the worker pool's part."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

from bot.core.workers import Workers
from bot.runtime import STOP_TIMEOUT_S
from tests.fakes.microsoft import MicrosoftDouble
from tests.fakes.slack import APP_TOKEN, SlackDouble
from tests.fakes.slack_requests import slash_command_payload
from tests.process import SUB, BotProcess, create, flow_row, launch, thread_has, wait_until

TOKEN_PATH = r"/oauth2/v2\.0/token$"


def polls(ms: MicrosoftDouble) -> int:
    return len(ms.requests_to("login", "POST", TOKEN_PATH))


def poll_in_flight(ms: MicrosoftDouble, latency: float) -> None:
    """Make Microsoft slow, and wait until the bot's next poll is on its way."""
    seen = polls(ms)
    ms.latency = latency
    wait_until(lambda: polls(ms) > seen, what="a poll in flight")


def test_sigterm_finishes_the_poll_in_flight_and_the_sign_in_resumes(
    env: dict[str, str],
    slack: SlackDouble,
    ms: MicrosoftDouble,
    tmp_path: Path,
    procs: list[BotProcess],
) -> None:
    db = Path(env["VEEAM_SA_DB"])
    first = launch(env, tmp_path, procs)
    create(first, slack, f"create prod --subscription {SUB}")
    wait_until(
        lambda: flow_row(db, "prod").get("state") == "awaiting_sign_in", what="sign-in to start"
    )
    poll_in_flight(ms, latency=3.0)

    started = time.monotonic()
    assert first.terminate(timeout=STOP_TIMEOUT_S + 5) == 0
    took = time.monotonic() - started
    assert 2.0 <= took < STOP_TIMEOUT_S, f"stopped in {took:.1f}s"  # it waited for the poll
    log = first.log()
    assert "received SIGTERM, shutting down" in log
    assert "letting 1 running job(s) finish: SignInEngine.poll(" in log
    assert "veeam_sa: stopped" in log
    assert "without waiting for" not in log
    assert "Traceback" not in log
    row = flow_row(db, "prod")
    assert row["state"] == "awaiting_sign_in" and row["device_flow"]  # still resumable

    ms.latency = 0.0
    second = launch(env, tmp_path, procs)
    wait_until(lambda: thread_has(slack, "still waiting for the sign-in"), what="resume note")
    ms.approve(ms.flows[0].user_code)
    wait_until(
        lambda: flow_row(db, "prod").get("state") == "done", timeout=30, what="creation to finish"
    )
    assert len(ms.flows) == 1  # the same device code, polled again
    assert len(ms.applications) == 1
    assert second.terminate() == 0


def test_sigterm_when_idle_is_quick(
    env: dict[str, str], tmp_path: Path, procs: list[BotProcess]
) -> None:
    bot = launch(env, tmp_path, procs)
    started = time.monotonic()
    assert bot.terminate() == 0
    assert time.monotonic() - started < 5
    assert "veeam_sa: stopped" in bot.log()


def test_sigterm_in_socket_mode_closes_the_websocket_before_the_work_ends(
    env: dict[str, str],
    slack: SlackDouble,
    ms: MicrosoftDouble,
    tmp_path: Path,
    procs: list[BotProcess],
) -> None:
    db = Path(env["VEEAM_SA_DB"])
    bot = launch(env, tmp_path, procs, SLACK_APP_TOKEN=APP_TOKEN)
    assert slack.socket_connected(timeout=10)
    ack = slack.socket_send(
        "slash_commands",
        slash_command_payload(
            f"create prod --subscription {SUB}", response_url=slack.response_url()
        ),
        timeout=10,
    )
    assert "Starting" in str(ack.get("payload")), ack
    wait_until(
        lambda: flow_row(db, "prod").get("state") == "awaiting_sign_in", what="sign-in to start"
    )
    poll_in_flight(ms, latency=8.0)

    assert bot.proc is not None
    bot.proc.send_signal(signal.SIGTERM)
    # Slack stops sending work at once, while the poll in flight still finishes.
    wait_until(lambda: not slack.socket_connected(timeout=0), timeout=7, what="websocket closed")
    assert bot.proc.poll() is None, "the process should still be finishing the poll"
    assert bot.proc.wait(STOP_TIMEOUT_S + 5) == 0
    assert slack.socket_connection_count == 1  # and it did not reconnect while stopping
    log = bot.log()
    assert "closed the Socket Mode connection" in log
    assert "veeam_sa: stopped" in log
    assert "Traceback" not in log
    assert flow_row(db, "prod")["state"] == "awaiting_sign_in"


# -- the worker pool's part ----------------------------------------------------------------


def test_shutdown_stops_the_timer_first_and_lets_running_steps_finish() -> None:
    workers = Workers(size=2)
    step_started, release = threading.Event(), threading.Event()
    finished: list[str] = []

    def step(flow_id: str) -> None:
        step_started.set()
        release.wait(5)
        finished.append(flow_id)
        # A step that ends by scheduling its next poll, as a pending sign-in does.
        assert workers.call_later(0.0, finished.append, "next poll").cancelled

    later = threading.Event()
    workers.submit(step, "f1")
    assert step_started.wait(5)
    workers.call_later(0.05, later.set)
    workers.quiesce()
    assert workers.submit(later.set).cancelled()  # nothing new starts
    threading.Timer(0.2, release.set).start()
    assert workers.shutdown(wait=True, timeout=5) == []
    assert finished == ["f1"]
    time.sleep(0.1)
    assert not later.is_set()


def test_shutdown_gives_up_after_the_timeout_and_names_what_still_runs() -> None:
    workers = Workers(size=1)
    release = threading.Event()
    started = threading.Event()

    def provision(flow_id: str) -> None:
        started.set()
        release.wait(5)

    workers.submit(provision, "abc123")
    assert started.wait(5)
    queued = workers.submit(provision, "queued")  # waits for the only thread
    begun = time.monotonic()
    left = workers.shutdown(wait=True, timeout=0.3)
    assert time.monotonic() - begun < 2
    assert len(left) == 1 and left[0].endswith("provision('abc123')")
    assert queued.cancelled()  # dropped, never started
    release.set()
