"""End-to-end: the real ``qwen-batch run`` CLI, as a subprocess, against real gradio servers.

Each test runs for gradio 4.44.1 and 6.x (tests/gradio_space_app.py in the gradio virtualenvs,
see tests/test_real_gradio.py for how to build them):

    eval "$(bash .ci/gradio-envs.sh)"
    QWEN_BATCH_REQUIRE_GRADIO=1 .venv/bin/python -m pytest tests/test_real_gradio_batch.py

Without QWEN_BATCH_GRADIO6_PYTHON / QWEN_BATCH_GRADIO4_PYTHON the tests of that major are
skipped, unless QWEN_BATCH_REQUIRE_GRADIO=1, which turns the skip into a failure.
All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from real_gradio import (
    DEFAULT_SYSTEM,
    GradioServer,
    answer_for,
    gradio_python_or_skip,
    start_gradio_server,
)

pytestmark = pytest.mark.gradio

MAJORS = [6, 4]
ENV_VARS = {6: "QWEN_BATCH_GRADIO6_PYTHON", 4: "QWEN_BATCH_GRADIO4_PYTHON"}
CLI_TIMEOUT_S = 120.0
FAST_RETRIES = ["--retry-delay", "0.05", "--retry-max-delay", "0.5"]
SYSTEM_A = "Réponds en français, s'il te plaît ✓"
SYSTEM_B = "Be brief. Be brief. 簡潔に"


# ------------------------------------------------------------------------------------ servers
def _start(major: int, env: dict[str, str]) -> GradioServer:
    python = gradio_python_or_skip(ENV_VARS[major])
    server = start_gradio_server(python, env_overrides=env)
    if server.major != major:
        server.stop()
        pytest.fail(
            f"{ENV_VARS[major]}={python} runs gradio {server.version}, expected {major}.x",
            pytrace=False,
        )
    return server


def _module_server(major: int) -> Iterator[GradioServer]:
    server = _start(major, {"GRADIO_FAKE_WORD_DELAY": "0.01"})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gradio6_batch_server() -> Iterator[GradioServer]:
    yield from _module_server(6)


@pytest.fixture(scope="module")
def gradio4_batch_server() -> Iterator[GradioServer]:
    yield from _module_server(4)


@pytest.fixture(params=MAJORS, ids=lambda m: f"gradio{m}")
def major(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
def server(major: int, request: pytest.FixtureRequest) -> GradioServer:
    """The module-scoped server of this test's major (started on first use)."""
    return request.getfixturevalue(f"gradio{major}_batch_server")  # type: ignore[no-any-return]


# ------------------------------------------------------------------------------------ the CLI
@dataclass
class CliRun:
    returncode: int
    stdout: str
    stderr: str
    output: Path
    errors: Path
    summary: Path

    def records(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.output)

    def error_records(self) -> list[dict[str, Any]]:
        return _read_jsonl(self.errors)

    def summary_json(self) -> dict[str, Any]:
        return json.loads(self.summary.read_text(encoding="utf-8"))  # type: ignore[no-any-return]

    def describe(self) -> str:
        return f"exit {self.returncode}\n--- stderr:\n{self.stderr[-6000:]}"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def _write_rows(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def run_cli(tmp_path: Path, rows: list[dict[str, Any]], url: str, *extra: str,
            verbose: bool = False) -> CliRun:
    """``python -m pipeline [-v] run`` on ``rows`` against ``url``; output beside the input."""
    source = tmp_path / "prompts.jsonl"
    _write_rows(source, rows)
    output = tmp_path / "out.jsonl"
    summary = tmp_path / "summary.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_BATCH_")}
    env.pop("HF_TOKEN", None)
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
               PYTHONIOENCODING="utf-8")
    command = [
        sys.executable, "-m", "pipeline", *(["-v"] if verbose else []),
        "run", str(source), "-o", str(output),
        "--url", url, "--no-progress", "--summary", str(summary), *FAST_RETRIES, *extra,
    ]
    done = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, encoding="utf-8",
        timeout=CLI_TIMEOUT_S, check=False,
    )
    return CliRun(done.returncode, done.stdout, done.stderr, output,
                  tmp_path / "out.errors.jsonl", summary)


def expected_completion(row: dict[str, Any]) -> str:
    return answer_for(row["prompt"], row.get("system") or DEFAULT_SYSTEM)


def assert_exact_once(records: list[dict[str, Any]], rows: list[dict[str, Any]], url: str,
                      run: CliRun) -> None:
    """Every row of ``rows`` exactly once in ``records``, with the exact completion."""
    counts = Counter(r["id"] for r in records)
    assert counts == Counter(row["id"] for row in rows), (counts, run.describe())
    by_id = {r["id"]: r for r in records}
    for row in rows:
        record = by_id[row["id"]]
        assert record["completion"] == expected_completion(row), (row, record)
        assert record["prompt"] == row["prompt"]
        assert record["system"] == (row.get("system") or DEFAULT_SYSTEM)
        assert record["url"] == url, record
        assert record["sample"] == 0


