"""Fan-out helpers: independent calls side by side, on short-lived threads."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")
A = TypeVar("A")
B = TypeVar("B")

FANOUT = 16


def parallel(fn: Callable[[T], R], items: Iterable[T]) -> list[R]:
    """Run `fn` over `items` concurrently (bounded); results in order; first error raised."""
    items = list(items)
    if len(items) <= 1:
        return [fn(item) for item in items]
    with ThreadPoolExecutor(
        max_workers=min(FANOUT, len(items)), thread_name_prefix="veeam-sa-fanout"
    ) as pool:
        return list(pool.map(fn, items))


def both(first: Callable[[], A], second: Callable[[], B]) -> tuple[A, B]:
    """Run two independent calls concurrently."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="veeam-sa-fanout") as pool:
        later = pool.submit(second)
        return first(), later.result()
