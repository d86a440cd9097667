"""The run-level watchdog: a run in which no row moves is stopped (exit 4), never left hanging.

The requests go to the package's fake Space on 127.0.0.1; the stuck rows are a
bug planted in the client (a ``complete`` that never returns), which no
request timeout can cut.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from run_options import run_options

from pipeline.app import EXIT_ENDPOINT_DOWN, EXIT_OK, RunOptions, run, watchdog_window
from pipeline.client import GradioQueueClient, Timeouts
from pipeline.fake_space import FakeSpaceConfig, run_fake_space
from pipeline.fake_space.server import RunningFakeSpace
from pipeline.models import Completion, RequestTrace

TIMEOUTS = Timeouts(connect=2.0, request=2.0, read=2.0, idle=2.0, total=5.0)


@pytest.fixture
async def space() -> AsyncIterator[RunningFakeSpace]:
    async with run_fake_space(FakeSpaceConfig(gradio_major=4, latency=0.0, chunks=2)) as running:
        yield running


def _options(tmp_path: Path, url: str, prompts: list[str], **extra: Any) -> RunOptions:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"r{i}", "prompt": p}) + "\n"
                              for i, p in enumerate(prompts)))
    settings: dict[str, Any] = {
        "input": str(source), "output": str(tmp_path / "out.jsonl"),
        "errors": str(tmp_path / "out.errors.jsonl"), "urls": (url,), "concurrency": 4,
        "timeouts": TIMEOUTS, "progress": False, "base_delay": 0.01,
        "max_delay": 0.05, **extra}
    return run_options(**settings)


def _plant_bug(monkeypatch: pytest.MonkeyPatch, *, stubborn: bool) -> None:
    """Prompts containing "stuck" never return; ``stubborn`` ones also swallow one cancel."""
    real = GradioQueueClient.complete

    async def complete(self: GradioQueueClient, prompt: str, system: str | None = None, *,
                       trace: RequestTrace | None = None) -> Completion:
        if "stuck" not in prompt:
            return await real(self, prompt, system, trace=trace)
        forever = asyncio.get_running_loop().create_future()
        try:
            await forever
        except asyncio.CancelledError:
            if not stubborn:
                raise
            await asyncio.get_running_loop().create_future()  # the bug: a cancel ignored once
        raise AssertionError("unreachable")

    monkeypatch.setattr(GradioQueueClient, "complete", complete)


@pytest.mark.parametrize("stubborn", [False, True], ids=["stuck", "ignores-a-cancel"])
async def test_a_run_where_no_row_moves_stops_with_exit_4_and_keeps_what_finished(
        tmp_path: Path, space: RunningFakeSpace, monkeypatch: pytest.MonkeyPatch,
        stubborn: bool) -> None:
    _plant_bug(monkeypatch, stubborn=stubborn)
    options = _options(tmp_path, space.url, ["a", "b", "stuck", "d"], watchdog=1.0)
    outcome = await asyncio.wait_for(run(options), 15)
    assert outcome.exit_code == EXIT_ENDPOINT_DOWN
    summary = outcome.summary
    assert summary.stalled is not None and "no row made progress for" in summary.stalled
    assert "STOPPED" in summary.render() and summary.stalled in summary.render()
    assert not summary.interrupted
    done = sorted(json.loads(x)["id"] for x in Path(options.output).read_text().splitlines())
    assert done == ["r0", "r1", "r3"]  # the finished rows are saved
    assert summary.succeeded == 3


async def test_steady_progress_keeps_the_watchdog_quiet(
        tmp_path: Path, space: RunningFakeSpace) -> None:
    space.space.config.latency = 0.05
    options = _options(tmp_path, space.url, [f"q{i}" for i in range(8)], concurrency=1,
                       watchdog=5.0)
    outcome = await asyncio.wait_for(run(options), 30)
    assert outcome.exit_code == EXIT_OK and outcome.summary.stalled is None


def test_the_default_window_outlasts_every_legitimate_wait() -> None:
    # An attempt (900 s), a server's Retry-After (up to 300 s), a probe cooldown (60 s)
    # chained: three times the longest of them.
    assert watchdog_window(run_options(input="i", output="o", errors="e")) == 3 * 900.0
    slow = run_options(input="i", output="o", errors="e", rate=0.0001)
    assert watchdog_window(slow) == 3 * 10_000.0
    assert watchdog_window(run_options(input="i", output="o", errors="e", watchdog=7.0)) == 7.0
