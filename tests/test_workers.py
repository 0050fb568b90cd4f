from __future__ import annotations

import threading

from bot.core.workers import Workers


def test_call_later_runs_in_due_order_on_the_pool() -> None:
    workers = Workers(size=2)
    order: list[int] = []
    done = threading.Event()

    def record(n: int) -> None:
        order.append(n)
        if len(order) == 3:
            done.set()

    workers.call_later(0.06, record, 3)
    workers.call_later(0.0, record, 1)
    workers.call_later(0.03, record, 2)
    assert done.wait(5)
    assert order == [1, 2, 3]
    workers.shutdown()


def test_cancelled_jobs_do_not_run_and_threads_stay_bounded() -> None:
    workers = Workers(size=3)
    ran = threading.Event()
    item = workers.call_later(0.01, ran.set)
    item.cancel()
    hits: list[int] = []
    lock = threading.Lock()
    finished = threading.Event()

    def job(n: int) -> None:
        with lock:
            hits.append(n)
            if len(hits) == 500:
                finished.set()

    before = threading.active_count()
    for n in range(500):
        workers.call_later(0.001 * (n % 20), job, n)
    assert finished.wait(10)
    assert threading.active_count() - before <= 3
    assert not ran.is_set()
    workers.shutdown()


def test_a_failing_job_is_logged_not_fatal(caplog) -> None:  # type: ignore[no-untyped-def]
    workers = Workers(size=1)

    def boom() -> None:
        raise RuntimeError("kaput")

    workers.submit(boom).result(timeout=5)
    assert "kaput" in caplog.text
    assert workers.submit(lambda: 42).result(timeout=5) == 42
    workers.shutdown()


def test_a_submitted_job_never_waits_behind_timer_jobs() -> None:
    """Polls fill every worker they may hold and more are due; a command's job still
    starts at once, on the worker kept for it."""
    workers = Workers(size=4)
    assert workers.reserve == 1
    release = threading.Event()
    started: list[int] = []
    lock = threading.Lock()
    three_running = threading.Event()

    def poll(n: int) -> None:
        with lock:
            started.append(n)
            if len(started) == 3:
                three_running.set()
        release.wait(5)

    for n in range(10):
        workers.call_later(0.0, poll, n)
    assert three_running.wait(5)
    command = workers.submit(lambda: "code shown")
    assert command.result(timeout=2) == "code shown"
    with lock:
        assert len(started) == 3  # the other seven polls wait for a poll's worker
    release.set()
    workers.shutdown(wait=True, timeout=5)


def test_submitted_jobs_go_before_queued_timer_jobs() -> None:
    workers = Workers(size=1)
    gate = threading.Event()
    order: list[str] = []
    workers.submit(gate.wait, 5)  # the only worker is busy
    for n in range(3):
        workers.call_later(0.0, order.append, f"poll {n}")
    deadline = threading.Event()
    while workers.pending():  # every poll has left the timer for the queue
        deadline.wait(0.01)
    done = workers.submit(order.append, "command")
    gate.set()
    done.result(timeout=5)
    assert order[0] == "command"
    workers.shutdown(wait=True, timeout=5)


def test_a_reserve_never_takes_every_worker_from_the_polls() -> None:
    workers = Workers(size=2, reserve=5)
    assert workers.reserve == 1
    ran = threading.Event()
    workers.call_later(0.0, ran.set)
    assert ran.wait(5)
    workers.shutdown()