# -------------------------------------------------------------------------------------- rows
def batch_rows() -> list[dict[str, Any]]:
    """20 single-line prompts: repeated words, non-ASCII, some with their own system prompt."""
    prompts = [
        "hello hello hello",
        "naïve café — 東京 ✓",
        "the the the the the",
        "Grüße aus Köln, Ünïcödé!",
        "emoji 🙂🙂 and more 🙂",
        "no no no",
        "Привет, мир! мир мир",
        "a",
        "repeat repeat — repeat — repeat",
        "数学 数学 数学 question?",
        "double  spaces  and  more  spaces",
        "quote \"inside\" and 'single'",
        "ελληνικά και ελληνικά",
        "x x x x x x x x x x",
        "mixed: ASCII, é, ß, 中, ✓, 🚀",
        "Echo: fake | system: fake",
        "trailing punctuation...!!!",
        "עברית עברית",
        "numbers 1 2 3 1 2 3",
        "last one — fin ✓",
    ]
    rows: list[dict[str, Any]] = []
    for n, prompt in enumerate(prompts):
        row: dict[str, Any] = {"id": f"row-{n:02d}", "prompt": prompt}
        if n % 3 == 1:
            row["system"] = SYSTEM_A if n % 2 else SYSTEM_B
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------------- tests
def test_batch_exact_completions(server: GradioServer, tmp_path: Path) -> None:
    """~20 rows, 4 in flight: exit 0, every id once, the exact streamed answer, real chunks."""
    rows = batch_rows()
    assert len({r["id"] for r in rows}) == 20 and any("system" in r for r in rows)
    run = run_cli(tmp_path, rows, server.url, "--concurrency", "4", "--max-attempts", "3")
    assert run.returncode == 0, run.describe()
    records = run.records()
    assert_exact_once(records, rows, server.url, run)
    for record in records:
        assert record["chunks"] > 1, record  # streamed, not one final blob
        assert record["attempts"] == 1, record
    assert run.error_records() == []
    summary = run.summary_json()
    assert summary["succeeded"] == 20 and summary["failed"] == 0, summary


@pytest.fixture
def queue_full_server(major: int) -> Iterator[GradioServer]:
    """One job at a time, one waiting: every further join gets 503 "Queue is full"."""
    server = _start(major, {
        "GRADIO_FAKE_MAX_SIZE": "1",
        "GRADIO_FAKE_CONCURRENCY_LIMIT": "1",
        # ~15 words a reply: ~0.4 s each
        "GRADIO_FAKE_WORD_DELAY": "0.025",
    })
    try:
        yield server
    finally:
        server.stop()


def test_queue_full_is_ridden_out(queue_full_server: GradioServer, tmp_path: Path) -> None:
    """6 in flight on a queue of 1: 503s happen, are retried, and every row ends exact."""
    server = queue_full_server
    rows = [{"id": f"q{n}", "prompt": f"queued {n} — naïve ✓ {n} {n}"} for n in range(8)]
    run = run_cli(tmp_path, rows, server.url, "--concurrency", "6", "--max-attempts", "20",
                  verbose=True)
    assert run.returncode == 0, run.describe()
    assert_exact_once(run.records(), rows, server.url, run)
    assert run.error_records() == []
    summary = run.summary_json()
    assert summary["succeeded"] == 8 and summary["failed"] == 0, summary
    assert summary["retries"] > 0, summary  # the queue really was full
    assert "queue_full" in run.stderr, run.describe()  # and that is why they were retried


def test_app_error_mid_stream(server: GradioServer, tmp_path: Path) -> None:
    """A row whose app raises after 3 yields fails alone (app_error, both attempts used)."""
    rows = batch_rows()[:6]
    rows.insert(3, {"id": "boom", "prompt": "RAISE_LATER"})
    run = run_cli(tmp_path, rows, server.url, "--concurrency", "3", "--max-attempts", "2")
    assert run.returncode == 3, run.describe()
    errors = run.error_records()
    assert [e["id"] for e in errors] == ["boom"], errors
    (error,) = errors
    assert error["error_type"] == "app_error", error
    assert error["attempts"] == 2, error
    good = [r for r in rows if r["id"] != "boom"]
    assert_exact_once(run.records(), good, server.url, run)
    summary = run.summary_json()
    assert summary["succeeded"] == len(good) and summary["failed"] == 1, summary
    assert summary["errors_by_type"] == {"app_error": 1}, summary
