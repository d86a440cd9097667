"""The inputs people have: Parquet datasets, CSV/TSV, compressed JSONL, and clear words for bad ones."""

from __future__ import annotations

import gzip
import json
import socket
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.errors import InputError, InputFileError
from pipeline.models import RawRecord
from pipeline.readers import count_rows, detect_format, read_records
from pipeline.rowspec import RowSpec, build_prompt_row

REPO = Path(__file__).resolve().parents[1]
FAST = ["--no-progress", "--retry-delay", "0.01", "--retry-max-delay", "0.05"]


def records(path: Path | str, **kwargs: object) -> list[RawRecord | InputError]:
    return list(read_records(str(path), **kwargs))  # type: ignore[arg-type]


def values(items: list[RawRecord | InputError]) -> list[dict[str, object]]:
    assert all(isinstance(i, RawRecord) for i in items), items
    return [i.values for i in items]  # type: ignore[union-attr]


# --- formats by name --------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "expected"), [
    ("a.csv", "csv"), ("a.TSV", "tsv"), ("a.jsonl.gz", "jsonl"), ("a.ndjson.zst", "jsonl"),
    ("a.csv.gz", "csv"), ("a.tsv.zst", "tsv"), ("a.parquet", "parquet"),
])
def test_formats_look_through_compression_suffixes(name: str, expected: str) -> None:
    assert detect_format(name, None) == expected


def test_a_directory_is_a_parquet_dataset(tmp_path: Path) -> None:
    assert detect_format(str(tmp_path), None) == "parquet"


# --- Parquet datasets -------------------------------------------------------------------------


def write_hive(root: Path) -> None:
    for year, lang, prompts in ((2024, "en", ["a", "b"]), (2024, "fr", ["c"]),
                                (2025, "en", ["d", "e", "f"])):
        folder = root / f"year={year}" / f"lang={lang}"
        folder.mkdir(parents=True)
        pq.write_table(pa.table({"id": [f"{p}1" for p in prompts], "prompt": prompts}),
                       folder / "part-0.parquet", row_group_size=2)
    (root / "_SUCCESS").write_text("")  # what Spark leaves: not a data file


