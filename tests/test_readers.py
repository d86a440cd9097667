"""Tests for pipeline.readers: streaming JSONL/Parquet reading, bad records as error items."""

from __future__ import annotations

import io
import json
import tracemalloc
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline import alloc
from pipeline.alloc import use_system_arrow_pool
from pipeline.errors import InputError, InputFileError
from pipeline.models import RawRecord
from pipeline.readers import detect_format, read_records


def write_lines(path: Path, *lines: bytes | str) -> str:
    path.write_bytes(b"".join(x if isinstance(x, bytes) else x.encode() for x in lines))
    return str(path)


# --- detect_format ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "expected"),
    [("a.jsonl", "jsonl"), ("a.NDJSON", "jsonl"), ("a.json-lines", "jsonl"),
     ("a.parquet", "parquet"), ("dir.v2/a.pq", "parquet"), ("-", "jsonl")],
)
def test_detect_format_by_suffix(name: str, expected: str) -> None:
    assert detect_format(name, None) == expected


def test_detect_format_forced_wins_over_suffix() -> None:
    assert detect_format("data.txt", "parquet") == "parquet"
    assert detect_format("data.parquet", "JSONL") == "jsonl"


def test_detect_format_unknown_suffix_names_file_and_suffixes() -> None:
    with pytest.raises(InputFileError) as info:
        detect_format("data/input.xml", None)
    message = str(info.value)
    assert "data/input.xml" in message and ".xml" in message
    assert all(s in message for s in (".jsonl", ".ndjson", ".json-lines", ".parquet", ".pq",
                                      ".csv", ".tsv", ".gz", ".zst"))


def test_detect_format_unknown_forced_name() -> None:
    with pytest.raises(InputFileError, match="xml"):
        detect_format("a.jsonl", "xml")


# --- JSONL ------------------------------------------------------------------------------------


def test_jsonl_records_positions_and_locations(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "in.jsonl", '{"id": 1}\n', "\n", "   \t\n", '{"id": 2}\n')
    items = list(read_records(path))
    assert items == [
        RawRecord(0, f"{path}:1", {"id": 1}),
        RawRecord(1, f"{path}:4", {"id": 2}),  # blank lines count for the line, not the position
    ]


def test_jsonl_errors_take_a_position_and_do_not_stop_the_stream(tmp_path: Path) -> None:
    path = write_lines(
        tmp_path / "in.jsonl",
        '{"id": "a"}\n', '{"id": "b",}\n', "[1, 2]\n", b"\xff\xfe{}\n", '"text"\n', '{"id": "c"}\n',
    )
    items = list(read_records(path))
    assert [i.position for i in items if isinstance(i, RawRecord)] == [0, 5]
    errors = [i for i in items if isinstance(i, InputError)]
    assert [e.location for e in errors] == [f"{path}:2", f"{path}:3", f"{path}:4", f"{path}:5"]
    assert "invalid JSON" in str(errors[0]) and "column 12" in str(errors[0])
    assert "expected a JSON object, got list" in str(errors[1])
    assert "UTF-8" in str(errors[2])
    assert "expected a JSON object, got str" in str(errors[3])
    assert all(str(e).startswith(f"{path}:") for e in errors)


@pytest.mark.parametrize("ending", ["\n", "\r\n", ""])
def test_a_line_cut_short_names_its_own_column_not_the_next_line(tmp_path: Path, ending: str) -> None:
    # json.loads sees the line's newline and reports "line 2 column 1": the column must
    # be counted in the line the user opens, and say that the line ended too soon (the
    # file's last line may have no newline at all).
    path = write_lines(tmp_path / "in.jsonl", '{"id": "b"}\n', '{"id": "a", "prompt": "ok"' + ending)
    errors = [i for i in read_records(path) if isinstance(i, InputError)]
    assert len(errors) == 1 and errors[0].location == f"{path}:2"
    assert "column 27" in str(errors[0]) and "the line ends" in str(errors[0]), str(errors[0])


