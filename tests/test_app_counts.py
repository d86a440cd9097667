"""Honest counts from a whole run: the bar's total and postfix, rows and jobs, ``remaining``."""

from __future__ import annotations

import asyncio
import gzip
import json
import re
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from run_options import run_options

import pipeline.app as app
from pipeline.app import RunOptions, run
from pipeline.client import Timeouts
from pipeline.fake_space import FakeSpaceConfig, run_fake_space
from pipeline.fake_space.server import RunningFakeSpace
from pipeline.records import encode_record


@pytest.fixture
async def space() -> AsyncIterator[RunningFakeSpace]:
    async with run_fake_space(FakeSpaceConfig(gradio_major=4, latency=0.0, chunks=2)) as running:
        yield running


def write_input(path: Path, prompts: list[str], blank_after: tuple[int, ...] = ()) -> Path:
    lines = []
    for i, prompt in enumerate(prompts):
        lines.append(json.dumps({"id": f"r{i}", "prompt": prompt}) + "\n")
        if i in blank_after:
            lines.append("\n  \n")
    path.write_text("".join(lines))
    return path


def options(tmp_path: Path, space: RunningFakeSpace, source: Path, **kw: Any) -> RunOptions:
    out = tmp_path / "out.jsonl"
    base: dict[str, Any] = {
        "input": str(source), "output": str(out), "errors": str(tmp_path / "out.errors.jsonl"),
        "urls": (space.url,), "progress": False, "base_delay": 0.01,
        "max_delay": 0.02, "timeouts": Timeouts(connect=5, read=5, total=20)}
    base.update(kw)
    return run_options(**base)


def last_bar(stderr: str) -> str:
    """The bar as it was left on the screen: the last redraw of its line."""
    bars = [part for part in re.split(r"[\r\n]", stderr) if part.startswith("qwen-batch:")]
    assert bars, stderr
    return bars[-1]


async def test_blank_lines_and_done_rows_are_not_in_the_bar_total(
    tmp_path: Path, space: RunningFakeSpace, capsys: pytest.CaptureFixture[str]
) -> None:
    # The issue: 6 rows and 2 blank lines ended at "75% 6/8". Here also 2 rows x 2 samples
    # and 3 of those jobs already done: 6 x 2 - 3 = 9 jobs to send.
    source = write_input(tmp_path / "in.jsonl", [f"q {i}" for i in range(6)], blank_after=(2,))
    out = tmp_path / "out.jsonl"
    out.write_bytes(b"".join(encode_record({"id": i, "sample": s, "completion": "earlier"})
                             for i, s in (("r0", 0), ("r0", 1), ("r1", 1))))
    outcome = await run(options(tmp_path, space, source, progress=True, samples=2))
    assert outcome.exit_code == 0
    bar = last_bar(capsys.readouterr().err)
    assert "100%" in bar and "| 9/9" in bar, bar
    assert "done=9 failed=0 retries=0 conc=" in bar, bar


async def test_the_bar_shows_retries_and_failures(
    tmp_path: Path, space: RunningFakeSpace, capsys: pytest.CaptureFixture[str]
) -> None:
    # [fault:app_error:N]: the first N attempts of that prompt fail (4 attempts per job).
    prompts = ["ok 0", "[fault:app_error:1] once", "[fault:app_error:9] always", "ok 3"]
    source = write_input(tmp_path / "in.jsonl", prompts)
    outcome = await run(options(tmp_path, space, source, progress=True, max_attempts=4))
    assert outcome.exit_code == 3
    bar = last_bar(capsys.readouterr().err)
    assert "4/4" in bar and "done=3 failed=1 retries=4 conc=4/4" in bar, bar
    assert outcome.summary.retries == 4


