"""The Ray engine on a real local Ray (``--engine ray``), against the fake Space.

Needs ``pip install -e '.[test,ray]'``. Skipped when Ray is not installed, unless
``QWEN_BATCH_REQUIRE_RAY=1`` (CI), which turns the skip into a failure. Each test
starts its own small Ray (a few logical CPUs, no dashboard), about 10-20 s apiece on
2 cores, so there are only a few:

* a batch on Ray gives the same records, errors and summary as the local engine, with
  the in-flight bound of ``actors x per-actor-concurrency``;
* a Ray run killed (SIGKILL) midway and started again sends only the rows still missing
  (the first run loses at most one block's worth of requests: those in flight and a few
  results on their way, see the test) and ends with every id exactly once;
* Ctrl-C and SIGTERM once rows are saved: exit 130 and a summary, Ray's crash handler
  kept off SIGTERM.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from fake_space_process import fake_space_process
from ray_testing import ray_or_skip, settle
from run_options import changed, run_options

from pipeline.app import run
from pipeline.client import Timeouts
from pipeline.fake_space import FakeSpaceConfig, fake_answer, run_fake_space
from pipeline.jsonl import iter_jsonl_records
from pipeline.prompts import DEFAULT_SYSTEM_PROMPT
from pipeline.rowspec import RowSpec

# Ray 2.60 warns about its own deprecated DataContext fields when a context is copied.
pytestmark = [pytest.mark.ray, pytest.mark.filterwarnings("ignore::DeprecationWarning")]

REPO = Path(__file__).resolve().parents[1]
VOLATILE = {"session_hash", "event_id", "started_at", "finished_at", "queue_ms", "ttft_ms",
            "duration_ms", "failed_at"}


@pytest.fixture(autouse=True)
def ray_available() -> None:
    """Skip without Ray; fail instead under QWEN_BATCH_REQUIRE_RAY=1 (CI)."""
    ray_or_skip()


@pytest.fixture
def local_ray() -> Iterator[None]:
    """A small Ray in this process for one test: 4 logical CPUs, no dashboard."""
    import ray

    ray.init(num_cpus=4, include_dashboard=False, object_store_memory=256 << 20,
             logging_level="ERROR")
    try:
        yield
    finally:
        ray.shutdown()


def write_input(path: Path, rows: int, *, messy: bool = False) -> dict[str, str]:
    prompts = {f"row-{i:04d}": f"Question {i}: {i} x {i + 7}? ✓" for i in range(rows)}
    if messy:
        prompts["row-0003"] = "fails [fault:app_error:9]"
    lines = [json.dumps({"id": k, "prompt": v, "n": i}, ensure_ascii=False)
             for i, (k, v) in enumerate(prompts.items())]
    if messy:
        lines.insert(4, "{not json")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return prompts


def stable(records: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    return {(r["id"], r["sample"], r.get("position") if r["id"] is None else None):
            {k: v for k, v in r.items() if k not in VOLATILE} for r in records}


async def test_a_batch_on_ray_gives_the_local_engines_records(tmp_path: Path,
                                                              local_ray: None) -> None:
    rows = 48
    write_input(tmp_path / "in.jsonl", rows, messy=True)
    config = FakeSpaceConfig(gradio_major=4, latency=0.3, chunks=3, heartbeat_interval=0.2)
    async with run_fake_space(config) as space:
        base = run_options(input=str(tmp_path / "in.jsonl"), output="", errors="",
                          spec=RowSpec(keep=("n",)), urls=(space.url,), progress=False,
                          concurrency=4, adaptive=False, max_attempts=2,
                          base_delay=0.01, max_delay=0.02,
                          timeouts=Timeouts(connect=5, read=10, idle=5, total=30))
        local = await run(replace(base, output=str(tmp_path / "local.jsonl"),
                                  errors=str(tmp_path / "local.errors.jsonl")))
        local_peak = space.space.stats.max_running
        space.space.stats.max_running = 0
        on_ray = await run(changed(base, kind="ray", actors=2, per_actor_concurrency=2,
                                   output=str(tmp_path / "ray.jsonl"),
                                   errors=str(tmp_path / "ray.errors.jsonl")))
        ray_peak = space.space.stats.max_running
    assert on_ray.exit_code == local.exit_code == 3
    assert (on_ray.summary.succeeded, on_ray.summary.failed, on_ray.summary.input_errors) == \
        (local.summary.succeeded, local.summary.failed, local.summary.input_errors) == \
        (rows - 1, 1, 1)
    assert stable(list(iter_jsonl_records(str(tmp_path / "ray.jsonl")))) == \
        stable(list(iter_jsonl_records(str(tmp_path / "local.jsonl"))))
    assert stable(list(iter_jsonl_records(str(tmp_path / "ray.errors.jsonl")))) == \
        stable(list(iter_jsonl_records(str(tmp_path / "local.errors.jsonl"))))
    # 2 actors x 2: the global bound holds, and the actors share the work (both ran).
    assert local_peak == 4
    assert 3 <= ray_peak <= 4
    assert on_ray.summary.concurrency["ceiling"] == 4


class Driver:
    """``qwen-batch run --engine ray`` as a child process in its own session."""

    def __init__(self, cmd: list[str], logs: Path, name: str) -> None:
        self.stderr_path = logs / f"{name}.stderr"
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("QWEN_BATCH_", "RAY_")) and k != "HF_TOKEN"}
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err, cwd=REPO,
                                         env=env, start_new_session=True)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the Ray run did not end in {timeout} s; stderr:\n{self.stderr}")

    def kill(self) -> None:
        """SIGKILL the driver, then what is left of its process group.

        Its private Ray's GCS and raylet die with it, but Ray's per-node agents
        (DashboardAgent, RuntimeEnvAgent) linger for about a minute: they are ours, so
        they go too (workers, in groups of their own, die with the raylet).
        """
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        time.sleep(2)
        with contextlib.suppress(ProcessLookupError):  # our child's group, nothing else
            os.killpg(self.proc.pid, signal.SIGKILL)


def lines_in(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0




def test_a_killed_ray_run_resumed_on_ray_sends_only_the_remaining_rows(tmp_path: Path) -> None:
    """Kill -9 the driver midway: it loses at most one block's worth of rows (16).

    The rows the killed run sent but did not save are bounded by ``block`` (4 x 4 rows),
    with room to spare on a loaded machine. What they are:

    * the requests in flight when the driver died: at most ``actors x per_actor`` = 8.
      The actors watch the driver's process (a private Ray) and stop at once: no
      request starts after the kill, though the actors outlive the driver by a second
      or two;
    * results finished but not yet written: per actor fewer than ``flush_rows`` (2 at 4
      in flight) waiting for its next table, and the tables on their way through Ray
      to the driver, which writes each result as its table arrives (typically one
      table per actor or none, under a second's lag even on 2 busy cores).

    Measured on 2 cores, idle or with four busy loops: 8-12 lost. Before, when an actor
    handed a block back only once it was all answered: 48 (three blocks of 16). The kill
    comes at an arbitrary moment, so only the bound is asserted.
    """
    rows, actors, per_actor = 160, 2, 4
    block = per_actor * 4  # the rows an actor is given at once: 4 x its window
    prompts = write_input(tmp_path / "in.jsonl", rows)
    out = tmp_path / "out.jsonl"
    with fake_space_process(latency=0.3, chunks=3) as space:
        cmd = [sys.executable, "-m", "pipeline", "run", str(tmp_path / "in.jsonl"), "-o",
               str(out), "--url", space.url, "--engine", "ray", "--actors", str(actors),
               "--per-actor-concurrency", str(per_actor), "--fixed-concurrency",
               "--no-progress", "--retry-delay", "0.05", "--retry-max-delay", "0.2"]
        first = Driver(cmd, tmp_path, "first")
        try:
            deadline = time.monotonic() + 120
            while lines_in(out) < 40:
                if first.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"no progress to kill in (exit {first.proc.poll()}); "
                                f"stderr:\n{first.stderr}")
                time.sleep(0.05)
        finally:
            first.kill()
        joins_first = settle(space)  # no straggler of the killed run may count as the second's
        saved = lines_in(out)
        assert 40 <= saved < rows
        assert "at most 8 requests in flight" in first.stderr

        second = Driver(cmd, tmp_path, "second")
        code = second.wait(180)
        assert code == 0, second.stderr
        joins_second = settle(space) - joins_first
        stats = space.stats()

    records = list(iter_jsonl_records(str(out)))
    ids = Counter(r["id"] for r in records)
    assert len(ids) == rows and set(ids.values()) == {1}, "every id exactly once"
    for record in records:
        assert record["completion"] == fake_answer(prompts[record["id"]], DEFAULT_SYSTEM_PROMPT)
    # The resumed run asked for exactly the rows missing from the output: nothing twice.
    assert joins_second == rows - saved
    # The killed run lost its requests in flight and the results on their way: at most a
    # block's worth (see the docstring), not the rest of every actor's block.
    lost = joins_first - saved
    assert 0 <= lost <= block, (joins_first, saved)
    assert stats["failed"] == 0
    print(f"\nkilled Ray run: {saved} rows saved, {lost} requested but lost; "
          f"resumed Ray run: {joins_second} requests for {rows - saved} missing rows")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_on_a_private_ray_ends_with_130_and_a_summary(
        tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C or SIGTERM once rows are saved: the dataset stops, then the private Ray,
    exit 130 and a summary. Before: Ray's C++ crash handler caught SIGTERM and aborted
    the driver (SIGABRT) 3 s later whenever the stop took longer."""
    write_input(tmp_path / "in.jsonl", 200)
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    with fake_space_process(latency=0.3, chunks=3) as space:
        cmd = [sys.executable, "-m", "pipeline", "run", str(tmp_path / "in.jsonl"), "-o",
               str(out), "--url", space.url, "--engine", "ray", "--actors", "1",
               "--per-actor-concurrency", "4", "--no-progress", "--summary", str(summary)]
        driver = Driver(cmd, tmp_path, "driver")
        try:
            deadline = time.monotonic() + 120
            while lines_in(out) < 1:
                if driver.proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"no row saved (exit {driver.proc.poll()}); "
                                f"stderr:\n{driver.stderr}")
                time.sleep(0.05)
            sent = time.monotonic()
            driver.proc.send_signal(sig)
            code = driver.wait(60)
            took = time.monotonic() - sent
        finally:
            driver.kill()
    assert code == 130, driver.stderr
    assert "*** SIGTERM received" not in driver.stderr  # Ray's crash handler stayed out
    report = json.loads(summary.read_text())
    assert report["interrupted"] is True
    assert report["succeeded"] == lines_in(out)
    assert not Path(str(out) + ".spool").exists()
    print(f"\n{sig.name} on a private Ray: exit {code} {took:.1f} s after the signal")