def test_jsonl_last_line_without_newline_is_a_record(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "in.jsonl", '{"id": 1}\n{"id": 2}')
    assert [i.values for i in read_records(path) if isinstance(i, RawRecord)] == [
        {"id": 1}, {"id": 2}
    ]


def test_jsonl_torn_last_line_is_an_error_not_a_crash(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "in.jsonl", '{"id": 1}\n{"id": 2, "pro')
    items = list(read_records(path))
    assert isinstance(items[0], RawRecord)
    assert isinstance(items[1], InputError) and items[1].location == f"{path}:2"


def test_jsonl_utf8_bom_on_first_line_is_tolerated(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "in.jsonl", b'\xef\xbb\xbf{"id": 1}\n')
    assert list(read_records(path)) == [RawRecord(0, f"{path}:1", {"id": 1})]


def test_jsonl_line_at_the_limit_passes_and_one_byte_more_fails(tmp_path: Path) -> None:
    ok = '{"p": "' + "x" * 13 + '"}'  # 22 bytes
    too_big = '{"p": "' + "x" * 14 + '"}'
    path = write_lines(tmp_path / "in.jsonl", ok + "\n", too_big + "\n", ok)
    items = list(read_records(path, max_record_bytes=22))
    assert [type(i) for i in items] == [RawRecord, InputError, RawRecord]
    assert "line is 23 bytes, over the limit of 22" in str(items[1])


class ReadSpy(io.BytesIO):
    """Records the largest amount any single read asked for (-1: unbounded)."""

    largest = 0

    def readline(self, size: int | None = -1) -> bytes:
        self.largest = max(self.largest, size if size is not None and size >= 0 else 1 << 62)
        return super().readline(size)

    def read(self, size: int | None = -1) -> bytes:
        self.largest = max(self.largest, size if size is not None and size >= 0 else 1 << 62)
        return super().read(size)


def test_oversized_line_is_skipped_in_bounded_reads() -> None:
    limit = 1_000_000
    huge = b'{"p": "' + b"x" * 5_000_000 + b'"}\n'
    spy = ReadSpy(huge + b'{"id": "next"}\n')
    items = list(read_records("-", max_record_bytes=limit, stdin=spy))
    assert isinstance(items[0], InputError)
    assert f"line is {len(huge) - 1} bytes, over the limit of {limit}" in str(items[0])
    assert items[0].location == "<stdin>:1"
    assert items[1] == RawRecord(1, "<stdin>:2", {"id": "next"})
    assert spy.largest <= limit + 1


def test_oversized_line_does_not_hold_the_whole_line_in_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.jsonl"
    with path.open("wb") as f:
        f.write(b'{"p": "')
        for _ in range(50):
            f.write(b"x" * 100_000)
        f.write(b'"}\n{"id": 1}\n')
    tracemalloc.start()
    try:
        items = list(read_records(str(path), max_record_bytes=1_000_000))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [type(i) for i in items] == [InputError, RawRecord]
    assert peak < 2_500_000  # the line is 5 MB; one bounded read is ~1 MB


def test_stdin_reads_the_given_stream() -> None:
    stream = io.BytesIO(b'{"prompt": "hi"}\n\n{"prompt": "there"}')
    items = list(read_records("-", stdin=stream))
    assert items == [
        RawRecord(0, "<stdin>:1", {"prompt": "hi"}),
        RawRecord(1, "<stdin>:3", {"prompt": "there"}),
    ]
    assert not stream.closed  # stdin belongs to the caller


@settings(max_examples=50, deadline=None)
@given(
    rows=st.lists(st.dictionaries(st.text(max_size=5), st.integers() | st.text(), max_size=3),
                  min_size=1, max_size=20),  # no rows at all is a file error (tested apart)
    blanks=st.lists(st.booleans(), min_size=20, max_size=20),
)
def test_jsonl_property_records_in_order_with_stable_positions(
    rows: list[dict[str, Any]], blanks: list[bool]
) -> None:
    data = b""
    for row, blank in zip(rows, blanks, strict=False):
        data += (b"\n" if blank else b"") + json.dumps(row).encode() + b"\n"
    items = list(read_records("-", stdin=io.BytesIO(data)))
    assert [i.values for i in items if isinstance(i, RawRecord)] == rows
    assert [i.position for i in items if isinstance(i, RawRecord)] == list(range(len(rows)))


