"""The worker model: long work never runs on Bolt's listener threads.

Handlers ack and hand work to `Workers`: `submit` runs a job on a bounded thread pool,
`call_later` schedules one for later. A single timer thread keeps a heap of due jobs
and feeds them to the pool, so hundreds of pending sign-ins cost one heap entry each —
not a thread or a sleep loop per flow. The thread count is `size + 1`, whatever the load.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

log = logging.getLogger(__name__)


class Scheduled:
    """A job waiting in the timer heap; `cancel()` drops it if it has not started."""

    __slots__ = ("due", "fn", "args", "cancelled")

    def __init__(self, due: float, fn: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self.due = due
        self.fn = fn
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class Workers:
    def __init__(self, size: int = 8, clock: Callable[[], float] = time.monotonic) -> None:
        self.size = size
        self._clock = clock
        self._pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="veeam-sa-worker")
        self._heap: list[tuple[float, int, Scheduled]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        self._timer = threading.Thread(target=self._run_timer, name="veeam-sa-timer", daemon=True)
        self._timer.start()

    # -- public ---------------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run `fn(*args)` on the pool; exceptions are logged, not lost."""
        future = self._pool.submit(self._guarded, fn, *args)
        return future

    def call_later(self, delay: float, fn: Callable[..., Any], *args: Any) -> Scheduled:
        item = Scheduled(self._clock() + max(0.0, delay), fn, args)
        with self._cond:
            if self._stopping:
                item.cancelled = True
                return item
            heapq.heappush(self._heap, (item.due, next(self._seq), item))
            self._cond.notify()
        return item

    def pending(self) -> int:
        with self._cond:
            return sum(1 for _, _, item in self._heap if not item.cancelled)

    def shutdown(self, wait: bool = True) -> None:
        """Stop taking scheduled jobs; let running ones finish when `wait`."""
        with self._cond:
            self._stopping = True
            self._heap.clear()
            self._cond.notify_all()
        self._timer.join(timeout=5)
        self._pool.shutdown(wait=wait, cancel_futures=True)

    # -- internals ------------------------------------------------------------------------

    @staticmethod
    def _guarded(fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception:
            log.exception("background job %s failed", getattr(fn, "__qualname__", fn))
            return None

    def _run_timer(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and (not self._heap or self._heap[0][0] > self._clock()):
                    timeout = self._heap[0][0] - self._clock() if self._heap else None
                    self._cond.wait(timeout)
                if self._stopping:
                    return
                _, _, item = heapq.heappop(self._heap)
            if not item.cancelled:
                try:
                    self._pool.submit(self._guarded, item.fn, *item.args)
                except RuntimeError:  # pool shut down under us
                    return
