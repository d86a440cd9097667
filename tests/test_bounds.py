"""Every wait is bounded: a Space that goes silent at any phase ends the request and the run.

The stand-in (tests/silent_space.py) is a real server on 127.0.0.1. Each test runs
under an outer ``asyncio.wait_for`` a few times the configured bound, so a hang
fails the test instead of the suite.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from run_options import run_options
from silent_space import SilentSpace, answer_for, run_silent_space

from pipeline import errors
from pipeline.app import EXIT_OK, EXIT_ROWS_FAILED, RunOptions, run
from pipeline.client import GradioQueueClient, Timeouts

# Short bounds so a stall costs well under a second; the outer bound is a few times larger.
BOUNDS = Timeouts(connect=1.0, request=0.5, read=1.0, idle=1.0, total=3.0)
OUTER = 3 * BOUNDS.total

# What one request ends with when the Space goes silent at each phase.
EXPECTED: dict[str, type[BaseException] | None] = {
    "config_headers": None,  # the default layout is used: the request succeeds
    "config_body": None,
    "join_headers": errors.RequestTimeoutError,
    "join_body": errors.RequestTimeoutError,
    "join_error_body": errors.HTTPStatusError,
    "data_headers": errors.RequestTimeoutError,
    "data_error_body": errors.HTTPStatusError,
    "data_body": errors.ReadTimeoutError,
}


@pytest.fixture
async def silent(request: pytest.FixtureRequest) -> AsyncIterator[SilentSpace]:
    async with run_silent_space(SilentSpace(silent=set(request.param))) as space:
        yield space


@pytest.mark.parametrize("silent", [[p] for p in EXPECTED], ids=list(EXPECTED), indirect=True)
async def test_a_request_ends_within_its_bounds_whatever_phase_goes_silent(
        silent: SilentSpace) -> None:
    (phase,) = silent.silent
    expected = EXPECTED[phase]

    async def attempt() -> str:
        async with GradioQueueClient(silent.url, timeouts=BOUNDS) as client:
            return (await client.complete("hello")).text

    if expected is None:
        assert await asyncio.wait_for(attempt(), OUTER) == answer_for("hello")
    else:
        with pytest.raises(expected) as info:
            await asyncio.wait_for(attempt(), OUTER)
        assert info.value.retryable
        if isinstance(info.value, errors.HTTPStatusError):
            assert info.value.status == 502


@pytest.mark.parametrize("silent", [["data_body", "cancel"]], indirect=True)
async def test_a_cancel_that_is_never_answered_does_not_hold_the_client(
        silent: SilentSpace) -> None:
    async def attempt() -> None:
        async with GradioQueueClient(silent.url, timeouts=BOUNDS) as client:
            await client.complete("hello")

    with pytest.raises(errors.ReadTimeoutError):
        await asyncio.wait_for(attempt(), OUTER + 3.0)  # close() waits up to 3 s for cancels
    assert silent.hits["cancel"] == 1


def _options(tmp_path: Path, url: str, rows: int, **extra: Any) -> RunOptions:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"q{i}"}) + "\n"
                              for i in range(rows)))
    out = tmp_path / "out.jsonl"
    settings: dict[str, Any] = {
        "input": str(source), "output": str(out), "errors": str(tmp_path / "out.errors.jsonl"),
        "urls": (url,), "concurrency": 2, "max_attempts": 2, "timeouts": BOUNDS,
        "progress": False, "base_delay": 0.01, "max_delay": 0.05, **extra}
    return run_options(**settings)


def _count(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("silent", [[p] for p in EXPECTED], ids=list(EXPECTED), indirect=True)
async def test_a_run_ends_within_its_bounds_whatever_phase_goes_silent(
        silent: SilentSpace, tmp_path: Path) -> None:
    (phase,) = silent.silent
    options = _options(tmp_path, silent.url, rows=2)
    # Two rows at once, two attempts each: at most two attempts' worth of waiting.
    outcome = await asyncio.wait_for(run(options), 2 * OUTER)
    assert outcome.exit_code == (EXIT_OK if EXPECTED[phase] is None else EXIT_ROWS_FAILED)
    # Every row is accounted for: a completion or an error record.
    assert _count(Path(options.output)) + _count(Path(options.errors)) == 2


# A long read timeout: the stalls below must be cut by the request timeout, not by it.
PATIENT = Timeouts(connect=1.0, request=0.5, read=30.0, idle=30.0, total=60.0)


@pytest.mark.parametrize("silent", [["config_headers"], ["config_body"]], indirect=True)
async def test_a_swallowed_config_costs_one_request_timeout_per_run_not_one_read_per_row(
        silent: SilentSpace, tmp_path: Path) -> None:
    options = _options(tmp_path, silent.url, rows=4, timeouts=PATIENT)
    outcome = await asyncio.wait_for(run(options), 3.0)
    assert outcome.exit_code == EXIT_OK
    assert silent.hits["config"] == 1  # the default layout was kept, not asked for per row
    assert _count(Path(options.output)) == 4


@pytest.mark.parametrize("silent", [["join_headers"], ["join_body"], ["data_headers"]],
                         indirect=True)
async def test_a_stalled_exchange_is_cut_by_the_request_timeout_not_the_read_timeout(
        silent: SilentSpace) -> None:
    async with GradioQueueClient(silent.url, timeouts=PATIENT) as client:
        with pytest.raises(errors.RequestTimeoutError, match=r"no answer within 0\.5 s"):
            await asyncio.wait_for(client.complete("hello"), 3 * PATIENT.request + 1.0)


@pytest.mark.parametrize("silent", [["data_headers"]], indirect=True)
async def test_the_attempt_timeout_bounds_an_exchange_too(silent: SilentSpace) -> None:
    short = Timeouts(connect=1.0, request=30.0, read=30.0, idle=30.0, total=0.5)
    async with GradioQueueClient(silent.url, timeouts=short) as client:
        with pytest.raises(errors.AttemptTimeoutError):
            await asyncio.wait_for(client.complete("hello"), 3 * short.total)


@pytest.mark.parametrize("silent", [["data_headers"]], indirect=True)
async def test_the_command_ends_when_the_stream_never_answers(
        silent: SilentSpace, tmp_path: Path) -> None:
    # The reported case: 1 row, --timeout 10 --max-attempts 2 ran on past 150 s.
    source = tmp_path / "in.jsonl"
    source.write_text(json.dumps({"id": "a", "prompt": "hello"}) + "\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "pipeline", "run", str(source), "--url", silent.url,
        "-o", str(tmp_path / "out.jsonl"), "--errors", str(tmp_path / "errors.jsonl"),
        "--timeout", "10", "--max-attempts", "2", "--request-timeout", "1", "--retry-delay", "0",
        "--no-progress", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        _, stderr = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == EXIT_ROWS_FAILED, stderr.decode()
    record = json.loads((tmp_path / "errors.jsonl").read_text())
    assert record["error_type"] == "request_timeout" and record["attempts"] == 2
    assert silent.hits["data"] == 2
