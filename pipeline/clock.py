"""The time the batch core waits on: the event loop's by default, a virtual one in tests.

The endpoint pool, the adaptive limit, the rate limiter and the runner read the time
and sleep only through a :class:`Clock`, so a test can drive their waits (cooldowns,
outages, rates, deadlines) by advancing a clock instead of sleeping and timing.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

__all__ = ["LOOP_CLOCK", "Clock", "LoopClock", "wait_event"]


class Clock(Protocol):
    """What the batch core asks of time."""

    def now(self) -> float:
        """Seconds on a monotonic scale (only differences mean anything)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return once ``seconds`` have passed on this clock."""
        ...


class LoopClock:
    """The running event loop's time and :func:`asyncio.sleep`."""

    def now(self) -> float:
        return asyncio.get_running_loop().time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


LOOP_CLOCK: Clock = LoopClock()


async def wait_event(event: asyncio.Event, timeout: float, clock: Clock) -> bool:
    """Wait until ``event`` is set or ``timeout`` seconds pass on ``clock``; True if set."""
    if event.is_set():
        return True
    if isinstance(clock, LoopClock):  # the loop's own timer: no second task
        try:
            await asyncio.wait_for(event.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True
    waiter = asyncio.ensure_future(event.wait())
    timer = asyncio.ensure_future(clock.sleep(timeout))
    try:
        await asyncio.wait((waiter, timer), return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
        timer.cancel()
        await asyncio.gather(waiter, timer, return_exceptions=True)
    return event.is_set()
