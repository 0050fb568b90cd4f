"""The worker model: long work never runs on Bolt's listener threads.

Handlers ack and hand work to `Workers`: `submit` runs a job on a fixed set of worker
threads, `call_later` schedules one for later. A single timer thread keeps a heap of due
jobs and feeds them to the workers, so hundreds of pending sign-ins cost one heap entry each
— not a thread or a sleep loop per flow. The thread count is `size + 1`, whatever the load.

Work someone waits for comes first: a job given to `submit` (a command's first step, a
button's) runs before any queued timer job, and timer jobs (the sign-in polls) hold at most
`size - reserve` workers at once, so a new command never queues behind a crowd of polls. A
poll delayed by a busy moment is a little late; the next is timed from its answer.

`shutdown()` first stops the timer (no new polls are started), refuses new jobs, drops
the ones not started yet, and lets the running ones finish: a flow is left between two
steps, in the state its row says, and the next start resumes it from there.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
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


class _Job:
    __slots__ = ("future", "fn", "args", "timed")

    def __init__(
        self, future: Future[Any], fn: Callable[..., Any], args: tuple[Any, ...], timed: bool
    ) -> None:
        self.future = future
        self.fn = fn
        self.args = args
        self.timed = timed


class Workers:
    def __init__(
        self,
        size: int = 8,
        clock: Callable[[], float] = time.monotonic,
        reserve: int | None = None,
    ) -> None:
        self.size = size
        #: Workers that timer jobs never take (a quarter, at least one when there are two;
        #: never all of them, or polls would never run).
        wanted = max(1, size // 4) if reserve is None else reserve
        self.reserve = max(0, min(size - 1, wanted))
        #: Called with (fn, args, exception) when a job raises: the flows use it to end a
        #: flow whose step failed past every handler, instead of leaving it stuck.
        self.on_error: Callable[[Callable[..., Any], tuple[Any, ...], BaseException], None] | None = (
            None
        )
        self._clock = clock
        self._queue_cond = threading.Condition()
        self._now: deque[_Job] = deque()  # submitted: someone is waiting
        self._timed: deque[_Job] = deque()  # from the timer
        self._timed_running = 0
        self._closed = False
        self._threads = [
            threading.Thread(target=self._work, name=f"veeam-sa-worker_{n}", daemon=True)
            for n in range(size)
        ]
        for thread in self._threads:
            thread.start()
        self._heap: list[tuple[float, int, Scheduled]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopping = False
        #: Jobs submitted to the pool and not finished, with a description for the log.
        self._live: dict[Future[Any], str] = {}
        self._live_args: dict[Future[Any], tuple[Any, ...]] = {}
        self._timer = threading.Thread(target=self._run_timer, name="veeam-sa-timer", daemon=True)
        self._timer.start()

    # -- public ---------------------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        """Run `fn(*args)` on the pool; exceptions are logged, not lost.

        Once `shutdown()` has begun the job is not run: the returned future is cancelled
        (the flow it belongs to is still in the database and is resumed on the next start).
        """
        with self._cond:
            stopping = self._stopping
        if not stopping:
            try:
                return self._submit(fn, args, timed=False)
            except RuntimeError:  # the pool shut down between the check and the submit
                pass
        log.info("shutting down: not starting %s", _describe(fn, args))
        future: Future[Any] = Future()
        future.cancel()
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

    def has_work_for(self, key: Any) -> bool:
        """Whether a job whose first argument is `key` (a flow id) is scheduled or running."""
        with self._cond:
            if any(
                not item.cancelled and item.args[:1] == (key,) for _, _, item in self._heap
            ):
                return True
            return any(
                args[:1] == (key,) and not future.done()
                for future, args in self._live_args.items()
            )

    def running(self) -> list[str]:
        """Descriptions of the jobs submitted and not finished yet."""
        with self._cond:
            return [name for future, name in self._live.items() if not future.done()]

    def quiesce(self) -> None:
        """Start nothing new: stop the timer, forget the scheduled jobs and refuse new ones.
        Jobs already handed to the pool go on."""
        with self._cond:
            self._stopping = True
            self._heap.clear()
            self._cond.notify_all()
        if self._timer is not threading.current_thread():
            self._timer.join(timeout=5)

    def shutdown(self, wait: bool = True, timeout: float | None = None) -> list[str]:
        """`quiesce()`, drop the jobs not started, and (when `wait`) let the running ones
        finish, for at most `timeout` seconds. Returns the jobs still running when it gave
        up (empty when everything finished)."""
        self.quiesce()
        with self._queue_cond:
            self._closed = True
            dropped = [*self._now, *self._timed]
            self._now.clear()
            self._timed.clear()
            self._queue_cond.notify_all()
        for job in dropped:
            job.future.cancel()
        if wait:
            with self._cond:
                live = list(self._live)
            wait_futures(live, timeout=timeout)
        return self.running()

    # -- internals ------------------------------------------------------------------------

    def _submit(self, fn: Callable[..., Any], args: tuple[Any, ...], timed: bool) -> Future[Any]:
        future: Future[Any] = Future()
        with self._cond:
            self._live[future] = _describe(fn, args)
            self._live_args[future] = args
        future.add_done_callback(self._forget)
        with self._queue_cond:
            if self._closed:
                future.cancel()
                raise RuntimeError("the workers are shut down")
            (self._timed if timed else self._now).append(_Job(future, fn, args, timed))
            self._queue_cond.notify()
        return future

    def _next(self) -> _Job | None:
        """The next job for a free worker: submitted ones first; a timer job only while
        fewer than `size - reserve` run. None once shut down."""
        with self._queue_cond:
            while True:
                if self._closed:
                    return None
                if self._now:
                    return self._now.popleft()
                if self._timed and self._timed_running < self.size - self.reserve:
                    self._timed_running += 1
                    return self._timed.popleft()
                self._queue_cond.wait()

    def _work(self) -> None:
        while (job := self._next()) is not None:
            try:
                if job.future.set_running_or_notify_cancel():
                    try:
                        result = self._guarded(job.fn, *job.args)
                    except BaseException as exc:  # noqa: BLE001 - handed to the future
                        job.future.set_exception(exc)
                    else:
                        job.future.set_result(result)
            finally:
                if job.timed:
                    with self._queue_cond:
                        self._timed_running -= 1
                        self._queue_cond.notify()

    def _forget(self, future: Future[Any]) -> None:
        with self._cond:
            self._live.pop(future, None)
            self._live_args.pop(future, None)

    def _guarded(self, fn: Callable[..., Any], *args: Any) -> Any:
        try:
            return fn(*args)
        except Exception as exc:
            log.exception("background job %s failed", getattr(fn, "__qualname__", fn))
            if self.on_error is not None:
                try:
                    self.on_error(fn, args, exc)
                except Exception:  # noqa: BLE001 - the error handler must not kill the pool
                    log.exception("the error handler failed too")
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
                    self._submit(item.fn, item.args, timed=True)
                except RuntimeError:  # pool shut down under us
                    return


def _describe(fn: Callable[..., Any], args: tuple[Any, ...]) -> str:
    """`SignInEngine.poll('3f2a…')`: plain ids are shown, anything else only by its type."""
    name = getattr(fn, "__qualname__", None) or type(fn).__name__
    shown = [repr(a)[:40] if isinstance(a, str | int) else type(a).__name__ for a in args]
    return f"{name}({', '.join(shown)})"