@pytest.mark.parametrize("stop", ["deadline", "failures"])
def test_a_deadline_or_failing_rows_on_a_private_ray_end_with_their_exit_code_and_a_summary(
        tmp_path: Path, stop: str) -> None:
    """The other stop paths on a private Ray: ``--deadline`` (exit 0, the rest remaining)
    and rows failing in a row (exit 4): a summary, no spool, whatever Ray was doing."""
    rows = 200
    prompt = "fails [fault:app_error:99] {}" if stop == "failures" else "Question {}"
    (tmp_path / "in.jsonl").write_text("".join(
        json.dumps({"id": f"r{i:04d}", "prompt": prompt.format(i)}) + "\n" for i in range(rows)),
        encoding="utf-8")
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    extra = (["--deadline", "15s", "--grace", "5"] if stop == "deadline" else
             ["--max-attempts", "1", "--max-consecutive-failures", "5"])
    with fake_space_process(latency=0.3, chunks=3) as space:
        cmd = [sys.executable, "-m", "pipeline", "run", str(tmp_path / "in.jsonl"), "-o",
               str(out), "--url", space.url, "--engine", "ray", "--actors", "1",
               "--per-actor-concurrency", "2", "--no-progress", "--summary", str(summary),
               *extra]
        driver = Driver(cmd, tmp_path, "driver")
        try:
            code = driver.wait(180)
        finally:
            driver.kill()
    report = json.loads(summary.read_text())
    saved = lines_in(out)
    if stop == "deadline":
        assert code == 0, driver.stderr
        assert report["deadline_hit"] is True and report["remaining"] == rows - saved, report
        assert report["succeeded"] == saved < rows, report
    else:
        assert code == 4, driver.stderr
        assert report["endpoint_down"] and report["succeeded"] == 0, report
        assert 5 <= report["failed"] < rows, report
    assert not Path(str(out) + ".spool").exists()
