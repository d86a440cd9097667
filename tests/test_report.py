"""`qwen-batch report` on outputs made by real runs against the fake Space."""

from __future__ import annotations

import json
import random
import struct
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.digests import DigestSet
from pipeline.report import OutputReport, read_report, render

FAST = ["--no-progress", "--retry-delay", "0.01", "--retry-max-delay", "0.05"]


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def make_input(path: Path) -> None:
    rows = [{"id": f"r{i}", "prompt": f"question {i}"} for i in range(8)]
    rows[1]["prompt"] += " [fault:cut:1]"        # succeeds on its second attempt
    rows[2]["prompt"] += " [fault:app_error:9]"  # fails every attempt
    lines = [json.dumps(r) for r in rows] + ['{"id": "r8"}']  # bad input: no prompt
    path.write_text("\n".join(lines) + "\n")


def real_run(tmp_path: Path, url: str, output: str, *extra: str) -> Path:
    source = tmp_path / "in.jsonl"
    make_input(source)
    out = tmp_path / output
    result = invoke("run", str(source), "-o", str(out), "--url", url, "--max-attempts", "2",
                    *FAST, *extra)
    assert result.exit_code == 3, result.output  # some rows failed, as planned
    return out


@pytest.mark.parametrize(("output", "extra"), [
    ("out.jsonl", ()), ("out.parquet", ()), ("parts.jsonl", ("--rows-per-file", "3")),
    ("parts.parquet", ("--rows-per-file", "3")),
], ids=["jsonl", "parquet", "jsonl-parts", "parquet-parts"])
def test_report_of_a_real_run(tmp_path: Path, threaded_space, output: str,
                              extra: tuple[str, ...]) -> None:
    out = real_run(tmp_path, threaded_space.url, output, *extra)
    result = invoke("report", str(out), "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["records"] == 7 and data["rows"] == 7 and data["samples"] == 1
    assert data["retried_records"] == 1 and data["extra_attempts"] == 1
    assert data["failing"] == 2 and data["errors_by_type"] == {"app_error": 1, "input": 1}
    for metric in ("latency_ms", "ttft_ms", "queue_ms"):
        block = data[metric]
        assert block["count"] == 7 and 0 <= block["p50"] <= block["p90"] <= block["max"]
    assert data["throughput"]["bucket_minutes"] == 1
    assert sum(b["records"] for b in data["throughput"]["buckets"]) == 7
    assert data["first_started_at"] <= data["last_finished_at"]
    assert data["unmerged_journal_records"] == 0
    if extra:
        assert len(data["files"]) == 3  # 7 records in parts of 3

    text = invoke("report", str(out)).stdout
    assert f"qwen-batch report: {out}" in text
    assert "records     7 (7 rows)" in text
    assert "retried     1 records needed more than one attempt (1 extra attempts)" in text
    assert "failing     2 rows in" in text and "(app_error 1, input 1)" in text
    assert "latency     p50 " in text and "throughput  records finished per 1 min:" in text


def test_report_counts_an_unmerged_parquet_journal(tmp_path: Path) -> None:
    out = tmp_path / "out.parquet"
    (tmp_path / "out.parquet.journal.jsonl").write_text(json.dumps(
        {"id": "a", "sample": 0, "duration_ms": 5.0, "finished_at": "2024-05-01T12:00:00.000Z"})
        + "\n")
    data = json.loads(invoke("report", str(out), "--json").stdout)
    assert data["records"] == 1 and data["unmerged_journal_records"] == 1
    assert "records still in a journal" in invoke("report", str(out)).stdout


def test_report_of_a_missing_output_exits_2(tmp_path: Path) -> None:
    result = invoke("report", str(tmp_path / "nothing.jsonl"))
    assert result.exit_code == 2 and "nothing.jsonl: no such output" in result.stderr


def test_throughput_buckets_widen_for_long_spans() -> None:
    report = OutputReport(output="x", errors_file="y")
    ids, rng = DigestSet(), random.Random(0)
    start = datetime(2024, 5, 1, tzinfo=timezone.utc)
    for i in range(3 * 24 * 60):  # one record a minute for three days
        report.add({"id": str(i), "finished_at": (start + timedelta(minutes=i)).isoformat(),
                    "duration_ms": float(i % 100)}, ids, rng)
    width, buckets = report.throughput()
    assert width == 360 and len(buckets) == 12 and {n for _, n in buckets} == {360}
    assert "2024-05-03 18:00" in render(report)  # dates shown once the run spans days
    assert len(report.points) == 3 * 24 * 60  # under the 5,000-point cap: all kept


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


def test_plot_writes_a_png(tmp_path: Path, threaded_space) -> None:
    pytest.importorskip("matplotlib", reason="pip install 'qwen-batch[plot]'")
    out = real_run(tmp_path, threaded_space.url, "out.jsonl")
    image = tmp_path / "run.png"
    result = invoke("report", str(out), "--plot", str(image))
    assert result.exit_code == 0, result.output
    assert f"plot written to {image}" in result.stderr
    assert png_size(image) == (1000, 650)


def test_plot_without_matplotlib_says_how_to_install(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"id": "a", "duration_ms": 5.0}) + "\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import fails as if not installed
    result = invoke("report", str(out), "--plot", str(tmp_path / "run.png"))
    assert result.exit_code == 2
    assert "--plot needs matplotlib" in result.stderr
    assert "pip install 'qwen-batch[plot]'" in result.stderr
    assert not (tmp_path / "run.png").exists()


def test_read_report_reads_the_errors_file_beside_by_default(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text("")
    (tmp_path / "other.jsonl").write_text(json.dumps({"error_type": "timeout"}) + "\n")
    report = read_report(str(out), str(tmp_path / "other.jsonl"))
    assert report.records == 0 and report.errors_by_type == {"timeout": 1}
    assert "records     0 (no completions yet)" in render(report)
