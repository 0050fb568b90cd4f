"""Fan-out helpers: independent calls side by side.

The calls run on a process-wide set of helper threads that are kept between fan-outs (a
thread started for every fan-out costs more than the request it carries once the machine
is busy). A call never waits in a queue: it goes to an idle helper thread, or a new one up
to `LIMIT`, or else runs in the caller's own thread. So a fan-out inside a fan-out can
never deadlock, and with every helper busy the work still gets done, one call after the
other.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")
A = TypeVar("A")
B = TypeVar("B")

#: At most this many calls of one `parallel` at a time.
FANOUT = 16
#: At most this many helper threads in the process.
LIMIT = 64
#: A helper thread idle this long ends: long enough to carry one flow's fan-outs from step
#: to step, short enough that a burst of flows leaves no crowd of idle threads behind.
IDLE_SECONDS = 5.0


class _Helper:
    __slots__ = ("pool", "task", "wake")

    def __init__(self, pool: _Pool) -> None:
        self.pool = pool
        self.task: Callable[[], None] | None = None
        self.wake = threading.Event()


class _Pool:
    def __init__(self, limit: int, idle_seconds: float) -> None:
        self.limit = limit
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._idle: list[_Helper] = []
        self._count = 0
        self._names = itertools.count(1)

    @property
    def threads(self) -> int:
        with self._lock:
            return self._count

    def run(self, task: Callable[[], None]) -> None:
        """Start `task` on a helper thread, or run it here when none can be had."""
        with self._lock:
            helper = self._idle.pop() if self._idle else None
            spawn = helper is None and self._count < self.limit
            if spawn:
                self._count += 1
        if helper is not None:
            helper.task = task
            helper.wake.set()
            return
        if not spawn:
            task()
            return
        helper = _Helper(self)
        helper.task = task
        try:
            threading.Thread(
                target=self._serve,
                args=(helper,),
                name=f"veeam-sa-fanout-{next(self._names)}",
                daemon=True,
            ).start()
        except RuntimeError:  # no thread to be had: do it here
            with self._lock:
                self._count -= 1
            task()

    def _serve(self, helper: _Helper) -> None:
        while True:
            task, helper.task = helper.task, None
            if task is not None:
                task()
            with self._lock:
                helper.wake.clear()
                self._idle.append(helper)
            if helper.wake.wait(self.idle_seconds):
                continue
            with self._lock:
                if helper.wake.is_set():  # handed a task just as it timed out
                    continue
                self._idle.remove(helper)
                self._count -= 1
                return


_POOL = _Pool(LIMIT, IDLE_SECONDS)


def _submit(fn: Callable[[], R]) -> Future[R]:
    future: Future[R] = Future()

    def task() -> None:
        try:
            result = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting caller
            future.set_exception(exc)
        else:
            future.set_result(result)

    _POOL.run(task)
    return future


def parallel(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """Run `fn` over `items` concurrently (at most `FANOUT` at a time); results in order;
    every item is run, then the error of the first failed item (in order) is raised."""
    items = list(items)
    if len(items) <= 1:
        return [fn(item) for item in items]
    results: list[Any] = [None] * len(items)
    errors: dict[int, BaseException] = {}
    cursor = itertools.count()
    lock = threading.Lock()

    def lane() -> None:
        while True:
            with lock:
                index = next(cursor)
            if index >= len(items):
                return
            try:
                results[index] = fn(items[index])
            except BaseException as exc:  # noqa: BLE001 - raised below, in order
                errors[index] = exc

    others = [_submit(lane) for _ in range(min(FANOUT, len(items)) - 1)]
    lane()
    for other in others:
        other.result()
    if errors:
        raise errors[min(errors)]
    return results


def both(first: Callable[[], A], second: Callable[[], B]) -> tuple[A, B]:
    """Run two independent calls concurrently; the first one's error wins."""
    later = _submit(second)
    try:
        result = first()
    except BaseException:
        later.exception()  # wait for it to end; the first call's error is the one raised
        raise
    return result, later.result()


def once(fn: Callable[[], R]) -> Callable[[], R]:
    """`fn`, called at most once however many threads ask: the first caller runs it, the
    others wait for its result (or its error, raised to each of them)."""
    lock = threading.Lock()
    outcome: list[tuple[bool, Any]] = []

    def call() -> R:
        with lock:
            if not outcome:
                try:
                    outcome.append((True, fn()))
                except Exception as exc:  # noqa: BLE001 - handed to every caller
                    outcome.append((False, exc))
        ok, value = outcome[0]
        if not ok:
            raise value
        return value

    return call
