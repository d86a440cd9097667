"""Batches bounded in bytes: the Parquet merge and the Parquet readers hold at most their
byte budget (plus one row), whatever the rows' size, and the output is the same."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import parquet_output, readers_arrow, sort
from pipeline.batching import (
    MERGE_BATCH_BYTES,
    READ_BATCH_BYTES,
    parquet_row_bytes,
    rows_within,
    sized_batches,
)
from pipeline.models import RawRecord
from pipeline.parquet_output import ParquetOutput
from pipeline.readers import read_records

MB = 1_000_000


def rec(i: int, **extra: Any) -> dict[str, Any]:
    return {"id": str(i), "sample": 0, "position": i, "prompt": f"p{i}", "completion": f"c{i}",
            "model": "m", "attempts": 1, **extra}


def wide(i: int, size: int = MB) -> str:
    """A distinct value of ``size`` characters (distinct: no dictionary encoding shrinks it)."""
    return f"{i:06d}" + chr(ord("a") + i % 26) * (size - 6)


def test_sized_batches_end_at_the_budget_or_the_row_cap() -> None:
    sizes = [3, 3, 3, 10, 1, 1, 1, 1, 1]
    batches = list(sized_batches(sizes, lambda s: s, max_bytes=6, max_rows=4))
    assert batches == [[3, 3], [3, 10], [1, 1, 1, 1], [1]]
    assert [x for b in batches for x in b] == sizes


def test_rows_within_keeps_at_least_one_row_and_at_most_the_cap() -> None:
    assert rows_within(MB, max_bytes=8 * MB, max_rows=10_000) == 8
    assert rows_within(10 * MB, max_bytes=8 * MB, max_rows=10_000) == 1
    assert rows_within(10, max_bytes=8 * MB, max_rows=10_000) == 10_000
    assert rows_within(0, max_bytes=8 * MB, max_rows=7) == 7


def test_parquet_row_bytes_from_the_footer(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": [str(i) for i in range(20)],
                             "text": [wide(i, 10_000) for i in range(20)]}), path,
                   row_group_size=5)
    meta = pq.ParquetFile(path).metadata
    assert 10_000 <= parquet_row_bytes(meta) < 11_000
    assert parquet_row_bytes(meta, ["id"]) < 100


class Held:
    """Largest number of rows seen at once by each hooked step of the merge."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.rows: dict[str, int] = {}
        real_infer, real_new, real_conform = (parquet_output.infer, parquet_output.new_array,
                                              parquet_output._conform)
        real_run = sort._write_run

        def infer(values: list[Any]) -> Any:
            self.note("infer", len(values))
            return real_infer(values)

        def new_array(values: list[Any], field: pa.Field) -> pa.Array:
            self.note("new rows", len(values))
            return real_new(values, field)

        def conform(batch: pa.RecordBatch, *args: Any) -> pa.Table:
            self.note("old rows", batch.num_rows)
            return real_conform(batch, *args)

        def write_run(scratch: str, index: int, items: Any) -> str:
            if isinstance(items, list):  # a run sorted in memory (not a merge of runs)
                self.note("sort", len(items))
            return real_run(scratch, index, items)

        monkeypatch.setattr(parquet_output, "infer", infer)
        monkeypatch.setattr(parquet_output, "new_array", new_array)
        monkeypatch.setattr(parquet_output, "_conform", conform)
        monkeypatch.setattr(sort, "_write_run", write_run)

    def note(self, step: str, rows: int) -> None:
        self.rows[step] = max(self.rows.get(step, 0), rows)


def row_groups(path: Path) -> list[int]:
    meta = pq.ParquetFile(path).metadata
    return [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]


def test_a_merge_of_megabyte_rows_holds_its_budget_plus_one_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    held = Held(monkeypatch)
    most = MERGE_BATCH_BYTES // MB + 1  # the rows under the budget, and the one that passes it
    path = tmp_path / "out.parquet"
    with ParquetOutput(str(path)) as out:
        for i in reversed(range(0, 40, 2)):  # out of order: the sort has work to do
            out.write(rec(i, context=wide(i)))
    assert set(held.rows) == {"infer", "new rows", "sort"}
    assert max(held.rows.values()) <= most, held.rows
    assert max(row_groups(path)) <= most
    with ParquetOutput(str(path)) as out:  # resumed: the old rows are read back in batches
        for i in range(1, 40, 2):
            out.write(rec(i, context=wide(i)))
    assert held.rows["old rows"] <= most and max(held.rows.values()) <= most, held.rows
    assert max(row_groups(path)) <= most
    table = pq.read_table(path)
    assert table.column("position").to_pylist() == list(range(40))
    assert table.column("context").to_pylist() == [wide(i) for i in range(40)]


def test_an_earlier_versions_output_of_one_big_row_group_is_read_within_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "out.parquet"
    with ParquetOutput(str(path), batch_bytes=1 << 40) as out:  # no byte bound: one row group
        for i in range(20):
            out.write(rec(i, context=wide(i)))
    assert row_groups(path) == [20]
    held = Held(monkeypatch)
    with ParquetOutput(str(path)) as out:
        out.write(rec(20, context="short"))
    assert 0 < held.rows["old rows"] <= MERGE_BATCH_BYTES // MB + 1
    assert pq.read_table(path).column("position").to_pylist() == list(range(21))