async def test_limit_reports_what_remains_in_rows_and_jobs(
    tmp_path: Path, space: RunningFakeSpace, capsys: pytest.CaptureFixture[str]
) -> None:
    # The issue: --limit runs reported "remaining": null.
    source = write_input(tmp_path / "in.jsonl", [f"q {i}" for i in range(10)], blank_after=(4,))
    summary_path = tmp_path / "summary.json"
    first = await run(options(tmp_path, space, source, limit=3, samples=2,
                              summary_path=str(summary_path)))
    assert first.exit_code == 0
    data = json.loads(summary_path.read_text())
    assert data["remaining"] == 14 and data["succeeded"] == 6
    assert data["rows"] == {"read": 3, "bad_input": 0, "already_done": 0, "to_do": 3,
                            "done": 3, "failed": 0, "remaining": 7}
    assert data["jobs"]["to_do"] == 6 and data["jobs"]["remaining"] == 14
    assert "  remaining   7 rows, 14 jobs (left for the next run)" in first.summary.render()
    # The next run starts where this one stopped and says what is left again.
    second = await run(options(tmp_path, space, source, limit=5, samples=2))
    assert (second.summary.skipped_done, second.summary.rows_to_do) == (3, 5)
    assert (second.summary.rows_remaining, second.summary.remaining) == (2, 4)
    last = await run(options(tmp_path, space, source, limit=5, samples=2))
    assert (last.summary.rows_to_do, last.summary.rows_remaining, last.summary.remaining) == \
        (2, 0, 0)


async def test_a_run_that_reads_its_input_to_the_end_has_nothing_remaining(
    tmp_path: Path, space: RunningFakeSpace
) -> None:
    source = write_input(tmp_path / "in.jsonl", ["a", "b", "c"])
    outcome = await run(options(tmp_path, space, source))
    assert outcome.summary.remaining == 0 and outcome.summary.rows_remaining == 0
    assert outcome.summary.to_dict()["rows"]["remaining"] == 0


async def test_nothing_to_do_says_so(tmp_path: Path, space: RunningFakeSpace) -> None:
    # The issue: a finished run with nothing to do printed "throughput 0.00 rows/s".
    source = write_input(tmp_path / "in.jsonl", ["a", "b", "c", "d"])
    assert (await run(options(tmp_path, space, source))).exit_code == 0
    again = await run(options(tmp_path, space, source))
    assert again.exit_code == 0
    text = again.summary.render()
    assert "  nothing to do: all 4 rows already done" in text.splitlines()
    assert "throughput" not in text and "rows/s" not in text
    assert again.summary.to_dict()["rows"]["already_done"] == 4


