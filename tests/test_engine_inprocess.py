"""The Ray engine's driver side without Ray: ``run(options, engine=open_inprocess)``.

The in-process executor runs the same per-actor callables over the same spool, in
blocks as Ray Data does, so these tests cover what the driver does for the Ray engine
(planning, spool, results, writers, summary, resume, deadline, exit codes) in the
default suite. tests/test_engine_ray.py runs the real thing on a local Ray.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from inprocess_engine import InProcessExecutor, open_inprocess
from run_options import changed, run_options

from pipeline.app import RunOptions, RunOutcome, run
from pipeline.cli import main
from pipeline.client import Timeouts
from pipeline.engines import EngineOptions
from pipeline.fake_space import FakeSpaceConfig, run_fake_space
from pipeline.fake_space.server import RunningFakeSpace
from pipeline.jsonl import iter_jsonl_records
from pipeline.rowspec import RowSpec
from pipeline.settings import BatchSettings, ClientSettings

TIMEOUTS = Timeouts(connect=5, read=5, idle=2, total=20)
VOLATILE = {"session_hash", "event_id", "started_at", "finished_at", "queue_ms", "ttft_ms",
            "duration_ms", "failed_at"}
ROWS = 40


@pytest.fixture
async def space() -> AsyncIterator[RunningFakeSpace]:
    config = FakeSpaceConfig(gradio_major=4, latency=0.05, chunks=3, heartbeat_interval=0.1)
    async with run_fake_space(config) as running:
        yield running


def write_input(path: Path, rows: int = ROWS, *, messy: bool = True) -> None:
    lines = [json.dumps({"id": f"row-{i:03d}", "prompt": f"Question {i} ✓",
                         "topic": ["a", "b", None][i % 3], "n": i}) for i in range(rows)]
    if messy:
        lines[5] = json.dumps({"id": "row-005", "prompt": "fails [fault:app_error:9]",
                               "topic": "x", "n": 5})
        lines[7] = json.dumps({"id": "row-007", "prompt": "cut once [fault:cut:1]", "n": 7})
        lines.insert(10, "{not json")
        lines.insert(20, json.dumps({"id": "row-001", "prompt": "a duplicate id"}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def options(tmp_path: Path, url: str, output: str, **changes: Any) -> RunOptions:
    out = tmp_path / output
    base = run_options(input=str(tmp_path / "in.jsonl"), output=str(out),
                      errors=str(out.with_name(out.stem + ".errors.jsonl")),
                      spec=RowSpec(keep=("topic", "n")), urls=(url,), concurrency=4,
                      progress=False, max_attempts=2, base_delay=0.01,
                      max_delay=0.02, timeouts=TIMEOUTS)
    return changed(base, **changes)


async def run_inprocess(options: RunOptions) -> RunOutcome:
    """The run with the double of the Ray engine (tests/inprocess_engine.py)."""
    return await run(options, engine=open_inprocess)


def read_output(path: str) -> list[dict[str, Any]]:
    if path.endswith(".parquet"):
        return pq.read_table(path).to_pylist()
    return list(iter_jsonl_records(path))


def stable(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in VOLATILE}


def by_key(records: list[dict[str, Any]]) -> dict[tuple[Any, Any, Any], dict[str, Any]]:
    return {(r["id"], r["sample"], r.get("position") if r["id"] is None else None): stable(r)
            for r in records}


def counts(outcome: RunOutcome) -> tuple[int, int, int, int]:
    s = outcome.summary
    return s.succeeded, s.failed, s.input_errors, s.skipped_done


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
async def test_the_same_records_errors_summary_and_exit_code_as_local(
        tmp_path: Path, space: RunningFakeSpace, suffix: str) -> None:
    write_input(tmp_path / "in.jsonl")
    local = await run(options(tmp_path, space.url, f"local.{suffix}"))
    joins_local = space.space.stats.joins
    space.space.stats.attempts_by_prompt.clear()  # the [fault:cut:1] row fails once again
    mine = await run_inprocess(options(tmp_path, space.url, f"mine.{suffix}", actors=2))
    assert mine.exit_code == local.exit_code == 3
    assert counts(mine) == counts(local) == (ROWS - 1, 1, 2, 0)
    assert space.space.stats.joins == 2 * joins_local  # the same requests, retries included
    assert mine.summary.retries == local.summary.retries == 2
    assert by_key(read_output(str(tmp_path / f"mine.{suffix}"))) == \
        by_key(read_output(str(tmp_path / f"local.{suffix}")))
    assert by_key(read_output(str(tmp_path / "mine.errors.jsonl"))) == \
        by_key(read_output(str(tmp_path / "local.errors.jsonl")))
    if suffix == "parquet":
        assert pq.read_schema(tmp_path / "mine.parquet") == pq.read_schema(tmp_path / "local.parquet")
    assert not (tmp_path / f"mine.{suffix}.spool").exists()  # the spool is cleaned up
    assert mine.summary.concurrency["ceiling"] == 4  # 2 actors x 2 (--concurrency 4 shared out)


async def test_resume_across_engines_each_id_once_and_never_asked_twice(
        tmp_path: Path, space: RunningFakeSpace) -> None:
    write_input(tmp_path / "in.jsonl", messy=False)
    first = await run(options(tmp_path, space.url, "out.jsonl", limit=12))
    assert first.summary.succeeded == 12
    second = await run_inprocess(options(tmp_path, space.url, "out.jsonl", limit=15))
    assert (second.summary.succeeded, second.summary.skipped_done) == (15, 12)
    third = await run(options(tmp_path, space.url, "out.jsonl"))
    assert (third.summary.succeeded, third.summary.skipped_done) == (ROWS - 27, 27)
    fourth = await run_inprocess(options(tmp_path, space.url, "out.jsonl"))
    assert (fourth.summary.succeeded, fourth.summary.skipped_done) == (0, ROWS)
    ids = Counter(r["id"] for r in read_output(str(tmp_path / "out.jsonl")))
    assert set(ids.values()) == {1} and len(ids) == ROWS
    assert space.space.stats.joins == ROWS  # no row was asked twice
    assert all(count == 1 for count in space.space.stats.attempts_by_prompt.values())


async def test_parts_of_bounded_rows_resume_across_engines(
        tmp_path: Path, space: RunningFakeSpace) -> None:
    write_input(tmp_path / "in.jsonl", messy=False)
    parts = dict(output_format="parquet", rows_per_file=7)
    first = await run_inprocess(options(tmp_path, space.url, "out", limit=10, **parts))
    second = await run(options(tmp_path, space.url, "out", limit=9, **parts))
    third = await run_inprocess(options(tmp_path, space.url, "out", **parts))
    assert [o.summary.succeeded for o in (first, second, third)] == [10, 9, ROWS - 19]
    files = sorted((tmp_path / "out").iterdir())
    sizes = [pq.read_metadata(f).num_rows for f in files]
    assert all(f.suffix == ".parquet" for f in files) and max(sizes) == 7
    assert sum(sizes) == ROWS and sizes[:-1] == [7] * (len(sizes) - 1)
    ids = Counter(r["id"] for f in files for r in pq.read_table(f).to_pylist())
    assert set(ids.values()) == {1} and len(ids) == ROWS
    assert space.space.stats.joins == ROWS


async def test_samples_resume_per_sample_across_engines(tmp_path: Path,
                                                        space: RunningFakeSpace) -> None:
    write_input(tmp_path / "in.jsonl", rows=6, messy=False)
    await run(options(tmp_path, space.url, "out.jsonl", samples=2))
    done = await run_inprocess(options(tmp_path, space.url, "out.jsonl", samples=3))
    assert done.summary.succeeded == 6  # only sample 2 of each row was missing
    keys = Counter((r["id"], r["sample"]) for r in read_output(str(tmp_path / "out.jsonl")))
    assert len(keys) == 18 and set(keys.values()) == {1}


async def test_a_gone_endpoint_stops_the_run_with_exit_4(tmp_path: Path) -> None:
    write_input(tmp_path / "in.jsonl", messy=False)
    async with run_fake_space(FakeSpaceConfig(gradio_major=4, hf_state="gone")) as gone:
        outcome = await run_inprocess(options(tmp_path, gone.url, "out.jsonl", actors=1,
                                              per_actor_concurrency=2))
        joins = gone.space.stats.joins
    assert outcome.exit_code == 4
    assert outcome.summary.endpoint_down and "gone" in outcome.summary.endpoint_down
    assert joins == 0 and outcome.summary.failed <= 2  # stopped, not burning every row


async def test_a_deadline_leaves_the_rest_for_the_next_run(tmp_path: Path,
                                                           space: RunningFakeSpace) -> None:
    write_input(tmp_path / "in.jsonl", messy=False)
    space.space.config.latency = 0.4
    stopped = await run_inprocess(options(tmp_path, space.url, "out.jsonl", deadline=0.5,
                                          grace=5, actors=1, per_actor_concurrency=2))
    assert stopped.exit_code == 0 and stopped.summary.deadline_hit
    assert 0 < stopped.summary.succeeded < ROWS
    assert stopped.summary.remaining == ROWS - stopped.summary.succeeded
    space.space.config.latency = 0.01
    rest = await run_inprocess(options(tmp_path, space.url, "out.jsonl"))
    assert rest.exit_code == 0 and rest.summary.succeeded == stopped.summary.remaining
    assert len(read_output(str(tmp_path / "out.jsonl"))) == ROWS


async def test_nothing_left_to_do_starts_no_actor(tmp_path: Path, space: RunningFakeSpace,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    write_input(tmp_path / "in.jsonl", rows=3, messy=False)
    await run(options(tmp_path, space.url, "out.jsonl"))

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("no actor should start")

    monkeypatch.setattr(InProcessExecutor, "start", refuse)
    again = await run_inprocess(options(tmp_path, space.url, "out.jsonl"))
    assert again.exit_code == 0 and again.summary.skipped_done == 3


def test_ray_engine_without_ray_is_a_usage_error(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    write_input(tmp_path / "in.jsonl", rows=2, messy=False)
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    result = CliRunner().invoke(main, ["run", str(tmp_path / "in.jsonl"), "--engine", "ray",
                                       "--url", "http://127.0.0.1:9", "--no-progress"])
    assert result.exit_code == 2
    assert "pip install 'qwen-batch[ray]'" in result.output


def test_local_engine_never_imports_ray(tmp_path: Path) -> None:
    import subprocess

    code = ("import sys, pipeline.cli, pipeline.app, pipeline.engines, pipeline.engines.local\n"
            "assert not any(m == 'ray' or m.startswith('ray.') for m in sys.modules), 'ray'\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_run_help_documents_the_engine_options() -> None:
    result = CliRunner().invoke(main, ["run", "--help"])
    for option in ("--engine", "--address", "--actors", "--per-actor-concurrency"):
        assert option in result.output


async def test_tables_reach_the_driver_while_their_block_runs(tmp_path: Path,
                                                              space: RunningFakeSpace) -> None:
    # One actor, one block of 6 rows, the last of which stalls (never answers by itself):
    # the driver side gets the other five results while it is still in flight.
    from pipeline.engines.actor import ActorConfig
    from pipeline.engines.distributed import Spool
    from pipeline.models import PromptRow

    executor = InProcessExecutor(actors=1, per_actor=3)
    spool = Spool(str(tmp_path / "spool"), samples=1, block_rows=executor.block_rows)
    for i in range(6):
        spool.add(PromptRow(f"r{i}", i, f"question {i}" + (" [fault:stall]" if i == 5 else "")))
    spool.flush()
    assert pq.read_table(spool.paths[0]).num_rows == 1  # one spool row: one block of 12
    config = ActorConfig(client=ClientSettings(urls=(space.url,), timeouts=TIMEOUTS),
                         batch=BatchSettings(concurrency=3, adaptive=False))

    def first_five() -> tuple[int, int]:
        ok = 0
        for tables, table in enumerate(executor.batches(spool, config), 1):
            ok += table.column("kind").to_pylist().count("ok")
            if ok == 5:
                return tables, space.space.stats.running
        raise AssertionError("the results ended early")

    try:
        tables, running = await asyncio.to_thread(first_five)
    finally:
        await asyncio.to_thread(executor.close)
        spool.remove()
    assert running == 1 and tables >= 2


async def test_a_local_run_removes_the_spool_a_killed_ray_run_left(
        tmp_path: Path, space: RunningFakeSpace) -> None:
    # A Ray run killed midway leaves <output>.spool/; the engine that finishes the job
    # (here the local one) removes it. Before: it stayed there for good.
    write_input(tmp_path / "in.jsonl", messy=False)
    left = tmp_path / "out.jsonl.spool"
    left.mkdir()
    (left / "part-00000.parquet").write_bytes(b"a killed run's spool")
    done = await run(options(tmp_path, space.url, "out.jsonl", kind="local"))
    assert done.exit_code == 0 and done.summary.succeeded == ROWS
    assert not left.exists()


class _NeverStarts:
    """An executor whose actors never run (Ray with no room for them)."""

    actors = 3
    block_rows = 8

    def __init__(self) -> None:
        self.closed = threading.Event()
        self.notes = 0

    def describe(self) -> str:
        return "an engine that never starts"

    def start(self) -> None:
        """Joined at once."""

    def awaiting(self) -> str:
        self.notes += 1
        return "3 actors (0.25 CPU each) and the read task (1 CPU)"

    def batches(self, spool: Any, config: Any) -> Iterator[Any]:
        self.closed.wait()
        yield from ()

    def stop(self) -> None:
        self.closed.set()

    def close(self) -> None:
        self.closed.set()


async def test_an_engine_that_never_starts_stops_after_the_start_timeout_with_exit_4(
        tmp_path: Path, space: RunningFakeSpace, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    # Before: nothing said what was awaited, and the run waited forever.
    from pipeline.engines import distributed

    executor = _NeverStarts()
    monkeypatch.setattr(distributed, "WAIT_NOTE_EVERY", 0.1)

    @contextlib.asynccontextmanager
    async def never(opts: EngineOptions, rows: Any, settings: Any, stop: Any, state: Any
                    ) -> AsyncIterator[AsyncIterator[Any]]:
        async with distributed.open_executor(executor, opts, rows, settings, stop, state,
                                             start_timeout=0.5) as results:
            yield results

    write_input(tmp_path / "in.jsonl", messy=False)
    outcome = await run(options(tmp_path, space.url, "out.jsonl",
                                summary_path=str(tmp_path / "summary.json")), engine=never)
    assert outcome.exit_code == 4
    stalled = json.loads((tmp_path / "summary.json").read_text())["stalled"]
    assert "did not start in 0.5 s (--engine-start-timeout)" in stalled
    assert "3 actors (0.25 CPU each) and the read task" in stalled
    assert executor.notes >= 3  # said every WAIT_NOTE_EVERY, then once more at the end
    assert "waiting" in capsys.readouterr().err
    assert executor.closed.is_set() and not (tmp_path / "out.jsonl.spool").exists()
    assert space.space.stats.joins == 0
