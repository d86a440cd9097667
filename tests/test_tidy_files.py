"""A run leaves only its output and errors: no lock file, and nothing shared between pipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main

FAST = ["--no-progress", "--retry-delay", "0.01", "--retry-max-delay", "0.05"]
REPO = Path(__file__).resolve().parents[1]


def invoke(*args: str, input: str | None = None):
    return CliRunner().invoke(main, list(args), input=input, catch_exceptions=False)


def write_prompts(path: Path, n: int = 3, bad: bool = False) -> Path:
    rows = [{"id": f"p{i}", "prompt": f"question {i}"} for i in range(n)]
    text = "".join(json.dumps(r) + "\n" for r in rows) + ("not json\n" if bad else "")
    path.write_text(text, encoding="utf-8")
    return path


def names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_finished_run_removes_its_lock(tmp_path: Path, threaded_space) -> None:
    source = write_prompts(tmp_path / "in.jsonl", bad=True)
    result = invoke("run", str(source), "-o", str(tmp_path / "out.jsonl"),
                    "--url", threaded_space.url, *FAST)
    assert result.exit_code == 3, result.stderr
    assert names(tmp_path) == ["in.jsonl", "out.errors.jsonl", "out.jsonl", "out.jsonl.input.json"]


def test_a_run_stopped_early_removes_its_lock(tmp_path: Path) -> None:
    source = write_prompts(tmp_path / "in.jsonl")
    result = invoke("run", str(source), "-o", str(tmp_path / "out.jsonl"),
                    "--url", "http://127.0.0.1:9", "--connect-grace", "0", *FAST)
    assert result.exit_code == 4, result.stderr
    assert not (tmp_path / "out.jsonl.lock").exists()


def test_a_missing_input_creates_nothing(tmp_path: Path) -> None:
    result = invoke("run", str(tmp_path / "missing.jsonl"), "-o", str(tmp_path / "out.jsonl"))
    assert result.exit_code == 2
    assert names(tmp_path) == []


@pytest.mark.parametrize("output", ["x.csv", "noext"])
def test_an_output_suffix_error_is_a_usage_error_and_creates_nothing(
    tmp_path: Path, output: str
) -> None:
    source = write_prompts(tmp_path / "in.jsonl")
    result = invoke("run", str(source), "-o", str(tmp_path / output))
    assert result.exit_code == 2, result.stderr
    assert "cannot tell the output format" in result.stderr and "--output-format" in result.stderr
    assert names(tmp_path) == ["in.jsonl"]


def test_parquet_to_stdout_is_a_usage_error(tmp_path: Path) -> None:
    source = write_prompts(tmp_path / "in.jsonl")
    result = invoke("run", str(source), "-o", "-", "--output-format", "parquet")
    assert result.exit_code == 2 and "cannot go to stdout" in result.stderr
    assert names(tmp_path) == ["in.jsonl"]


def test_stdin_needs_an_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("run", "-", input='{"prompt": "hi"}\n')
    assert result.exit_code == 2
    assert "reading stdin (-) needs -o OUTPUT" in result.stderr
    assert names(tmp_path) == []


def test_stdin_to_stdout_needs_an_errors_file(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = invoke("run", "-", "-o", "-", input='{"prompt": "hi"}\n')
    assert result.exit_code == 2
    assert "give --errors FILE" in result.stderr
    assert names(tmp_path) == []


def test_stdin_errors_go_beside_the_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           threaded_space) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "job").mkdir()
    lines = '{"id": "a", "prompt": "hi"}\nnot json\n'
    result = invoke("run", "-", "-o", "job/out.jsonl", "--url", threaded_space.url, *FAST,
                    input=lines)
    assert result.exit_code == 3, result.stderr
    assert names(tmp_path) == ["job"]  # nothing in the working directory
    errors = [json.loads(x) for x in (tmp_path / "job" / "out.errors.jsonl").read_text().splitlines()]
    assert [e["location"] for e in errors] == ["<stdin>:2"]


def test_a_file_to_stdout_puts_its_errors_beside_the_input(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threaded_space
) -> None:
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    source = write_prompts(tmp_path / "in.jsonl", bad=True)
    result = invoke("run", str(source), "-o", "-", "--url", threaded_space.url, *FAST)
    assert result.exit_code == 3, result.stderr
    assert len(result.stdout.splitlines()) == 3
    assert names(work) == []
    assert names(tmp_path) == ["cwd", "in.jsonl", "in.jsonl.errors.jsonl"]


def test_stdin_to_stdout_with_an_errors_file(tmp_path: Path, threaded_space) -> None:
    errors = tmp_path / "pipe.errors.jsonl"
    result = invoke("run", "-", "-o", "-", "--errors", str(errors), "--url", threaded_space.url,
                    *FAST, input='{"id": "a", "prompt": "hi"}\n')
    assert result.exit_code == 0, result.stderr
    assert [json.loads(x)["id"] for x in result.stdout.splitlines()] == ["a"]
    assert names(tmp_path) == ["pipe.errors.jsonl"]


def test_sort_removes_its_lock(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "b", "position": 1}\n{"id": "a", "position": 0}\n')
    result = invoke("sort", str(out))
    assert result.exit_code == 0, result.stderr
    assert names(tmp_path) == ["out.jsonl"]


CONTENDER = textwrap.dedent("""
    import os, sys
    from pipeline.errors import LockedError
    from pipeline.lock import OutputLock
    output, inside, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
    got = clashes = 0
    for _ in range(rounds):
        lock = OutputLock(output)
        try:
            lock.acquire()
        except LockedError:
            continue
        try:
            got += 1
            try:  # only one holder may be inside at a time
                os.close(os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                clashes += 1
                continue
            os.remove(inside)
        finally:
            lock.release()
    print(got, clashes)
""")


def test_runs_taking_and_removing_the_lock_at_once_never_both_hold_it(tmp_path: Path) -> None:
    output, inside = str(tmp_path / "out.jsonl"), str(tmp_path / "inside")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", CONTENDER, output, inside, "200"],
                              stdout=subprocess.PIPE, text=True, env=env) for _ in range(4)]
    results = []
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0
        results.append(tuple(map(int, out.split())))
    assert sum(got for got, _ in results) > 0
    assert [clashes for _, clashes in results] == [0, 0, 0, 0]
    assert names(tmp_path) == []
