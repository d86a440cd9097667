"""What the Ray test modules share: the skip-or-fail rule for Ray, and waiting for quiet."""

from __future__ import annotations

import os
import time

import pytest
from fake_space_process import FakeSpaceProcess


def ray_or_skip() -> None:
    """Skip without Ray Data; fail instead under QWEN_BATCH_REQUIRE_RAY=1 (CI)."""
    try:
        import ray.data  # noqa: F401
    except ImportError as exc:
        reason = f"Ray Data is not installed ({exc}): pip install -e '.[test,ray]'"
        if os.environ.get("QWEN_BATCH_REQUIRE_RAY", "").strip() == "1":
            pytest.fail(f"QWEN_BATCH_REQUIRE_RAY=1 but {reason}", pytrace=False)
        pytest.skip(reason)


def settle(space: FakeSpaceProcess, quiet: float = 3.0, timeout: float = 60.0) -> int:
    """Wait until no job runs and no join arrives for ``quiet`` seconds; return the joins."""
    last, since = -1, time.monotonic()
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        stats = space.stats()
        if stats["joins"] != last or stats["running"] or stats["waiting"]:
            last, since = stats["joins"], time.monotonic()
        elif time.monotonic() - since >= quiet:
            return int(last)
        time.sleep(0.2)
    pytest.fail(f"the fake Space never went quiet: {space.stats()}")