def varied(i: int) -> dict[str, Any]:
    """Rows whose kept columns change type along the way (int then float, then text)."""
    when = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc) + dt.timedelta(seconds=i)
    return rec(i, score=i if i < 7 else i + 0.5, tag=i if i < 11 else f"t{i}",
               nested={"k": i, "v": [i] * (i % 3)}, text="x" * (i * 37 % 500),
               started_at=when.isoformat(), finished_at=when.isoformat())


@pytest.mark.parametrize("batch_bytes", [1, 700, 5_000])
def test_byte_bounded_merges_write_the_same_rows_order_and_types(
    tmp_path: Path, batch_bytes: int
) -> None:
    def write(path: Path, budget: int) -> pa.Table:
        with ParquetOutput(str(path), batch_bytes=budget) as out:
            for i in (5, 17, 0, 9, 3, 12, 8, 1):
                out.write(varied(i))
        with ParquetOutput(str(path), batch_bytes=budget) as out:  # resumed, interleaved
            for i in (19, 2, 14, 4, 6, 7, 10, 11, 13, 15, 16, 18):
                out.write(varied(i))
        return pq.read_table(path)

    small = write(tmp_path / "small.parquet", batch_bytes)
    whole = write(tmp_path / "whole.parquet", 1 << 40)
    assert small.schema.equals(whole.schema, check_metadata=True)
    assert small.equals(whole)
    assert small.column("position").to_pylist() == list(range(20))
    assert small.schema.field("score").type == pa.float64()
    if batch_bytes == 1:
        assert max(row_groups(tmp_path / "small.parquet")) == 1
        assert row_groups(tmp_path / "whole.parquet") == [20]


@pytest.mark.parametrize("layout", ["file", "dataset"])
def test_wide_parquet_rows_are_read_in_batches_within_the_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, layout: str
) -> None:
    size = 100_000
    prompts = [wide(i, size) for i in range(60)]
    table = pa.table({"id": [f"r{i}" for i in range(60)], "prompt": prompts})
    if layout == "file":
        path = tmp_path / "in.parquet"
        pq.write_table(table, path)  # one row group, as pq.write_table writes by default
    else:
        path = tmp_path / "in"
        path.mkdir()
        pq.write_table(table.slice(0, 30), path / "a.parquet")
        pq.write_table(table.slice(30), path / "b.parquet")
    batches: list[int] = []
    real_rows = readers_arrow._rows

    def rows(source: Any, *args: Any, **kwargs: Any) -> Any:
        def counted() -> Any:
            for batch in source:
                batches.append(batch.num_rows)
                yield batch
        return real_rows(counted(), *args, **kwargs)

    monkeypatch.setattr(readers_arrow, "_rows", rows)
    items = list(read_records(str(path), batch_size=1024))
    assert [i.values["prompt"] for i in items if isinstance(i, RawRecord)] == prompts
    assert [i.position for i in items if isinstance(i, RawRecord)] == list(range(60))
    assert 1 < max(batches) <= READ_BATCH_BYTES // size + 1


def test_the_spool_writes_a_file_per_byte_budget_of_whole_blocks(tmp_path: Path) -> None:
    from pipeline.engines.distributed import Spool
    from pipeline.models import PromptRow

    spool = Spool(str(tmp_path / "spool"), samples=1, block_rows=2)
    prompts = [wide(i) for i in range(30)]
    for i, prompt in enumerate(prompts):
        spool.add(PromptRow(f"r{i}", i, prompt))
    spool.flush()
    files = [pq.read_table(path).column("rows").to_pylist() for path in spool.paths]
    assert all(len(block) == 2 for blocks in files for block in blocks)  # whole blocks
    assert len(files) > 1 and max(sum(map(len, blocks)) for blocks in files) <= \
        MERGE_BATCH_BYTES // MB + 2  # the budget and the rest of the block that passes it
    assert sum(sum(map(len, blocks)) for blocks in files) == 30
    spool.remove()


def test_an_open_parquet_input_holds_no_page_until_it_is_read(tmp_path: Path) -> None:
    # Written as pq.write_table does by default: 20 KB rows make ~4 MB pages and a ~4 MB
    # dictionary page. A run opens its input early and checks it against the output with
    # a second, fresh read: the first must hold nothing meanwhile.
    path = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(200)],
                             "prompt": [wide(i, 20_000) for i in range(200)]}), path)
    pool = pa.default_memory_pool()
    before = pool.bytes_allocated()
    records = read_records(str(path))
    assert pool.bytes_allocated() - before < 1 << 20
    first = next(records)
    assert isinstance(first, RawRecord) and first.values["prompt"] == wide(0, 20_000)
    assert pool.bytes_allocated() - before > 1 << 20  # now a page is held: the test can see it
    records.close()  # type: ignore[attr-defined]