async def test_a_long_rest_of_the_input_is_estimated_from_its_row_count(
    tmp_path: Path, space: RunningFakeSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Planning the unread rest costs about a second per 30,000 rows: past the budget the
    # rest is estimated from the row count, and the summary says so.
    monkeypatch.setattr(app, "DRAIN_BUDGET", 0.0)
    source = write_input(tmp_path / "in.jsonl", [f"q {i}" for i in range(3000)])
    with source.open("a") as handle:
        handle.write("not json\n" * 10)  # bad rows ahead: the estimate counts them as to do
    outcome = await run(options(tmp_path, space, source, limit=5))
    s = outcome.summary
    assert s.remaining_estimated is True
    assert (s.rows_remaining, s.remaining) == (3005, 3005)  # exact would be 2995
    assert "  remaining   ~3005 rows (left for the next run; estimated from a row count)" in \
        s.render().splitlines()
    assert s.to_dict()["remaining_estimated"] is True
    monkeypatch.setattr(app, "DRAIN_BUDGET", 60.0)
    exact = await run(options(tmp_path, space, source, limit=5))
    assert (exact.summary.remaining, exact.summary.remaining_estimated) == (2990, False)


async def test_an_input_without_a_row_count_leaves_a_long_rest_uncounted(
    tmp_path: Path, space: RunningFakeSpace, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(app, "DRAIN_BUDGET", 0.0)
    source = tmp_path / "in.jsonl.gz"
    source.write_bytes(gzip.compress(write_input(tmp_path / "plain.jsonl",
                                                 [f"q {i}" for i in range(3000)]).read_bytes()))
    outcome = await run(options(tmp_path, space, source, limit=5))
    assert outcome.exit_code == 0 and outcome.summary.succeeded == 5
    assert outcome.summary.remaining is None and "remaining" not in outcome.summary.render()


def against_nothing(tmp_path: Path, source: Path, **kw: Any) -> RunOptions:
    """A run of ``source`` against a port nothing listens on: it stops with exit 4."""
    return run_options(input=str(source), output=str(tmp_path / "out.jsonl"),
                       errors=str(tmp_path / "out.errors.jsonl"), urls=("http://127.0.0.1:1",),
                       progress=False, connect_grace=0.2, probe_cooldown=0.05,
                       timeouts=Timeouts(connect=1, read=1, total=5), **kw)


async def test_a_stopped_run_estimates_what_is_left_from_the_row_count(tmp_path: Path) -> None:
    # Stopped (here: the endpoint never answered, exit 4) after reading a window of rows:
    # "to do" is only the rows read ahead, so "remaining" must say the rest of the input
    # is left too, from the row count (not by planning the rest: the run is stopping).
    source = write_input(tmp_path / "in.jsonl", [f"q {i}" for i in range(3000)])
    outcome = await run(against_nothing(tmp_path, source))
    s = outcome.summary
    assert outcome.exit_code == 4 and s.endpoint_down and s.succeeded == 0
    assert 0 < s.rows_to_do < 3000
    assert (s.rows_remaining, s.remaining, s.remaining_estimated) == (3000, 3000, True)
    assert "  remaining   ~3000 rows (left for the next run; estimated from a row count)" in \
        s.render().splitlines()


async def test_a_stopped_run_that_read_its_whole_input_counts_what_is_left_exactly(
    tmp_path: Path,
) -> None:
    source = write_input(tmp_path / "in.jsonl", ["a", "b", "c"])
    outcome = await run(against_nothing(tmp_path, source))
    s = outcome.summary
    assert outcome.exit_code == 4 and s.rows_to_do == 3
    assert (s.rows_remaining, s.remaining, s.remaining_estimated) == (3, 3, False)


@pytest.mark.parametrize("samples", [1, 2])
async def test_a_stopped_run_past_a_limit_counts_the_row_the_limit_held_back(
    tmp_path: Path, samples: int,
) -> None:
    # The plan reads the first row past --limit and holds it for the next run: it is
    # read (not in the unread part) yet not queued, and still left.
    source = write_input(tmp_path / "in.jsonl", [f"q {i}" for i in range(10)])
    outcome = await run(against_nothing(tmp_path, source, limit=5, samples=samples))
    s = outcome.summary
    assert outcome.exit_code == 4 and s.succeeded == 0
    assert (s.rows_remaining, s.remaining) == (10, 10 * samples)


def test_a_second_ctrl_c_during_the_row_count_quits_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Counting a multi-GiB input for the summary must not hold the process: the second
    # Ctrl-C cancels the run, and the loop's end must not wait for the counting thread.
    source = write_input(tmp_path / "in.jsonl", [f"q {i}" for i in range(3000)])
    entered, release, returned = threading.Event(), threading.Event(), threading.Event()
    held: dict[str, Any] = {}

    def slow_count(path: str, fmt: str) -> int:  # a cold disk
        entered.set()
        release.wait(120)
        return 3000

    monkeypatch.setattr(app, "_count_rows", slow_count)

    async def main() -> None:
        held["loop"] = asyncio.get_running_loop()
        held["task"] = task = asyncio.create_task(run(against_nothing(tmp_path, source)))
        try:
            await task
        except asyncio.CancelledError:
            pass  # the second Ctrl-C: expected
        finally:
            returned.set()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    try:
        assert entered.wait(60), "the run never counted its rows"
        held["loop"].call_soon_threadsafe(held["task"].cancel)  # what the second Ctrl-C does
        assert returned.wait(30), "run() did not end after the cancel"
        thread.join(10)
        assert not thread.is_alive(), "asyncio.run still waits for the counting thread"
    finally:
        release.set()
        thread.join(30)
