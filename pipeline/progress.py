"""The progress bar on stderr (tqdm): jobs sent of those to send, done, failed, retries, level.

The bar counts jobs (a row times its samples) that are sent: rows already done and bad
input rows never move it. Its total comes from a callable (see
:meth:`pipeline.jobs.PlanCounters.expected_jobs`) read again at every refresh, so it
follows the plan as the input is read and is exact once the input has been read.
Results only bump integers; the bar is redrawn by :meth:`Progress.ticking` at most
``1 / interval`` times a second, whatever the rate of results.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable
from typing import Any, TextIO

from tqdm import tqdm

from .models import Failure, Result, Success
from .runner import BatchState

INTERVAL = 0.1
"""Seconds between redraws: ten a second at most."""

# The counts come right after n/total so that a narrow terminal (tqdm cuts the line at
# its width) loses the timings first, never done/failed/retries/conc.
_KNOWN = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt}{postfix} [{elapsed}<{remaining}, {rate_fmt}]"
_UNKNOWN = "{desc}: {n_fmt} jobs{postfix} [{elapsed}, {rate_fmt}]"


class Progress:
    """A tqdm bar that is silent when disabled, so callers never branch on it."""

    def __init__(self, enabled: bool, state: BatchState,
                 total: Callable[[], int | None] = lambda: None, *,
                 file: TextIO | None = None, interval: float = INTERVAL) -> None:
        self._state = state
        self._total = total
        self._interval = interval
        self.done = 0
        self.failed = 0
        self.bad_input = 0
        self._shown = 0  # jobs already passed to the bar
        self._bar: Any = None
        if enabled:
            self._bar = tqdm(total=None, file=file or sys.stderr, unit="job", dynamic_ncols=True,
                             mininterval=0, miniters=1, smoothing=0.05, desc="qwen-batch",
                             bar_format=_UNKNOWN)
            self.tick()

    def advance(self, result: Result) -> None:
        """Count one result (cheap: the bar is redrawn by :meth:`tick`)."""
        if isinstance(result, Success):
            self.done += 1
        elif isinstance(result, Failure) and result.row is None:
            self.bad_input += 1  # never sent: not a job of the bar
        else:
            self.failed += 1

    def postfix(self) -> str:
        """``done=N failed=N retries=N conc=level/ceiling`` (and ``bad_input=N`` if any)."""
        parts = [f"done={self.done}", f"failed={self.failed}", f"retries={self._state.retries}"]
        limit = self._state.limit
        if limit is not None:
            parts.append(f"conc={limit.level}/{limit.ceiling}")
        if self.bad_input:
            parts.append(f"bad_input={self.bad_input}")
        return " ".join(parts)

    def tick(self) -> None:
        """Bring the bar up to date: count, total, postfix; one redraw."""
        bar = self._bar
        if bar is None:
            return
        sent = self.done + self.failed
        total = self._total()
        if total is not None:
            total = max(total, sent)  # an estimate never shows more than 100%
        if total != bar.total:
            bar.total = total
            bar.bar_format = _UNKNOWN if total is None else _KNOWN
        bar.set_postfix_str(self.postfix(), refresh=False)
        if sent > self._shown:
            bar.update(sent - self._shown)  # redraws (mininterval=0): the rate sees it
            self._shown = sent
        else:
            bar.refresh()

    @contextlib.asynccontextmanager
    async def ticking(self) -> AsyncIterator[None]:
        """Redraw every ``interval`` seconds while the block runs (a no-op when disabled)."""
        if self._bar is None:
            yield
            return

        async def loop() -> None:
            while True:
                await asyncio.sleep(self._interval)
                self.tick()

        task = asyncio.ensure_future(loop())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def close(self) -> None:
        """Draw the final counts and leave the bar on the screen."""
        if self._bar is not None:
            self.tick()
            self._bar.close()
            self._bar = None
