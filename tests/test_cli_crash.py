"""Crash, signal, torn-line and lock behaviour of ``qwen-batch run`` as a real process.

Each test drives ``python -m pipeline run`` in a child process against the fake
Space in another child process (``fake_space_process``), kills or signals it mid-run,
and checks the files it leaves and what a second run of the same command does: every
id exactly once with the exact answer, and no row that was already saved asked again.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from fake_space_process import FakeSpaceProcess, fake_space_process

from pipeline.fake_space import fake_answer
from pipeline.prompts import DEFAULT_SYSTEM_PROMPT

REPO = Path(__file__).resolve().parents[1]
ROWS = 120
CONCURRENCY = 8
LATENCY = 0.3  # 120 rows / 8 at a time * 0.3 s: a full run takes ~4.5 s of answering
KILL_AFTER = 20  # output lines present before a kill or a signal
RUN_TIMEOUT = 40.0


@pytest.fixture
def space() -> Iterator[FakeSpaceProcess]:
    """The fake Space in its own process (Gradio 4 shape, 5 chunks per answer)."""
    with fake_space_process(latency=LATENCY, chunks=5) as running:
        yield running


# helpers ----------------------------------------------------------------------------


def make_input(tmp_path: Path, rows: int = ROWS) -> dict[str, str]:
    """Write ``prompts.jsonl`` with unique ids and prompts; returns id -> prompt."""
    prompts = {f"row-{i:04d}": f"Question {i}: what is {i} times {i + 7}? (ünïcode ✓)"
               for i in range(rows)}
    with open(tmp_path / "prompts.jsonl", "w", encoding="utf-8") as handle:
        for row_id, prompt in prompts.items():
            handle.write(json.dumps({"id": row_id, "prompt": prompt}, ensure_ascii=False) + "\n")
    return prompts


def run_cmd(tmp_path: Path, output: Path, url: str, *extra: str,
            concurrency: int = CONCURRENCY) -> list[str]:
    return [sys.executable, "-m", "pipeline", "run", str(tmp_path / "prompts.jsonl"),
            "-o", str(output), "--url", url, "--concurrency", str(concurrency),
            "--no-progress", "--retry-delay", "0.05", "--retry-max-delay", "0.2", *extra]


def with_file_size_limit(cmd: list[str], limit: int) -> list[str]:
    """``cmd`` (a ``python -m pipeline ...`` command) with RLIMIT_FSIZE set to ``limit`` bytes.

    Past the limit a write fails with EFBIG (Python ignores SIGXFSZ): a disk that fills up
    in the middle of a run, without filling a disk. A wrapper instead of ``preexec_fn``,
    which is unsafe in a parent with threads (the fake Space's stderr reader).
    """
    assert cmd[1:3] == ["-m", "pipeline"]
    wrapper = ("import resource, sys\n"
               f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))\n"
               "from pipeline.cli import main\n"
               "main(args=sys.argv[1:], prog_name='qwen-batch')\n")
    return [cmd[0], "-c", wrapper, *cmd[3:]]


class Run:
    """A ``qwen-batch run`` child process whose stdout/stderr go to files (no pipe to fill)."""

    def __init__(self, cmd: list[str], logs: Path, name: str) -> None:
        self.stdout_path = logs / f"{name}.stdout"
        self.stderr_path = logs / f"{name}.stderr"
        # No option may come from the caller's environment (QWEN_BATCH_PROXY, ..._CONFIG...).
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("QWEN_BATCH_") and k != "HF_TOKEN"}
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                         cwd=REPO, env=env)

    def wait(self, timeout: float = RUN_TIMEOUT) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"qwen-batch did not end in {timeout} s; stderr:\n{self.stderr}")

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def runs() -> Iterator[list[Run]]:
    """Every Run started by a test, killed at the end whatever happened."""
    started: list[Run] = []
    yield started
    for run in started:
        run.kill()


def start(runs: list[Run], cmd: list[str], tmp_path: Path) -> Run:
    run = Run(cmd, tmp_path, f"run{len(runs)}")
    runs.append(run)
    return run


def run_to_end(runs: list[Run], cmd: list[str], tmp_path: Path) -> tuple[int, str]:
    run = start(runs, cmd, tmp_path)
    return run.wait(), run.stderr


def whole_lines(path: Path) -> list[dict[str, Any]]:
    """The records of a JSONL file, asserting that every line is whole, valid JSON."""
    data = path.read_bytes() if path.exists() else b""
    assert not data or data.endswith(b"\n"), f"{path.name} ends in a torn line: {data[-80:]!r}"
    records = []
    for number, line in enumerate(data.splitlines(), 1):
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"{path.name}:{number} is not valid JSON: {line[:120]!r}")
        assert isinstance(record, dict), f"{path.name}:{number} is not an object"
        records.append(record)
    return records


def count_lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def wait_for_lines(path: Path, count: int, run: Run, timeout: float = 20.0) -> None:
    """Poll ``path`` until it holds ``count`` lines; fail if the run ends first."""
    deadline = time.monotonic() + timeout
    while count_lines(path) < count:
        if run.proc.poll() is not None:
            pytest.fail(f"the run ended ({run.proc.returncode}) before {count} lines were "
                        f"written to {path.name}; stderr:\n{run.stderr}")
        if time.monotonic() > deadline:
            pytest.fail(f"{path.name} did not reach {count} lines in {timeout} s")
        time.sleep(0.02)


def assert_complete(records: list[dict[str, Any]], prompts: dict[str, str]) -> None:
    """Every id exactly once, with its own prompt and the fake model's exact answer."""
    counts = Counter(r["id"] for r in records)
    duplicated = sorted(i for i, n in counts.items() if n > 1)
    assert not duplicated, f"ids written more than once: {duplicated[:10]}"
    assert set(counts) == set(prompts), (
        f"missing {sorted(set(prompts) - set(counts))[:10]}, "
        f"unexpected {sorted(set(counts) - set(prompts))[:10]}")
    for record in records:
        prompt = prompts[record["id"]]
        assert record["prompt"] == prompt
        assert record["system"] == DEFAULT_SYSTEM_PROMPT
        assert record["completion"] == fake_answer(prompt, DEFAULT_SYSTEM_PROMPT), record["id"]


def assert_partial(records: list[dict[str, Any]], prompts: dict[str, str]) -> None:
    """A stopped run's output: some rows, each once and exact, not all of them."""
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "a stopped run wrote an id twice"
    assert KILL_AFTER <= len(ids) < len(prompts), f"{len(ids)} rows: not stopped mid-run"
    for record in records:
        assert record["completion"] == fake_answer(prompts[record["id"]], DEFAULT_SYSTEM_PROMPT)


def assert_resume_asked_only_missing(
    before: dict[str, Any], after: dict[str, Any], saved: set[str], prompts: dict[str, str]
) -> None:
    """The second run joined once per missing row, and never for a row already saved.

    ``before``/``after`` are fake Space stats around the second run; ``saved`` are the
    ids in the output when the first run died. Faults are off, so no retries.
    """
    first_joins = before["joins"]
    # The first run asked each saved row once, plus the rows it had not saved when it died:
    # at most ``concurrency`` in flight and (rarely) some answered but not yet written; the
    # runner holds at most 2 * concurrency jobs, which bounds both together.
    lost = first_joins - len(saved)
    assert 0 <= lost <= 2 * CONCURRENCY, (first_joins, len(saved))
    second_joins = after["joins"] - first_joins
    assert second_joins == len(prompts) - len(saved), (second_joins, len(prompts), len(saved))
    assert after["joins"] <= len(prompts) + 2 * CONCURRENCY
    a0, a1 = before["attempts_by_prompt"], after["attempts_by_prompt"]
    again = sorted(i for i in saved if a1.get(prompts[i], 0) != a0.get(prompts[i], 0))
    assert not again, f"rows already in the output were asked again: {again[:10]}"
    assert all(a0.get(prompts[i]) == 1 for i in saved), "a saved row was asked more than once"
    missing = [i for i in prompts if i not in saved]
    assert all(a1.get(prompts[i], 0) - a0.get(prompts[i], 0) == 1 for i in missing)
    assert after["running"] == 0 and after["waiting"] == 0


def settled_stats(space: FakeSpaceProcess, timeout: float = 5.0) -> dict[str, Any]:
    """The fake Space's stats once no job runs or waits any more.

    A job the client could not cancel (killed before it read the event id, or a cancel
    racing the exit) has no reader and runs out its latency on the Space: wait for that.
    """
    deadline = time.monotonic() + timeout
    while True:
        stats = space.stats()
        if stats["running"] == 0 and stats["waiting"] == 0:
            return stats
        if time.monotonic() > deadline:
            pytest.fail(f"jobs still running on the fake Space {timeout} s after the run: {stats}")
        time.sleep(0.05)


def assert_no_errors_recorded(output: Path) -> None:
    errors = output.with_name(output.stem + ".errors.jsonl")
    assert whole_lines(errors) == [], "cancelled or killed rows must not be recorded as failures"


# 1 + 2: SIGKILL, then resume --------------------------------------------------------------


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_sigkill_mid_run_then_resume_finishes_each_row_once(
    tmp_path: Path, space: FakeSpaceProcess, runs: list[Run], suffix: str
) -> None:
    prompts = make_input(tmp_path)
    output = tmp_path / f"out.{suffix}"
    journal = tmp_path / f"out.{suffix}.journal.jsonl"
    written = journal if suffix == "parquet" else output  # where rows land as they finish
    cmd = run_cmd(tmp_path, output, space.url)

    first = start(runs, cmd, tmp_path)
    wait_for_lines(written, KILL_AFTER, first)
    first.kill()
    assert first.proc.returncode == -signal.SIGKILL

    saved_records = whole_lines(written)  # one os.write per record: a kill tears nothing
    assert_partial(saved_records, prompts)
    saved = {r["id"] for r in saved_records}
    if suffix == "parquet":
        assert journal.exists()
        assert not output.exists(), "the Parquet file is only written when a run closes"
    stats_before = settled_stats(space)

    code, stderr = run_to_end(runs, cmd, tmp_path)
    assert code == 0, stderr
    assert f"skipped     {len(saved)} " in stderr, stderr
    assert f"done        {len(prompts) - len(saved)} row" in stderr, stderr
    if suffix == "parquet":
        table = pq.read_table(output)
        assert_complete(table.to_pylist(), prompts)
        assert not journal.exists(), "the journal must be merged and removed"
        assert not (tmp_path / "out.parquet.tmp").exists()
    else:
        assert_complete(whole_lines(output), prompts)
    assert_resume_asked_only_missing(stats_before, settled_stats(space), saved, prompts)
    assert_no_errors_recorded(output)


# 3: SIGINT / SIGTERM ------------------------------------------------------------------


@pytest.mark.parametrize(("sig", "suffix"), [(signal.SIGINT, "jsonl"), (signal.SIGTERM, "parquet")],
                         ids=["SIGINT-jsonl", "SIGTERM-parquet"])
def test_signal_stops_with_130_and_summary_then_rerun_completes(
    tmp_path: Path, space: FakeSpaceProcess, runs: list[Run], sig: signal.Signals, suffix: str
) -> None:
    prompts = make_input(tmp_path)
    output = tmp_path / f"out.{suffix}"
    journal = tmp_path / f"out.{suffix}.journal.jsonl"
    cmd = run_cmd(tmp_path, output, space.url)

    first = start(runs, cmd, tmp_path)
    wait_for_lines(journal if suffix == "parquet" else output, KILL_AFTER, first)
    first.proc.send_signal(sig)
    signalled_at = time.monotonic()
    code = first.wait(timeout=15)
    stop_seconds = time.monotonic() - signalled_at
    stderr = first.stderr
    assert code == 130, stderr
    assert f"{sig.name}: stopping" in stderr, stderr
    again = "press Ctrl-C again" if sig == signal.SIGINT else "send SIGTERM again"
    assert f"({again} to quit at once)" in stderr, stderr
    assert "qwen-batch summary" in stderr and "INTERRUPTED" in stderr, stderr
    assert "Traceback" not in stderr, stderr
    # That in-flight requests are cancelled, not waited for, is shown below from the Space's
    # own counts (assert_partial, cancelled + abandoned); this only guards against a slow exit,
    # with room for a loaded machine.
    assert stop_seconds < 10.0, stop_seconds
    assert not Path(f"{output}.lock").exists(), "the lock must be released and removed at exit"

    if suffix == "parquet":  # a clean stop merges the journal: a complete Parquet file
        assert not journal.exists(), "a stopped run must merge and remove its journal"
        saved_records = pq.read_table(output).to_pylist()
    else:
        saved_records = whole_lines(output)
    assert_partial(saved_records, prompts)
    saved = {r["id"] for r in saved_records}
    assert f"done        {len(saved)} row" in stderr, "the summary must count what was saved"
    assert_no_errors_recorded(output)
    stats_before = settled_stats(space)
    # The requests in flight were dropped (cancel or closed stream), not run to the end.
    assert stats_before["cancelled"] + stats_before["abandoned"] >= 1, stats_before
    assert stats_before["completed"] + stats_before["cancelled"] + stats_before["abandoned"] \
        == stats_before["joins"], stats_before

    code, stderr = run_to_end(runs, cmd, tmp_path)
    assert code == 0, stderr
    assert f"skipped     {len(saved)} " in stderr, stderr
    final = pq.read_table(output).to_pylist() if suffix == "parquet" else whole_lines(output)
    assert_complete(final, prompts)
    assert_resume_asked_only_missing(stats_before, settled_stats(space), saved, prompts)


def _lock_is_free(output: Path) -> bool:
    """Whether nobody holds the flock of ``output`` (taken and dropped at once)."""
    fd = os.open(str(output) + ".lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


# 4: a torn last line -------------------------------------------------------------------


def test_torn_last_line_is_repaired_and_its_row_redone(
    tmp_path: Path, space: FakeSpaceProcess, runs: list[Run]
) -> None:
    prompts = make_input(tmp_path, rows=16)
    output = tmp_path / "out.jsonl"
    cmd = run_cmd(tmp_path, output, space.url)
    code, stderr = run_to_end(runs, cmd, tmp_path)
    assert code == 0, stderr
    records = whole_lines(output)
    assert_complete(records, prompts)

    # Simulate a crash in the middle of the last record: drop it, put back half of it.
    lines = output.read_bytes().splitlines(keepends=True)
    torn = lines[-1]
    torn_id = json.loads(torn)["id"]
    output.write_bytes(b"".join(lines[:-1]) + torn[: len(torn) // 2])
    stats_before = space.stats()

    code, stderr = run_to_end(runs, cmd, tmp_path)
    assert code == 0, stderr
    assert "torn last line" in stderr, stderr
    assert "skipped     15 " in stderr and "done        1 row" in stderr, stderr
    assert_complete(whole_lines(output), prompts)
    stats_after = space.stats()
    assert stats_after["joins"] - stats_before["joins"] == 1, "only the torn row is redone"
    assert stats_after["attempts_by_prompt"][prompts[torn_id]] == 2
    redone = [r for r in whole_lines(output) if r["id"] == torn_id]
    assert len(redone) == 1 and redone[0] == whole_lines(output)[-1]


def test_torn_journal_line_of_parquet_output_is_repaired(
    tmp_path: Path, space: FakeSpaceProcess, runs: list[Run]
) -> None:
    prompts = make_input(tmp_path, rows=16)
    output = tmp_path / "out.parquet"
    journal = tmp_path / "out.parquet.journal.jsonl"
    cmd = run_cmd(tmp_path, output, space.url)
    # What a crash leaves: some rows journaled, the last one cut in half, no Parquet yet.
    done = list(prompts)[:5]
    lines = [json.dumps({"id": i, "sample": 0, "prompt": prompts[i],
                         "system": DEFAULT_SYSTEM_PROMPT,
                         "completion": fake_answer(prompts[i], DEFAULT_SYSTEM_PROMPT),
                         "model": "qwen-qwen2-72b-instruct", "attempts": 1},
                        ensure_ascii=False).encode() + b"\n" for i in done]
    journal.write_bytes(b"".join(lines[:-1]) + lines[-1][:40])

    code, stderr = run_to_end(runs, cmd, tmp_path)
    assert code == 0, stderr
    assert "skipped     4 " in stderr, stderr
    assert_complete(pq.read_table(output).to_pylist(), prompts)
    assert not journal.exists()
    asked = space.stats()["attempts_by_prompt"]
    assert sorted(asked) == sorted(prompts[i] for i in list(prompts)[4:])


# a write error mid-run (disk full) --------------------------------------------------------


def test_write_error_mid_run_keeps_whole_lines_and_cancels_in_flight_requests(
    tmp_path: Path, space: FakeSpaceProcess, runs: list[Run]
) -> None:
    prompts = make_input(tmp_path)
    output = tmp_path / "out.jsonl"
    cmd = run_cmd(tmp_path, output, space.url)
    # ~570 bytes a record: the output fills up after ~25 rows, mid-record.
    code, stderr = run_to_end(runs, with_file_size_limit(cmd, 14_000), tmp_path)
    assert code == 1, stderr
    assert "cannot write to" in stderr and "File too large" in stderr, stderr
    # The batch stops cleanly: no request left running into a closed HTTP session.
    assert "Traceback" not in stderr and "unexpected error" not in stderr, stderr

    saved_records = whole_lines(output)
    assert_partial(saved_records, prompts)
    # The part of the record that fit was taken back: whole lines only, within the limit
    # (exactly at it when the last whole record happened to end there).
    assert output.stat().st_size <= 14_000 and output.read_bytes().endswith(b"\n")
    assert_no_errors_recorded(output)
    saved = {r["id"] for r in saved_records}
    stats_before = settled_stats(space)
    assert stats_before["cancelled"] + stats_before["abandoned"] >= 1, stats_before

    code, stderr = run_to_end(runs, cmd, tmp_path)
    assert code == 0, stderr
    assert_complete(whole_lines(output), prompts)
    assert_resume_asked_only_missing(stats_before, settled_stats(space), saved, prompts)


# 5: the lock -------------------------------------------------------------------------


def test_second_run_on_same_output_is_refused_and_lock_frees_after_sigkill(
    tmp_path: Path, space: FakeSpaceProcess, runs: list[Run]
) -> None:
    prompts = make_input(tmp_path)
    output = tmp_path / "out.jsonl"
    cmd = run_cmd(tmp_path, output, space.url)

    # A slow first run (2 at a time: ~18 s for all rows) cannot finish during the test.
    first = start(runs, run_cmd(tmp_path, output, space.url, concurrency=2), tmp_path)
    wait_for_lines(output, 4, first)  # it holds the lock and is writing
    size_before = output.stat().st_size

    started = time.monotonic()
    second = start(runs, cmd, tmp_path)
    code = second.wait(timeout=15)
    assert code == 1, second.stderr  # README: 1 = another run holds the lock
    assert time.monotonic() - started < 10, "a locked run must give up at once, not wait"
    assert "another qwen-batch run" in second.stderr, second.stderr
    assert f"pid {first.proc.pid}" in second.stderr, second.stderr
    assert "qwen-batch summary" not in second.stderr, "a refused run did no work"

    # The first run is unaffected: still running, still appending whole lines.
    assert first.proc.poll() is None, first.stderr
    wait_for_lines(output, count_lines(output) + 4, first)
    assert output.stat().st_size > size_before
    assert not (tmp_path / "out.errors.jsonl").exists() or \
        whole_lines(tmp_path / "out.errors.jsonl") == []

    first.kill()  # the kernel drops the flock with the process
    saved = {r["id"] for r in whole_lines(output)}
    assert len(saved) < len(prompts), "the first run finished before the kill"
    assert (tmp_path / "out.jsonl.lock").exists(), "the lock file stays (by design)"
    assert _lock_is_free(output)

    # A new run proceeds (and resumes): --limit keeps it short, the resume tests go the whole way.
    code, stderr = run_to_end(runs, [*cmd, "--limit", "8"], tmp_path)
    assert code == 0, stderr
    assert "done        8 row" in stderr, stderr
    records = whole_lines(output)
    assert len(records) == len({r["id"] for r in records}) == len(saved) + 8
    assert all(r["completion"] == fake_answer(prompts[r["id"]], DEFAULT_SYSTEM_PROMPT)
               for r in records)
