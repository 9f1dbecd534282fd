"""Time as an injected dependency, so TTLs, backoff and retries are tested without sleeping.

`Scheduler` is the seam; `LoopScheduler` is the real one (asyncio), `FakeScheduler` the one
tests drive by hand with `advance()`.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from typing import Protocol


class TimerHandle(Protocol):
    """What `call_later` returns: something that can be cancelled."""

    def cancel(self) -> None: ...


class Scheduler(Protocol):
    """A monotonic clock plus delayed callbacks."""

    def now(self) -> float: ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle: ...


class LoopScheduler:
    """The production scheduler: the running asyncio loop's clock and timers."""

    def now(self) -> float:
        return time.monotonic()

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback)


class _FakeTimer:
    __slots__ = ("callback", "cancelled", "when")

    def __init__(self, when: float, callback: Callable[[], None]) -> None:
        self.when = when
        self.callback = callback
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


class FakeScheduler:
    """A scheduler whose time moves only when a test calls `advance`."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._heap: list[tuple[float, int, _FakeTimer]] = []
        self._order = itertools.count()

    def now(self) -> float:
        return self._now

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        timer = _FakeTimer(self._now + max(0.0, delay), callback)
        heapq.heappush(self._heap, (timer.when, next(self._order), timer))
        return timer

    @property
    def pending(self) -> int:
        """How many timers are still due to fire."""
        return sum(1 for _, _, t in self._heap if not t.cancelled)

    def due_in(self) -> list[float]:
        """Seconds until each pending timer fires, soonest first (which wait is running)."""
        return sorted(t.when - self._now for _, _, t in self._heap if not t.cancelled)

    def advance(self, seconds: float) -> None:
        """Move time forward, firing every due timer in order (including ones they schedule)."""
        target = self._now + seconds
        while self._heap and self._heap[0][0] <= target:
            when, _, timer = heapq.heappop(self._heap)
            self._now = max(self._now, when)
            if not timer.cancelled:
                timer.callback()
        self._now = target


async def sleep(scheduler: Scheduler, delay: float) -> None:
    """Wait `delay` seconds of the scheduler's time (a fake clock's `advance` ends it)."""
    if delay <= 0:
        return
    future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake() -> None:
        if not future.done():
            future.set_result(None)

    timer = scheduler.call_later(delay, wake)
    try:
        await future
    finally:
        timer.cancel()
