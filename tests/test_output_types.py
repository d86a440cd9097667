"""Faithful output: the input's Arrow types for ``id`` and kept columns, typed timestamps.

Runs go through the fake Space end to end; the outputs are read back with pyarrow
and pandas, as the people joining them back to their inputs do.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from run_options import run_options

from pipeline.app import RunOptions, run
from pipeline.client import Timeouts
from pipeline.fake_space import FakeSpaceConfig, run_fake_space
from pipeline.fake_space.server import RunningFakeSpace
from pipeline.parquet_output import OUTPUT_SCHEMA
from pipeline.rowspec import RowSpec

UTC_US = pa.timestamp("us", tz="UTC")

INPUT_SCHEMA = pa.schema([
    ("id", pa.int64()),
    ("prompt", pa.string()),
    ("when", pa.timestamp("ms", tz="Europe/Paris")),
    ("naive", pa.timestamp("ns")),
    ("day", pa.date32()),
    ("price", pa.decimal128(9, 2)),
    ("meta", pa.struct([("lang", pa.string()), ("seen", pa.timestamp("us", tz="UTC")),
                        ("scores", pa.list_(pa.float64()))])),
    ("tags", pa.list_(pa.string())),
    ("blob", pa.binary()),
    ("small", pa.int16()),
])
KEEP = ("when", "naive", "day", "price", "meta", "tags", "blob", "small")


@pytest.fixture
async def space() -> AsyncIterator[RunningFakeSpace]:
    async with run_fake_space(FakeSpaceConfig(gradio_major=4, latency=0.0, chunks=2)) as running:
        yield running


def input_table(n: int = 6) -> pa.Table:
    rows = [{
        "id": 10_000_000_000 + i, "prompt": f"question {i}",
        "when": datetime(2024, 3, 1 + i, 12, 30, 15, 250_000, tzinfo=timezone.utc),
        "naive": pd.Timestamp(2024, 5, 6, 7, 8, 9) + pd.Timedelta(nanoseconds=123_456_789 + i),
        "day": date(2020, 1, 1 + i),
        "price": Decimal(f"{i}.25"),
        "meta": {"lang": "en" if i % 2 else None,
                 "seen": datetime(2023, 1, 1, 0, 0, i, tzinfo=timezone.utc),
                 "scores": [0.5, float(i)]},
        "tags": ["a", "b"][: i % 3] if i != 4 else None,
        "blob": bytes([255, 0, i]),
        "small": -i,
    } for i in range(n)]
    return pa.Table.from_pylist(rows, schema=INPUT_SCHEMA)


def options(source: Path, out: Path, space: RunningFakeSpace, **extra: Any) -> RunOptions:
    return run_options(input=str(source), output=str(out), errors=str(out) + ".errors.jsonl",
                      urls=(space.url,), progress=False, spec=RowSpec(keep=KEEP),
                      timeouts=Timeouts(connect=5, read=5, total=20), **extra)


def by_id(rows: list[dict[str, Any]]) -> dict[Any, dict[str, Any]]:
    return {r["id"]: r for r in rows}


async def test_parquet_output_keeps_the_input_types_and_values(
    tmp_path: Path, space: RunningFakeSpace
) -> None:
    source, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    table = input_table()
    pq.write_table(table, source)
    assert (await run(options(source, out, space))).exit_code == 0

    schema = pq.read_schema(out)
    assert schema.field("id").type == pa.int64()
    for name in KEEP:
        assert schema.field(name).type == INPUT_SCHEMA.field(name).type, name
    assert schema.field("started_at").type == UTC_US
    assert schema.field("finished_at").type == UTC_US

    output = pq.read_table(out)
    assert output.column("id").to_pylist() == table.column("id").to_pylist()  # input order too
    for name in KEEP:
        assert output.column(name).equals(table.column(name)), name
    started = output.column("started_at").to_pylist()
    assert all(isinstance(t, datetime) and t.tzinfo is not None for t in started)
    assert all(abs((t - datetime.now(timezone.utc)).total_seconds()) < 3600 for t in started)

    # A join back to the input needs no cast, in pandas either.
    frame = pd.read_parquet(out)
    assert frame["id"].dtype == "int64"
    assert str(frame["started_at"].dtype).startswith("datetime64[") and \
        str(frame["started_at"].dt.tz) == "UTC"
    joined = frame.merge(table.to_pandas(), on="id", suffixes=("", "_in"))
    assert len(joined) == len(table)
    assert (joined["when"] == joined["when_in"]).all()
    assert (joined["naive"] == joined["naive_in"]).all()  # nanoseconds included


async def test_jsonl_output_keeps_json_types(tmp_path: Path, space: RunningFakeSpace) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.jsonl"
    rows = [{"id": 7, "prompt": "p0", "n": 1, "mixed": 1, "nested": {"a": [1, "x"]}},
            {"id": 8, "prompt": "p1", "n": 2, "mixed": "two", "nested": None},
            {"id": "nine", "prompt": "p2", "n": None, "mixed": [3], "nested": {"b": True}}]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    opts = options(source, out, space)
    opts = RunOptions(**{**opts.__dict__, "spec": RowSpec(keep=("n", "mixed", "nested"))})
    assert (await run(opts)).exit_code == 0
    written = by_id([json.loads(line) for line in out.read_text().splitlines()])
    assert set(written) == {7, 8, "nine"}  # integer ids stay integers
    for row in rows:
        for name in ("n", "mixed", "nested"):
            assert written[row["id"]][name] == row[name]
    assert written[7]["started_at"].endswith("Z")
    datetime.fromisoformat(written[7]["started_at"].replace("Z", "+00:00"))


async def test_jsonl_input_to_parquet_infers_types_and_stores_mixed_columns_as_text(
    tmp_path: Path, space: RunningFakeSpace
) -> None:
    source, out = tmp_path / "in.jsonl", tmp_path / "out.parquet"
    rows = [{"id": 1, "prompt": "p0", "n": 1, "mixed": 1, "obj": {"a": 1}},
            {"id": 2, "prompt": "p1", "n": 2.5, "mixed": "two", "obj": {"b": "x"}},
            {"id": 3, "prompt": "p2", "n": None, "mixed": {"k": [1]}, "obj": None}]
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    opts = options(source, out, space)
    opts = RunOptions(**{**opts.__dict__, "spec": RowSpec(keep=("n", "mixed", "obj"))})
    assert (await run(opts)).exit_code == 0
    schema = pq.read_schema(out)
    assert schema.field("id").type == pa.int64()
    assert schema.field("n").type == pa.float64()
    assert schema.field("mixed").type == pa.string()
    assert schema.field("mixed").metadata == {b"qwen_batch.encoding": b"text"}
    assert schema.field("obj").type == pa.struct([("a", pa.int64()), ("b", pa.string())])
    written = by_id(pq.read_table(out).to_pylist())
    assert [written[i]["mixed"] for i in (1, 2, 3)] == ["1", "two", '{"k": [1]}']
    assert [written[i]["n"] for i in (1, 2, 3)] == [1.0, 2.5, None]
    assert written[2]["obj"] == {"a": None, "b": "x"}


def old_schema_output(path: Path, ids: list[tuple[int, int]]) -> None:
    """An output as earlier versions wrote it: string ids and times, kept times as text."""
    old = pa.schema([(f.name, pa.string()) if f.name in ("id", "started_at", "finished_at")
                     else (f.name, f.type) for f in OUTPUT_SCHEMA]
                    + [("when", pa.string())])
    rows = [{"id": str(i), "sample": 0, "position": p, "prompt": f"question {p}",
             "completion": "earlier", "model": "m", "attempts": 1, "session_hash": "s",
             "url": "u", "started_at": "2024-01-01T00:00:00.125Z",
             "finished_at": "2024-01-01T00:00:01.000Z", "chunks": 1,
             # as earlier versions journaled it: Python's isoformat of the input's value
             "when": input_table().column("when")[p].as_py().isoformat()} for p, i in ids]
    pq.write_table(pa.Table.from_pylist(rows, schema=old), path)


async def test_resume_onto_an_old_string_schema_output_upgrades_it(
    tmp_path: Path, space: RunningFakeSpace
) -> None:
    source, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    table = input_table(4)
    pq.write_table(table, source)
    old_schema_output(out, [(0, 10_000_000_000), (2, 10_000_000_002)])
    outcome = await run(options(source, out, space, resume_any=True))
    assert outcome.exit_code == 0
    assert outcome.summary.skipped_done == 2  # the old string ids still count as done
    schema = pq.read_schema(out)
    assert schema.field("id").type == pa.int64()
    assert schema.field("started_at").type == UTC_US
    assert schema.field("when").type == INPUT_SCHEMA.field("when").type
    written = pq.read_table(out)
    assert written.column("id").to_pylist() == table.column("id").to_pylist()
    assert written.column("when").equals(table.column("when"))
    old_row = written.to_pylist()[0]
    assert old_row["completion"] == "earlier"
    assert old_row["started_at"] == datetime(2024, 1, 1, 0, 0, 0, 125_000, tzinfo=timezone.utc)


async def test_resume_onto_an_old_output_whose_ids_are_not_integers_keeps_string_ids(
    tmp_path: Path, space: RunningFakeSpace
) -> None:
    source, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(input_table(3), source)
    old_schema_output(out, [(0, 10_000_000_000)])
    old = pq.read_table(out)
    ids = pa.array(["0010000000000"], pa.string())  # would not survive a cast to int64
    pq.write_table(old.set_column(0, "id", ids), out)
    outcome = await run(options(source, out, space, resume_any=True))
    assert outcome.exit_code == 0
    schema = pq.read_schema(out)
    assert schema.field("id").type == pa.string()
    assert sorted(pq.read_table(out).column("id").to_pylist()) == \
        ["0010000000000", "10000000000", "10000000001", "10000000002"]


async def test_parts_csv_and_datasets_keep_their_types(tmp_path: Path, space: RunningFakeSpace) -> None:
    # A Hive-partitioned dataset: the partition key is a typed column (int32) too.
    dataset = tmp_path / "data"
    for year in (2023, 2024):
        (dataset / f"year={year}").mkdir(parents=True)
        pq.write_table(input_table(4).slice(2 * (year - 2023), 2), dataset / f"year={year}" / "p.parquet")
    parts = tmp_path / "parts.parquet"
    opts = options(dataset, parts, space, rows_per_file=2)
    opts = RunOptions(**{**opts.__dict__, "spec": RowSpec(keep=("year", "when", "meta"))})
    assert (await run(opts)).exit_code == 0
    files = sorted(parts.glob("part-*.parquet"))
    assert len(files) == 2
    for part in files:
        schema = pq.read_schema(part)
        assert schema.field("id").type == pa.int64()
        assert schema.field("year").type == pa.int32()
        assert schema.field("when").type == INPUT_SCHEMA.field("when").type
        assert schema.field("meta").type == INPUT_SCHEMA.field("meta").type
    rows = [r for part in files for r in pq.read_table(part).to_pylist()]
    assert sorted((r["year"], r["id"]) for r in rows) == [
        (2023, 10_000_000_000), (2023, 10_000_000_001),
        (2024, 10_000_000_002), (2024, 10_000_000_003)]

    # CSV: text unless its types are inferred; then the output keeps those.
    source = tmp_path / "in.csv"
    source.write_text("id,prompt,n,when\n1,a,2.5,2024-01-02T03:04:05\n2,b,,2024-01-03T00:00:00\n")
    out = tmp_path / "csv.parquet"
    opts = options(source, out, space, csv_infer_types=True)
    opts = RunOptions(**{**opts.__dict__, "spec": RowSpec(keep=("n", "when"))})
    assert (await run(opts)).exit_code == 0
    schema = pq.read_schema(out)
    assert (schema.field("id").type, schema.field("n").type) == (pa.int64(), pa.float64())
    # pyarrow infers timestamp[s]; Parquet has no seconds unit and stores milliseconds.
    assert schema.field("when").type == pa.timestamp("ms")
    assert pq.read_table(out).column("when").to_pylist() == [
        datetime(2024, 1, 2, 3, 4, 5), datetime(2024, 1, 3)]
    text_out = tmp_path / "csv-text.parquet"
    opts = RunOptions(**{**opts.__dict__, "output": str(text_out), "csv_infer_types": False,
                         "errors": str(text_out) + ".errors.jsonl"})
    assert (await run(opts)).exit_code == 0
    assert pq.read_table(text_out).column("id").to_pylist() == ["1", "2"]  # "007" stays "007"


def readme_schema_block() -> str:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    marker = "as `pyarrow.parquet.read_schema` prints it:\n\n```text\n"
    start = readme.index(marker) + len(marker)
    return readme[start:readme.index("```", start)]


async def test_the_readme_shows_the_parquet_schema_a_run_writes(
    tmp_path: Path, space: RunningFakeSpace
) -> None:
    source, out = tmp_path / "in.parquet", tmp_path / "out.parquet"
    pq.write_table(pa.table({
        "id": pa.array([1, 2], pa.int64()), "prompt": ["a", "b"], "title": ["t1", None],
        "published": pa.array([datetime(2024, 1, 1, tzinfo=timezone.utc), None],
                              pa.timestamp("ms", tz="UTC"))}), source)
    opts = options(source, out, space)
    opts = RunOptions(**{**opts.__dict__, "spec": RowSpec(keep=("title", "published"))})
    assert (await run(opts)).exit_code == 0
    written = pq.read_schema(out).to_string(show_field_metadata=False, show_schema_metadata=False)
    assert written + "\n" == readme_schema_block(), (
        "README.md's Parquet schema is out of date; the real one:\n" + written)


def test_rows_that_went_through_the_ray_codec_write_the_same_parquet(tmp_path: Path) -> None:
    """The Ray engine ships rows and results as JSON text; the output must not tell."""
    from pipeline.engines.codec import decode_result, decode_row, encode_result, encode_row
    from pipeline.models import PromptRow, RequestTrace, Success
    from pipeline.parquet_output import ParquetOutput
    from pipeline.records import kept_keys, success_record

    table = input_table()
    keep = {name: INPUT_SCHEMA.field(name).type for name in KEEP}
    types = {"id": pa.int64(), **dict(zip(kept_keys(KEEP), keep.values(), strict=True))}
    started = 1_717_228_800_123_000  # 2024-06-01T08:00:00.123Z, in microseconds
    paths = {}
    for engine in ("local", "ray"):
        paths[engine] = tmp_path / f"{engine}.parquet"
        with ParquetOutput(str(paths[engine]), column_types=types) as out:
            for position, values in enumerate(table.to_pylist()):
                row = PromptRow(str(values["id"]), position, values["prompt"],
                                keep={k: values[k] for k in KEEP}, id_value=values["id"])
                if engine == "ray":
                    row = decode_row(encode_row(row))
                trace = RequestTrace("s", url="u", started_at=started, finished_at=started)
                result: Any = Success(row, "answer", trace, 1, "m")
                if engine == "ray":
                    result = decode_result(*encode_result(result))
                out.write(success_record(result))
    local, on_ray = pq.read_table(paths["local"]), pq.read_table(paths["ray"])
    assert on_ray.schema == local.schema
    assert on_ray.equals(local)
    assert local.column("blob").equals(table.column("blob"))
    assert local.column("id").to_pylist() == table.column("id").to_pylist()