def test_hive_partitioned_dataset_streams_every_file_with_partition_fields(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_hive(root)
    items = records(root, batch_size=1)
    assert [(v["prompt"], v["year"], v["lang"]) for v in values(items)] == [
        ("a", 2024, "en"), ("b", 2024, "en"), ("c", 2024, "fr"),
        ("d", 2025, "en"), ("e", 2025, "en"), ("f", 2025, "en")]
    assert [i.position for i in items] == list(range(6))
    # a person finds a row by its file and its row in that file
    assert items[4].location == f"{root}/year=2025/lang=en/part-0.parquet row 1"
    assert count_rows(str(root), "parquet") == 6


def test_dataset_rows_feed_templates_and_the_run(tmp_path: Path, threaded_space) -> None:
    root = tmp_path / "data"
    write_hive(root)
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, ["run", str(root), "-o", str(out), "--keep", "lang",
                                       "--template", "{prompt} in {lang}", "--url",
                                       threaded_space.url, *FAST], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    done = {r["id"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert done["c1"]["prompt"] == "c in fr" and done["c1"]["lang"] == "fr" and len(done) == 6


def test_dataset_is_read_batch_by_batch_not_whole(tmp_path: Path) -> None:
    root = tmp_path / "big"
    root.mkdir()
    for part in range(4):  # 4 files x 2000 rows x 2 KB = 16 MB of prompts
        pq.write_table(pa.table({"prompt": [f"{part}-{i}" + "x" * 2000 for i in range(2000)]}),
                       root / f"part-{part}.parquet", row_group_size=250)
    items = read_records(str(root), batch_size=100)
    before = pa.total_allocated_bytes()
    first = next(items)
    assert isinstance(first, RawRecord) and first.values["prompt"].startswith("0-0")
    assert pa.total_allocated_bytes() - before < 4 << 20  # one row group, not 16 MB
    assert sum(1 for _ in items) == 7999


def test_a_dataset_file_of_one_big_row_group_is_read_page_by_page(tmp_path: Path) -> None:
    """pyarrow's writer makes one row group per file by default: the reader must not hold it."""
    root = tmp_path / "one-group"
    (root / "lang=en").mkdir(parents=True)
    rows = 6000  # x 2 KB = 12 MB in one row group
    pq.write_table(pa.table({"prompt": [f"{i}-" + "x" * 2000 for i in range(rows)]}),
                   root / "lang=en" / "part-0.parquet", row_group_size=rows)
    items = read_records(str(root), batch_size=100)
    before = pa.total_allocated_bytes()
    first = next(items)
    assert isinstance(first, RawRecord) and first.values == {"prompt": "0-" + "x" * 2000,
                                                             "lang": "en"}
    assert pa.total_allocated_bytes() - before < 4 << 20  # a few pages, not the 12 MB group
    rest = list(items)
    assert len(rest) == rows - 1 and all(isinstance(r, RawRecord) for r in rest)
    assert rest[-1].values["prompt"].startswith(f"{rows - 1}-")
    assert rest[-1].location.endswith(f"part-0.parquet row {rows - 1}")


def test_a_dataset_file_without_a_column_gives_none_for_it(tmp_path: Path) -> None:
    root = tmp_path / "uneven"
    (root / "year=2024").mkdir(parents=True)
    pq.write_table(pa.table({"prompt": ["a"], "topic": ["t"]}), root / "year=2024" / "a.parquet")
    pq.write_table(pa.table({"prompt": ["b"]}), root / "year=2024" / "b.parquet")
    values = [r.values for r in read_records(str(root)) if isinstance(r, RawRecord)]
    assert values == [{"prompt": "a", "topic": "t", "year": 2024},
                      {"prompt": "b", "topic": None, "year": 2024}]


def test_a_directory_without_parquet_files_is_a_file_error(tmp_path: Path) -> None:
    with pytest.raises(InputFileError, match="no Parquet files"):
        read_records(str(tmp_path))
    (tmp_path / "notes.txt").write_text("hello")  # a stray file is named, not skipped silently
    with pytest.raises(InputFileError, match=r"as a Parquet dataset.*notes\.txt"):
        read_records(str(tmp_path))


# --- CSV / TSV --------------------------------------------------------------------------------

CSV = ('id,prompt,system\n'
       '007,hello,\n'                      # line 2: id stays text; empty cell = no system
       '\n'                                # line 3: blank, takes no position
       '8,"two\nlines, quoted",be brief\n'  # lines 4-5
       ',,\n'                              # line 6: an all-empty row, like a blank line
       '9,"",\n'                           # line 7: a quoted "" is an empty string
       '10,1.50,\n')                       # line 8: number-looking text stays text


def test_csv_reads_text_cells_with_true_line_numbers(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text(CSV)
    items = records(path, batch_size=2)
    assert values(items) == [
        {"id": "007", "prompt": "hello", "system": None},
        {"id": "8", "prompt": "two\nlines, quoted", "system": "be brief"},
        {"id": "9", "prompt": "", "system": None},
        {"id": "10", "prompt": "1.50", "system": None},
    ]
    assert [i.location for i in items] == [f"{path}:{n}" for n in (2, 4, 7, 8)]
    assert [i.position for i in items] == [0, 1, 2, 3]
    row = build_prompt_row(items[0], RowSpec())  # type: ignore[arg-type]
    assert row.id == "007" and row.system is None


def test_csv_types_can_be_inferred_on_request(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_text("id,prompt,price\n1,a,1.5\n")
    assert values(records(path, infer_csv_types=True)) == [{"id": 1, "prompt": "a", "price": 1.5}]


def test_tsv_and_compressed_csv(tmp_path: Path) -> None:
    tsv = tmp_path / "in.tsv"
    tsv.write_text("id\tprompt\nr1\thello, world\n")
    assert values(records(tsv)) == [{"id": "r1", "prompt": "hello, world"}]
    packed = tmp_path / "in.csv.gz"
    packed.write_bytes(gzip.compress(b"id,prompt\nr1,hi\nr2,there\n"))
    assert [i.location for i in records(packed)] == [f"{packed}:2", f"{packed}:3"]


def test_csv_problems_name_the_file(tmp_path: Path) -> None:
    twice = tmp_path / "twice.csv"
    twice.write_text("id,prompt,id\n1,a,2\n")
    with pytest.raises(InputFileError, match=r"twice\.csv:1: the header repeats the column\(s\) id"):
        read_records(str(twice))
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("id,prompt\n1,a\n2,b,c\n")
    with pytest.raises(InputFileError, match=r"ragged\.csv.*Expected 2 columns, got 3"):
        list(read_records(str(ragged)))


# --- compressed JSONL -------------------------------------------------------------------------

LINES = b'{"id": "a", "prompt": "one"}\n\n{"id": "b", "prompt": "two"}\n'


def test_jsonl_gz_and_zst_read_like_plain_jsonl(tmp_path: Path) -> None:
    plain = tmp_path / "in.jsonl"
    plain.write_bytes(LINES)
    gz = tmp_path / "in.jsonl.gz"
    gz.write_bytes(gzip.compress(LINES))
    zst = tmp_path / "in.jsonl.zst"
    with pa.output_stream(str(zst), compression="zstd") as sink:
        sink.write(LINES)
    expected = [(i.position, i.location.replace(str(plain), "F"), i.values)  # type: ignore[union-attr]
                for i in records(plain)]
    for path in (gz, zst):
        assert [(i.position, i.location.replace(str(path), "F"), i.values)  # type: ignore[union-attr]
                for i in records(path)] == expected


def test_jsonl_zst_long_lines_stay_bounded_errors(tmp_path: Path) -> None:
    zst = tmp_path / "in.jsonl.zst"
    with pa.output_stream(str(zst), compression="zstd") as sink:
        sink.write(b'{"prompt": "' + b"x" * 5000 + b'"}\n{"prompt": "ok"}\n')
    items = records(zst, max_record_bytes=100)
    assert isinstance(items[0], InputError) and "over the limit of 100" in str(items[0])
    assert isinstance(items[1], RawRecord) and items[1].location == f"{zst}:2"


def test_truncated_or_fake_gz_is_a_file_error(tmp_path: Path) -> None:
    cut = tmp_path / "cut.jsonl.gz"
    cut.write_bytes(gzip.compress(LINES * 50)[:-30])
    with pytest.raises(InputFileError, match=r"cut\.jsonl\.gz: read failed"):
        list(read_records(str(cut)))
    fake = tmp_path / "fake.jsonl.gz"
    fake.write_bytes(LINES)
    with pytest.raises(InputFileError, match=r"fake\.jsonl\.gz"):
        read_records(str(fake))


def test_a_gzip_jsonl_run_does_not_import_pyarrow(tmp_path: Path) -> None:
    gz = tmp_path / "in.jsonl.gz"
    gz.write_bytes(gzip.compress(LINES))
    code = ("import sys; from pipeline.readers import read_records; "
            f"assert len(list(read_records({str(gz)!r}))) == 2; "
            "assert 'pyarrow' not in sys.modules, 'pyarrow imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr


# --- empty input, null and non-Unicode prompts ------------------------------------------------


@pytest.mark.parametrize("name", ["empty.jsonl", "blank.jsonl", "empty.jsonl.gz", "header.csv",
                                  "none.parquet"])
def test_an_input_without_rows_says_so_before_anything_is_written(
    tmp_path: Path, name: str
) -> None:
    path = tmp_path / name
    if name == "blank.jsonl":
        path.write_text("\n  \n")
    elif name.endswith(".gz"):
        path.write_bytes(gzip.compress(b""))
    elif name.endswith(".csv"):
        path.write_text("id,prompt\n")
    elif name.endswith(".parquet"):
        pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), path)
    else:
        path.write_text("")
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, ["run", str(path), "-o", str(out), "--url",
                                       "http://127.0.0.1:9", *FAST])
    assert result.exit_code == 2, result.output
    assert f"{path}: the input has no rows" in result.stderr
    assert not out.exists()


def test_a_null_prompt_says_null() -> None:
    record = RawRecord(3, "in.jsonl:4", {"id": "x", "prompt": None})
    with pytest.raises(InputError) as info:
        build_prompt_row(record, RowSpec())
    assert str(info.value) == "in.jsonl:4, field 'prompt': the prompt is null"


def test_a_lone_surrogate_is_an_input_error_and_never_sent(tmp_path: Path, threaded_space) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "bad", "prompt": "a \\ud800 b"}\n'
                      '{"id": "sys", "prompt": "fine", "system": "\\udfff"}\n'
                      '{"id": "ok", "prompt": "fine"}\n')
    out = tmp_path / "out.jsonl"
    result = CliRunner().invoke(main, ["run", str(source), "-o", str(out), "--url",
                                       threaded_space.url, *FAST], catch_exceptions=False)
    assert result.exit_code == 3, result.output
    errors = [json.loads(line) for line in (tmp_path / "out.errors.jsonl").read_text().splitlines()]
    assert [(e["id"], e["error_type"], e["attempts"]) for e in errors] == [
        ("bad", "input", 0), ("sys", "input", 0)]
    assert "field 'prompt': not valid Unicode text: a lone surrogate '\\ud800'" in errors[0]["error"]
    assert "field 'system'" in errors[1]["error"]
    assert threaded_space.space.stats.joins == 1  # only the good row reached the Space


# --- fake-space on a busy port ----------------------------------------------------------------


def test_fake_space_on_a_busy_port_says_one_line_and_exits_2() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "pipeline", "fake-space", "--port", str(port)],
            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot listen on 127.0.0.1:{port}" in lines[0], result.stderr


def test_a_dataset_directory_is_checked_against_its_schema(tmp_path: Path) -> None:
    """The column check reads a dataset's schema (partition keys included), not a file's footer."""
    root = tmp_path / "data"
    write_hive(root)
    result = CliRunner().invoke(main, ["run", str(root), "-o", str(tmp_path / "out.jsonl"),
                                       "--template", "{prompt} {region}", "--keep", "lang",
                                       "--url", "http://127.0.0.1:9", "--no-progress"])
    assert result.exit_code == 2, result.output
    assert "region" in result.output and "year" in result.output  # the field, and what exists
    assert not (tmp_path / "out.jsonl").exists()
