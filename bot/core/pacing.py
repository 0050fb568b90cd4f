"""Pacing for background work that must not burst an outside service.

`RateLimiter` spaces calls at least `1 / rate` seconds apart (no bursts: a strict
schedule, not a bucket that saves up), across threads. The clock and sleep are passed in,
so tests and benchmarks can drive it without waiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    """At most `rate` acquisitions per second; `acquire()` sleeps until the next slot."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.gap = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._next = float("-inf")
        self._lock = threading.Lock()
        #: How many slots were handed out (a benchmark divides it by the time taken).
        self.acquired = 0

    def acquire(self) -> None:
        with self._lock:
            now = self._clock()
            slot = max(now, self._next)
            self._next = slot + self.gap
            self.acquired += 1
        if slot > now:
            self._sleep(slot - now)

    def hold(self, seconds: float) -> None:
        """Nothing may be sent for `seconds` from now (a service answered 429 with
        `Retry-After`): the next slots move past it."""
        with self._lock:
            self._next = max(self._next, self._clock() + seconds)
