"""Output in parts: bounded rows per file, resume across parts, crash leftovers."""

from __future__ import annotations

import json
import os

import pytest

from pipeline.errors import OutputError
from pipeline.partitioned import PartitionedOutput
from pipeline.writers import open_output, part_format


def record(i: int, sample: int = 0) -> dict:
    return {"id": f"r{i}", "sample": sample, "completion": f"answer {i}"}


def rows_of(path: str) -> list[dict]:
    if path.endswith(".jsonl"):
        with open(path, encoding="utf-8") as handle:
            return [json.loads(line) for line in handle]
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_parts_hold_at_most_rows_per_file_and_every_record_once(tmp_path, fmt: str) -> None:
    out = tmp_path / "out"
    with PartitionedOutput(str(out), part_format(fmt), rows_per_file=4) as sink:
        for i in range(10):
            sink.write(record(i))
        parts = sink.parts
    assert [os.path.basename(p) for p in parts] == [
        f"part-00000{i}.{fmt}" for i in range(3)]
    assert sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in parts)  # no journals
    sizes = [len(rows_of(p)) for p in parts]
    assert sizes == [4, 4, 2]
    ids = [r["id"] for p in parts for r in rows_of(p)]
    assert ids == [f"r{i}" for i in range(10)]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_resume_reads_every_part_and_fills_the_last_one_first(tmp_path, fmt: str) -> None:
    out = str(tmp_path / "out")
    with PartitionedOutput(out, part_format(fmt), rows_per_file=4) as sink:
        for i in range(6):
            sink.write(record(i))
    sink = PartitionedOutput(out, part_format(fmt), rows_per_file=4)
    assert sink.done_keys() == {(f"r{i}", 0) for i in range(6)}
    for i in range(6, 11):
        sink.write(record(i))
    sink.close()
    sizes = [len(rows_of(p)) for p in sink.parts]
    assert sizes == [4, 4, 3]  # the half-full part was filled before a new one began
    assert sorted(r["id"] for p in sink.parts for r in rows_of(p)) == sorted(
        f"r{i}" for i in range(11))


def test_an_unfinished_parquet_part_left_by_a_crash_is_finished_by_the_next_run(tmp_path) -> None:
    out = str(tmp_path / "out")
    crashed = PartitionedOutput(out, part_format("parquet"), rows_per_file=3)
    for i in range(5):
        crashed.write(record(i))
    # No close(): the second part exists only as its journal, as after a SIGKILL.
    assert sorted(os.listdir(out)) == ["part-000000.parquet", "part-000001.parquet.journal.jsonl"]
    resumed = PartitionedOutput(out, part_format("parquet"), rows_per_file=3)
    assert resumed.done_keys() == {(f"r{i}", 0) for i in range(5)}
    resumed.write(record(5))
    resumed.write(record(6))
    resumed.close()
    assert sorted(os.listdir(out)) == [f"part-00000{i}.parquet" for i in range(3)]
    assert [len(rows_of(p)) for p in resumed.parts] == [3, 3, 1]


def test_open_output_makes_parts_when_rows_per_file_is_given(tmp_path) -> None:
    out = str(tmp_path / "completions.parquet")
    sink = open_output(out, rows_per_file=2)
    assert isinstance(sink, PartitionedOutput)
    for i in range(3):
        sink.write(record(i))
    sink.close()
    assert sorted(os.listdir(out)) == ["part-000000.parquet", "part-000001.parquet"]
    jsonl = open_output(str(tmp_path / "plain"), rows_per_file=2)
    assert isinstance(jsonl, PartitionedOutput) and jsonl.format.suffix == ".jsonl"
    jsonl.close()


def test_a_file_where_the_directory_should_be_is_a_clear_error(tmp_path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_text("")
    with pytest.raises(OutputError, match="is a file"):
        PartitionedOutput(str(path), part_format("jsonl"), rows_per_file=10)
    with pytest.raises(OutputError, match="at least 1"):
        PartitionedOutput(str(tmp_path / "d"), part_format("jsonl"), rows_per_file=0)


def test_unrelated_files_in_the_directory_are_left_alone(tmp_path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "README.txt").write_text("notes")
    (out / "part-x.jsonl").write_text("not ours")
    with PartitionedOutput(str(out), part_format("jsonl"), rows_per_file=5) as sink:
        assert sink.done_keys() == set()
        sink.write(record(1))
    assert sorted(os.listdir(out)) == ["README.txt", "part-000000.jsonl", "part-x.jsonl"]
