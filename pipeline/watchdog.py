"""The run's last line of defence: stop a run in which nothing has moved for too long.

Every wait of a request has its own bound; the watchdog is for what those bounds
cannot see (a bug that leaves a row waiting forever). It polls a progress
snapshot (anything that changes when a row moves: results, attempts, rows read)
and, when the snapshot has not changed for ``window`` seconds, first sets the
run's ``stop`` event (the batch cancels what is in flight and saves what
finished), then, if the run has still not ended ``grace`` seconds later, cancels
the task that drives it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Hashable
from types import TracebackType

__all__ = ["Watchdog"]

log = logging.getLogger(__name__)

_POLLS_PER_WINDOW = 10  # fires at most a tenth of a window late


class Watchdog:
    """An async context manager that watches the block it wraps.

    ``progress`` returns a snapshot that must change whenever the run moves;
    ``on_stuck`` receives the message when the watchdog fires (before ``stop`` is
    set). :attr:`fired` tells afterwards whether it did.
    """

    def __init__(
        self,
        window: float,
        progress: Callable[[], Hashable],
        stop: asyncio.Event,
        on_stuck: Callable[[str], None],
        *,
        grace: float,
    ) -> None:
        if window <= 0 or grace < 0:
            raise ValueError("the watchdog's window must be positive and its grace not negative")
        self.window = window
        self.grace = grace
        self.fired = False
        self._progress = progress
        self._stop = stop
        self._on_stuck = on_stuck
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Watchdog:
        driver = asyncio.current_task()
        if driver is None:
            raise RuntimeError("the watchdog must run inside a task")
        self._task = asyncio.get_running_loop().create_task(self._watch(driver))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _watch(self, driver: asyncio.Task[object]) -> None:
        loop = asyncio.get_running_loop()
        seen, since = self._progress(), loop.time()
        while True:
            await asyncio.sleep(self.window / _POLLS_PER_WINDOW)
            snapshot, now = self._progress(), loop.time()
            if snapshot != seen:
                seen, since = snapshot, now
            elif now - since >= self.window:
                break
        self.fired = True
        message = (f"no row made progress for {now - since:.1f} s (watchdog); stopped the run, "
                   "the rows finished are saved")
        log.error("%s", message)
        self._on_stuck(message)
        self._stop.set()
        await asyncio.sleep(self.grace)
        log.error("the run did not stop within %.0f s of the watchdog; cancelling it", self.grace)
        driver.cancel()
