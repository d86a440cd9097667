"""The progress bar on stderr (tqdm): done, failed, in flight, rate and ETA."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

from .models import Result, Success
from .runner import BatchState


class Progress:
    """A tqdm bar that is silent when disabled, so callers never branch on it."""

    def __init__(self, enabled: bool, total: int | None, state: BatchState) -> None:
        self._state = state
        self._ok = 0
        self._failed = 0
        self._bar: Any = None
        if enabled:
            self._bar = tqdm(total=total, file=sys.stderr, unit="row", dynamic_ncols=True,
                             mininterval=0.5, smoothing=0.05, desc="qwen-batch")

    def skip(self, count: int) -> None:
        """Rows already done by an earlier run: they count toward the total, not the rate."""
        if self._bar is not None and count:
            self._bar.total = (self._bar.total or 0) and max(self._bar.total - count, 0)
            self._bar.refresh()

    def advance(self, result: Result) -> None:
        if isinstance(result, Success):
            self._ok += 1
        else:
            self._failed += 1
        if self._bar is not None:
            self._bar.set_postfix(ok=self._ok, failed=self._failed,
                                  in_flight=self._state.in_flight,
                                  conc=self._state.concurrency, refresh=False)
            self._bar.update(1)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
