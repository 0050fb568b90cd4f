"""The fan-out helpers: side by side, results in order, errors in order, no deadlock."""

from __future__ import annotations

import threading

import pytest

from bot.core import fanout


def test_both_runs_its_calls_side_by_side() -> None:
    a, b = threading.Event(), threading.Event()

    def first() -> str:
        a.set()
        assert b.wait(5), "the second call never ran beside the first"
        return "first"

    def second() -> str:
        b.set()
        assert a.wait(5), "the first call never ran beside the second"
        return "second"

    assert fanout.both(first, second) == ("first", "second")


def test_parallel_keeps_order_and_runs_every_item() -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def square(n: int) -> int:
        with lock:
            seen.append(n)
        return n * n

    assert fanout.parallel(square, range(40)) == [n * n for n in range(40)]
    assert sorted(seen) == list(range(40))


def test_parallel_raises_the_first_failed_item_after_running_all() -> None:
    ran: list[int] = []

    def fail_odd(n: int) -> int:
        ran.append(n)
        if n % 2:
            raise ValueError(f"item {n}")
        return n

    with pytest.raises(ValueError, match="item 1"):
        fanout.parallel(fail_odd, range(10))
    assert sorted(ran) == list(range(10))


def test_both_raises_the_first_calls_error_after_the_second_ends() -> None:
    ended = threading.Event()

    def second() -> None:
        ended.set()

    def first() -> None:
        raise KeyError("first")

    with pytest.raises(KeyError):
        fanout.both(first, second)
    assert ended.is_set()


def test_nested_fanouts_past_the_thread_limit_still_finish(monkeypatch: pytest.MonkeyPatch) -> None:
    # Two helper threads for the whole process, fan-outs three deep: with a queue this
    # would deadlock; calls that find no helper run in their caller's thread instead.
    pool = fanout._Pool(limit=2, idle_seconds=1.0)
    monkeypatch.setattr(fanout, "_POOL", pool)

    def inner(n: int) -> int:
        return sum(fanout.parallel(lambda m: m + n, range(5)))

    def outer(n: int) -> int:
        left, right = fanout.both(lambda: inner(n), lambda: inner(n + 1))
        return left + right

    assert fanout.parallel(outer, range(6)) == [
        sum(m + n for m in range(5)) + sum(m + n + 1 for m in range(5)) for n in range(6)
    ]
    assert pool.threads <= 2


def test_helper_threads_are_kept_and_reused() -> None:
    pool = fanout._Pool(limit=4, idle_seconds=30.0)
    names: list[str] = []
    for _ in range(5):
        done = threading.Event()

        def task(done: threading.Event = done) -> None:
            names.append(threading.current_thread().name)
            done.set()

        pool.run(task)
        assert done.wait(5)
        # wait until the helper is idle again before handing out the next task
        for _ in range(500):
            if pool._idle:
                break
            threading.Event().wait(0.01)
    assert pool.threads == 1
    assert len(set(names)) == 1 and names[0].startswith("veeam-sa-fanout-")


def test_once_runs_its_call_once_for_every_caller_and_shares_its_error() -> None:
    calls: list[int] = []
    gate = threading.Event()

    def slow() -> int:
        calls.append(1)
        gate.wait(5)
        return 42

    shared = fanout.once(slow)
    first, second = [], []
    threads = [
        threading.Thread(target=lambda: first.append(shared())),
        threading.Thread(target=lambda: second.append(shared())),
    ]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(5)
    assert first == second == [42] and calls == [1]

    def broken() -> int:
        calls.append(2)
        raise RuntimeError("no")

    failing = fanout.once(broken)
    for _ in range(2):
        with pytest.raises(RuntimeError):
            failing()
    assert calls == [1, 2]