# --- Parquet ----------------------------------------------------------------------------------


def test_parquet_multi_batch(tmp_path: Path) -> None:
    path = str(tmp_path / "in.parquet")
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(10)], "n": list(range(10))}), path,
                   row_group_size=4)
    items = list(read_records(path, batch_size=3))
    assert [i.position for i in items if isinstance(i, RawRecord)] == list(range(10))
    assert items[7] == RawRecord(7, f"{path} row 7", {"id": "r7", "n": 7})


def test_parquet_oversized_value_is_an_error_record(tmp_path: Path) -> None:
    path = str(tmp_path / "in.pq")
    pq.write_table(pa.table({"prompt": ["short", "y" * 5000, "fine"]}), path)
    items = list(read_records(path, max_record_bytes=1000))
    assert [type(i) for i in items] == [RawRecord, InputError, RawRecord]
    assert items[1].location == f"{path} row 1" and "over the limit of 1000" in str(items[1])
    assert isinstance(items[2], RawRecord) and items[2].position == 2


@pytest.mark.parametrize("row_group_size", [None, 7], ids=["one-row-group", "row-groups-of-7"])
def test_parquet_streams_every_row_of_one_or_many_row_groups(tmp_path: Path,
                                                           row_group_size: int | None) -> None:
    # pq.write_table's default writes the whole file as one row group (what the reader
    # must not load at once); both layouts read back whole and in order.
    path = str(tmp_path / "in.parquet")
    prompts = [f"{i:04d}" + "x" * 2000 for i in range(100)]
    pq.write_table(pa.table({"id": [f"r{i}" for i in range(100)], "prompt": prompts}), path,
                   row_group_size=row_group_size)
    assert pq.ParquetFile(path).num_row_groups == (1 if row_group_size is None else 15)
    items = list(read_records(path, batch_size=16))
    assert all(isinstance(i, RawRecord) for i in items)
    assert [i.values["prompt"] for i in items] == prompts  # type: ignore[union-attr]
    assert [i.position for i in items] == list(range(100))


def test_parquet_is_read_page_by_page_with_the_system_allocator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ARROW_DEFAULT_MEMORY_POOL", raising=False)
    use_system_arrow_pool.cache_clear()  # switched once per process: make this call the first
    monkeypatch.setattr(alloc, "_system_arrow_pool_wanted", False)
    alloc.prefer_system_arrow_pool()  # as the run command does
    path = str(tmp_path / "in.parquet")
    pq.write_table(pa.table({"prompt": ["a", "b"]}), path)
    opened: list[dict[str, Any]] = []
    real = pq.ParquetFile

    def spy(source: Any, **kwargs: Any) -> Any:
        opened.append(kwargs)
        return real(source, **kwargs)

    monkeypatch.setattr(pq, "ParquetFile", spy)
    assert len(list(read_records(path))) == 2
    assert opened == [{"pre_buffer": False, "buffer_size": 1 << 20}]
    assert pa.default_memory_pool().backend_name == "system"


@pytest.mark.parametrize("name", ["missing.jsonl", "missing.parquet"])
def test_missing_file_raises_at_call_time(tmp_path: Path, name: str) -> None:
    path = str(tmp_path / name)
    with pytest.raises(InputFileError) as info:
        read_records(path)  # no next(): the error comes before iteration
    assert path in str(info.value)


def test_not_parquet_raises_input_file_error(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "fake.parquet", '{"id": 1}\n')
    with pytest.raises(InputFileError, match=r"fake\.parquet"):
        read_records(path)


def test_unknown_suffix_raises(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "in.txt", '{"id": 1}\n')
    with pytest.raises(InputFileError, match=r"\.txt"):
        read_records(path)
    assert len(list(read_records(path, "jsonl"))) == 1
