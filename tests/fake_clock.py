"""A virtual clock for the batch core (:class:`pipeline.clock.Clock`): time moves when a test says.

``sleep`` parks the caller on a future until the clock is advanced past its wake-up
time; ``now`` is the virtual time. A test drives it three ways:

* :meth:`FakeClock.advance` moves time forward, waking the sleepers due on the way in
  order (each at its own time) and letting the woken tasks run;
* :meth:`FakeClock.run` runs an awaitable to its end, jumping time to the next wake-up
  whenever every task waits: a deadlock (nothing ready, nothing asleep) fails at once
  instead of hanging. For code without I/O (the pool, the limits);
* :meth:`FakeClock.autojump`, for code that also waits on sockets: a background task
  that jumps to the next wake-up whenever a sleeper is parked.

Time never passes by itself, so an assertion on ``now()`` is exact, whatever the load
of the machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

T = TypeVar("T")


async def settle(rounds: int = 20) -> None:
    """Let every ready task run a few steps (no time passes)."""
    for _ in range(rounds):
        await asyncio.sleep(0)


class FakeClock:
    """Virtual seconds; see the module docstring."""

    def __init__(self, start: float = 1000.0) -> None:
        self._now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()
        self.sleeps: list[float] = []
        """Every positive ``sleep`` asked for, in order."""

    def now(self) -> float:
        return self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        self.sleeps.append(seconds)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self._now + seconds, next(self._order), waiter))
        await waiter  # a cancelled sleeper's entry is skipped when it comes up

    def next_wake(self) -> float | None:
        """When the earliest parked sleeper is due (None: nobody sleeps)."""
        while self._sleepers and self._sleepers[0][2].done():
            heapq.heappop(self._sleepers)
        return self._sleepers[0][0] if self._sleepers else None

    async def advance(self, seconds: float) -> None:
        """Move time ``seconds`` forward, waking each sleeper due at its own time."""
        target = self._now + seconds
        while (wake := self.next_wake()) is not None and wake <= target:
            _, _, waiter = heapq.heappop(self._sleepers)
            self._now = max(self._now, wake)
            waiter.set_result(None)
            await settle()
        self._now = target
        await settle()

    async def run(self, awaitable: Awaitable[T], *, within: float = 3600.0) -> T:
        """Await ``awaitable``, jumping to the next wake-up whenever all else waits.

        Fails (rather than hangs) when the awaitable waits on something no sleeper
        will bring, or would need more than ``within`` virtual seconds.
        """
        task = asyncio.ensure_future(awaitable)
        limit = self._now + within
        try:
            while True:
                await settle()
                if task.done():
                    return task.result()
                wake = self.next_wake()
                if wake is None:
                    raise AssertionError("deadlock: the task waits and nothing sleeps on the clock")
                if wake > limit:
                    raise AssertionError(f"still waiting after {within} virtual seconds")
                await self.advance(wake - self._now)
        finally:
            if not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)

    @contextlib.asynccontextmanager
    async def autojump(self, poll: float = 0.002) -> AsyncIterator[FakeClock]:
        """Inside: whenever a sleeper is parked and the ready tasks have run, jump to it.

        For code that also waits on sockets; ``poll`` (real seconds) only paces the
        checks while nothing sleeps on the clock, it is never asserted on.
        """

        async def jump() -> None:
            while True:
                await settle()
                wake = self.next_wake()
                if wake is None:
                    await asyncio.sleep(poll)
                else:
                    await self.advance(wake - self._now)

        jumper = asyncio.create_task(jump())
        try:
            yield self
        finally:
            jumper.cancel()
            await asyncio.gather(jumper, return_exceptions=True)
