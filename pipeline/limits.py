"""How many requests may be in flight, and how fast they may start.

:class:`AdaptiveLimit` is a semaphore whose size follows the Space's queue:
additive increase while requests succeed without queueing, multiplicative
decrease on overload (queue full, timeouts, server errors). Request rates mean
little to a Gradio queue; the number of jobs we keep in it is what matters.
"""

from __future__ import annotations

import asyncio
from collections import deque

from .clock import LOOP_CLOCK, Clock
from .errors import HTTPStatusError, QueueFullError, ServerError, TimeoutError_


def is_overload(error: BaseException) -> bool:
    """Errors that mean "too much in flight": the adaptive limit is cut on these."""
    if isinstance(error, (QueueFullError, TimeoutError_, ServerError)):
        return True
    return isinstance(error, HTTPStatusError) and error.status in (429, 502, 503, 504)


class AdaptiveLimit:
    """An AIMD-sized semaphore with ``ceiling`` as its upper bound.

    ``adaptive=False`` makes it a plain semaphore of ``ceiling``. ``history``
    records ``(seconds since start, level)`` at every change, for reports.
    """

    def __init__(
        self,
        ceiling: int,
        *,
        adaptive: bool = True,
        decrease: float = 0.5,
        cooldown: float = 1.0,
        max_queue_rank: int = 0,
        clock: Clock = LOOP_CLOCK,
    ) -> None:
        if ceiling < 1:
            raise ValueError("the concurrency ceiling must be at least 1")
        self.ceiling = ceiling
        self.clock = clock
        self.adaptive = adaptive
        self._limit = float(ceiling)
        self._decrease = decrease
        self._cooldown = cooldown
        self._max_rank = max_queue_rank
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._last_cut = float("-inf")
        self._start: float | None = None
        self.cuts = 0
        self.lowest = ceiling
        self.history: list[tuple[float, int]] = []

    @property
    def level(self) -> int:
        """Requests allowed in flight right now."""
        return max(1, int(self._limit))

    @property
    def in_use(self) -> int:
        return self._in_use

    def _now(self) -> float:
        now = self.clock.now()
        if self._start is None:
            self._start = now
        return now

    def _record(self, before: int) -> None:
        level = self.level
        if level != before:
            self.lowest = min(self.lowest, level)
            self.history.append((round(self._now() - (self._start or 0.0), 3), level))
            self._wake()

    async def acquire(self) -> None:
        if self._start is None:
            self._now()
        while self._in_use >= self.level:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            except asyncio.CancelledError:
                if waiter.done() and not waiter.cancelled():
                    self._wake()  # pass the wake-up on to the next waiter
                raise
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        self._in_use += 1

    def release(self) -> None:
        self._in_use -= 1
        self._wake()

    def _wake(self) -> None:
        free = self.level - self._in_use
        while free > 0 and self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                free -= 1

    async def __aenter__(self) -> AdaptiveLimit:
        await self.acquire()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()

    def adapt(self, error: BaseException | None, queue_rank: int | None = None) -> None:
        """Follow how a request ended: cut on an overload error, grow on an answer
        (``error`` None) that did not queue; other errors leave the level alone."""
        if error is None:
            self.on_success(queue_rank)
        elif is_overload(error):
            self.on_overload()

    def on_success(self, queue_rank: int | None) -> None:
        """A request succeeded; grow by about one per window if it did not queue."""
        if not self.adaptive or self._limit >= self.ceiling:
            return
        if queue_rank is not None and queue_rank > self._max_rank:
            return  # the Space is queueing us already: more in flight would only wait
        before = self.level
        self._limit = min(float(self.ceiling), self._limit + 1.0 / self._limit)
        self._record(before)

    def on_overload(self) -> None:
        """The Space pushed back (503, timeout, server error): cut, at most once per cooldown."""
        if not self.adaptive:
            return
        now = self._now()
        if now - self._last_cut < self._cooldown:
            return  # one cut per burst: failures of one window share a cause
        self._last_cut = now
        before = self.level
        self._limit = max(1.0, self._limit * self._decrease)
        self.cuts += 1
        self._record(before)


class RateLimiter:
    """Spaces request starts at least ``1/rate`` seconds apart (None: no cap)."""

    def __init__(self, rate: float | None, clock: Clock = LOOP_CLOCK) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._next: float | None = None
        self.clock = clock

    async def wait(self) -> None:
        if not self._interval:
            return
        now = self.clock.now()
        start = now if self._next is None else max(now, self._next)
        self._next = start + self._interval
        if start > now:
            await self.clock.sleep(start - now)
