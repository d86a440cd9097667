"""Output order: `qwen-batch sort` puts JSONL in input order; Parquet output is in input order."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline import sort as sort_module
from pipeline.cli import main
from pipeline.errors import OutputError
from pipeline.lock import OutputLock
from pipeline.parquet_output import ParquetOutput
from pipeline.sort import sort_lines, sort_output

FAST = ["--no-progress", "--retry-delay", "0.01", "--retry-max-delay", "0.05"]


def invoke(*args: str):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def keyed(n: int, seed: int = 1) -> list[tuple[tuple[int, int], bytes]]:
    items = [((p, s), json.dumps({"position": p, "sample": s}).encode() + b"\n")
             for p in range(n) for s in range(2)]
    random.Random(seed).shuffle(items)
    return items


# --- the external sort ------------------------------------------------------------------------


def test_sort_lines_in_memory_and_spilled_agree(tmp_path: Path) -> None:
    items = keyed(500)
    assert list(sort_lines(items, tmp_dir=str(tmp_path))) == sorted(items)
    spilled = list(sort_lines(items, run_bytes=2_000, fan_in=3, tmp_dir=str(tmp_path)))
    assert spilled == sorted(items)
    assert os.listdir(tmp_path) == []  # runs and their directory are gone


def test_sort_lines_spills_runs_of_bounded_size(tmp_path: Path, monkeypatch) -> None:
    sizes: list[int] = []
    real = sort_module._write_run

    def spy(scratch: str, index: int, items):  # type: ignore[no-untyped-def]
        path = real(scratch, index, items)
        sizes.append(os.path.getsize(path))
        return path

    monkeypatch.setattr(sort_module, "_write_run", spy)
    items = keyed(2_000)
    assert list(sort_lines(items, run_bytes=20_000, fan_in=1_000)) == sorted(items)
    # every run but the last holds about run_bytes of lines, never the whole input
    assert len(sizes) > 10 and max(sizes) < 20_000


# --- qwen-batch sort --------------------------------------------------------------------------


def write_rows(path: Path, n: int, prefix: str = "") -> list[dict[str, object]]:
    rows = [{"id": f"{prefix}r{i}", "prompt": f"question {i}" + (" [fault:cut:1]" if i == 0 else "")}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def run_job(tmp_path: Path, url: str, output: str, n: int = 10) -> Path:
    source = tmp_path / "in.jsonl"
    write_rows(source, n)
    out = tmp_path / output
    # Row 0 fails once and waits 0.5 s before its retry: it finishes last.
    result = invoke("run", str(source), "-o", str(out), "--url", url, "--no-progress",
                    "--retry-delay", "0.5", "--retry-max-delay", "0.5", "--concurrency", "4")
    assert result.exit_code == 0, result.output
    return out


def test_a_real_run_is_in_completion_order_and_sort_restores_input_order(
    tmp_path: Path, threaded_space
) -> None:
    out = run_job(tmp_path, threaded_space.url, "out.jsonl")
    before = out.read_bytes().splitlines(keepends=True)
    positions = [json.loads(line)["position"] for line in before]
    assert positions != sorted(positions) and positions[-1] == 0  # completion order
    out.chmod(0o640)
    result = invoke("sort", str(out))
    assert result.exit_code == 0, result.output
    assert "10 records now in input order" in result.stderr
    after = out.read_bytes().splitlines(keepends=True)
    assert [json.loads(line)["position"] for line in after] == list(range(10))
    assert sorted(after) == sorted(before)  # the same lines, byte for byte
    assert oct(out.stat().st_mode & 0o777) == oct(0o640)
    assert [p.name for p in tmp_path.iterdir() if "sort" in p.name] == []  # no temp files left
    again = invoke("sort", str(out))
    assert "already in input order, left as is" in again.stderr


def test_sort_refuses_while_a_run_holds_the_lock(tmp_path: Path) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "b", "position": 1}\n{"id": "a", "position": 0}\n')
    before = out.read_bytes()
    with OutputLock(str(out)):
        result = invoke("sort", str(out))
    assert result.exit_code == 1
    assert "is writing to" in result.stderr and str(out) in result.stderr
    assert out.read_bytes() == before


def test_sort_names_a_record_without_position(tmp_path: Path) -> None:
    out = tmp_path / "old.jsonl"
    out.write_text('{"id": "a", "position": 0}\n{"id": "b"}\n')
    result = invoke("sort", str(out))
    assert result.exit_code == 1
    assert f"{out}:2: cannot place this record in input order" in result.stderr


def test_a_failed_rewrite_leaves_the_file_and_no_temp_file(tmp_path: Path, monkeypatch) -> None:
    out = tmp_path / "out.jsonl"
    out.write_text('{"id": "b", "position": 1}\n{"id": "a", "position": 0}\n')
    before = out.read_bytes()

    def refuse(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OutputError, match="No space left on device; the file is unchanged"):
        sort_output(str(out))
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl"]


def test_sort_refuses_directories_and_says_parquet_needs_none(tmp_path: Path) -> None:
    parts = tmp_path / "parts"
    parts.mkdir()
    assert invoke("sort", str(parts)).exit_code == 1
    result = invoke("sort", str(tmp_path / "x.parquet"))
    assert result.exit_code == 0 and "already in input order" in result.stderr


# --- Parquet output order ---------------------------------------------------------------------


def record(position: int, sample: int = 0) -> dict[str, object]:
    return {"id": f"r{position}", "sample": sample, "position": position, "prompt": "p",
            "completion": "c", "model": "m", "attempts": 1}


def test_parquet_output_is_in_input_order_across_resumed_runs(tmp_path: Path) -> None:
    path = str(tmp_path / "out.parquet")
    with ParquetOutput(path, flush_rows=3) as out:  # first run: even rows, finished backwards
        for position in (8, 2, 6, 0, 4):
            out.write(record(position))
    with ParquetOutput(path, flush_rows=3) as out:  # second run: the odd rows, shuffled
        for position in (9, 1, 7, 3, 5):
            out.write(record(position))
        out.write(record(3, sample=1))
    table = pq.read_table(path)
    assert list(zip(table.column("position").to_pylist(), table.column("sample").to_pylist(),
                    strict=True)) == [(p, 0) for p in range(4)] + [(3, 1)] + [
                        (p, 0) for p in range(4, 10)]
    # row groups of flush_rows, not one per interleaved slice
    assert max(pq.ParquetFile(path).metadata.row_group(i).num_rows
               for i in range(pq.ParquetFile(path).num_row_groups)) == 3


def test_a_real_run_to_parquet_is_in_input_order(tmp_path: Path, threaded_space) -> None:
    out = run_job(tmp_path, threaded_space.url, "out.parquet")
    table = pq.read_table(out)
    assert table.column("position").to_pylist() == list(range(10))
    assert table.column("id").to_pylist() == [f"r{i}" for i in range(10)]
    assert table.schema.field("position").type == pa.int64()
