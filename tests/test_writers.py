"""Tests for pipeline.writers and pipeline.parquet_output: crash-safe JSONL and journal-backed Parquet."""

from __future__ import annotations

import errno
import io
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.errors import ConfigError, OutputError
from pipeline.jsonl import JsonlAppender, JsonlOutput, iter_jsonl_records
from pipeline.parquet_output import OUTPUT_SCHEMA, ParquetOutput
from pipeline.parquet_types import LEGACY_JSON, MIXED_TEXT
from pipeline.records import encode_record
from pipeline.writers import (
    default_errors_path,
    default_output_path,
    legacy_output_path,
    open_output,
)

REPO = Path(__file__).resolve().parent.parent


def child(code: str, *args: str, **kwargs: Any) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                            stdout=subprocess.PIPE, text=True, **kwargs)


def rec(i: int, sample: int = 0, **extra: Any) -> dict[str, Any]:
    return {"id": str(i), "sample": sample, "position": i, "prompt": f"p{i}", "system": None,
            "completion": f"c{i}", "model": "m", "attempts": 1, "session_hash": "h",
            "event_id": None, "url": "u", "started_at": None, "finished_at": None,
            "queue_ms": 1.5, "ttft_ms": None, "duration_ms": 3.0, "chunks": 2, **extra}


def lines(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(line) for line in data.splitlines()]


# --- JsonlAppender ----------------------------------------------------------------------------


def test_appender_writes_one_compact_line_per_record(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    with JsonlAppender(str(path)) as out:
        out.write({"id": "1", "text": "multi\nline é"})
        out.write({"id": "2"})
    assert path.read_bytes() == b'{"id":"1","text":"multi\\nline \xc3\xa9"}\n{"id":"2"}\n'


def test_appender_uses_one_os_write_per_record(tmp_path: Path, monkeypatch: Any) -> None:
    calls: list[int] = []
    real_write = os.write

    def spy(fd: int, data: bytes) -> int:
        calls.append(len(data))
        return real_write(fd, data)

    out = JsonlAppender(str(tmp_path / "out.jsonl"))
    monkeypatch.setattr(os, "write", spy)
    out.write({"id": "1", "completion": "x" * 100_000})
    monkeypatch.undo()
    out.close()
    assert calls == [len(encode_record({"id": "1", "completion": "x" * 100_000}))]


def test_appender_appends_to_existing_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"id":"0"}\n')
    with JsonlAppender(str(path)) as out:
        out.write({"id": "1"})
    assert lines(path) == [{"id": "0"}, {"id": "1"}]


@pytest.mark.parametrize(
    ("content", "kept"),
    [(b'{"id":"0"}\n{"id":"1","comp', b'{"id":"0"}\n'),
     (b'{"id":"0"}\n{"id":"1"}', b'{"id":"0"}\n'),  # complete JSON but no newline: still torn
     (b'{"id":"0","comp', b""),
     (b'{"id":"0"}\n' + b"x" * 200_000, b'{"id":"0"}\n'),  # torn line longer than a scan chunk
     (b'{"id":"0"}\n', b'{"id":"0"}\n')],
)
def test_appender_repairs_a_torn_last_line(
    tmp_path: Path, caplog: Any, content: bytes, kept: bytes
) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(content)
    with caplog.at_level(logging.WARNING, logger="pipeline.writers"):
        JsonlAppender(str(path)).close()
    assert path.read_bytes() == kept
    dropped = len(content) - len(kept)
    assert (f"({dropped} bytes)" in caplog.text) == (dropped > 0)


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_repair_property_any_cut_keeps_exactly_the_complete_lines(data: Any) -> None:
    records = data.draw(st.lists(st.dictionaries(st.text(max_size=4), st.text(max_size=8)),
                                 min_size=1, max_size=8))
    blob = b"".join(encode_record(r) for r in records)
    cut = data.draw(st.integers(0, len(blob)))
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "out.jsonl"
        path.write_bytes(blob[:cut])
        with JsonlAppender(str(path)) as out:
            out.write({"after": True})
        got = lines(path)
    complete = blob[:cut].count(b"\n")
    assert got == [*records[:complete], {"after": True}]


def test_appender_takes_back_a_partial_write(tmp_path: Path, monkeypatch: Any) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"id":"0"}\n')
    out = JsonlAppender(str(path))
    real_write = os.write
    state = {"calls": 0}

    def disk_fills_up(fd: int, data: bytes) -> int:
        state["calls"] += 1
        if state["calls"] == 1:
            return real_write(fd, bytes(data[:5]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", disk_fills_up)
    with pytest.raises(OutputError, match="No space left"):
        out.write({"id": "1"})
    monkeypatch.undo()
    out.close()
    assert path.read_bytes() == b'{"id":"0"}\n'


def test_appender_stdout() -> None:
    stream = io.BytesIO(b"not repaired")
    stream.seek(0, io.SEEK_END)
    with JsonlAppender("-", stdout=stream) as out:
        out.write({"id": "1"})
    assert stream.getvalue() == b'not repaired{"id":"1"}\n'


def test_appender_sigkill_then_resume_leaves_every_record_once(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    total = 1500
    code = """
        import sys, time
        from pipeline.writers import open_output
        out = open_output(sys.argv[1])
        done = out.done_keys()
        print(len(done), flush=True)
        for i in range(int(sys.argv[2])):
            if (str(i), 0) not in done:
                out.write({"id": str(i), "sample": 0, "completion": "x" * (1000 * (i % 40))})
                time.sleep(0.0002)
        out.close()
    """
    kills = 0
    for threshold in (2_000_000, 6_000_000, 12_000_000, 18_000_000):
        proc = child(code, str(path), str(total))
        assert proc.stdout is not None
        proc.stdout.readline()
        while proc.poll() is None and (not path.exists() or path.stat().st_size < threshold):
            time.sleep(0.001)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        proc.stdout.close()
    proc = child(code, str(path), str(total))
    assert proc.wait() == 0
    assert proc.stdout is not None
    proc.stdout.close()
    ids = [r["id"] for r in lines(path)]  # every line is complete JSON
    assert sorted(ids, key=int) == [str(i) for i in range(total)]  # each once, none lost
    assert kills >= 2


# --- iter_jsonl_records / JsonlOutput ---------------------------------------------------------


def test_iter_records_skips_torn_tail_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"id":"0"}\n\n{"id":"1"}\n{"id":"2"')
    assert list(iter_jsonl_records(str(path))) == [{"id": "0"}, {"id": "1"}]
    assert list(iter_jsonl_records(str(tmp_path / "none.jsonl"))) == []


@pytest.mark.parametrize("bad", [b"{oops\n", b"[1]\n", b"\xff\n"])
def test_iter_records_corrupt_middle_line_names_file_and_line(tmp_path: Path, bad: bytes) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"id":"0"}\n' + bad + b'{"id":"2"}\n')
    with pytest.raises(OutputError, match=f"{path}:2"):
        list(iter_jsonl_records(str(path)))


def test_jsonl_output_done_keys_after_repair(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"id":"a"}\n{"id":"a","sample":1}\n{"id":7}\n{"id":"torn"}')
    with JsonlOutput(str(path)) as out:
        out.write({"id": "b"})  # keys are those present at open, even when read later
        assert out.done_keys() == {("a", 0), ("a", 1), ("7", 0)}
        assert sorted(out.iter_done_keys()) == [("7", 0), ("a", 0), ("a", 1)]
    assert [r["id"] for r in lines(path)] == ["a", "a", 7, "b"]


def test_jsonl_output_corrupt_file_is_reported_when_reading_keys(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b'{"id":"a"}\n{"no_id":1}\n')
    with JsonlOutput(str(path)) as out, pytest.raises(OutputError, match="id"):
        out.done_keys()


def test_open_output_by_suffix_and_format(tmp_path: Path) -> None:
    out = open_output(str(tmp_path / "o.jsonl"))
    assert isinstance(out, JsonlOutput)
    out.close()
    out = open_output(str(tmp_path / "o.pq"))
    assert isinstance(out, ParquetOutput)
    out.close()
    out = open_output(str(tmp_path / "o.txt"), "jsonl")
    assert isinstance(out, JsonlOutput)
    out.close()
    assert open_output("-").done_keys() == set()
    with pytest.raises(ConfigError, match=r"\.csv"):  # a usage error: exit 2
        open_output(str(tmp_path / "o.csv"))
    with pytest.raises(ConfigError, match="stdout"):
        open_output("-", "parquet")


def test_default_paths() -> None:
    # The input's suffix stays in the name: in.jsonl and in.parquet never share an output.
    assert default_output_path("data/in.jsonl") == "data/in.jsonl.completions.jsonl"
    assert default_output_path("data/in.parquet") == "data/in.parquet.completions.jsonl"
    assert default_output_path("in") == "in.completions.jsonl"
    assert default_output_path("-") == "-"
    assert default_errors_path("data/in.jsonl.completions.jsonl") == \
        "data/in.jsonl.completions.errors.jsonl"
    assert default_errors_path("data/in.completions.jsonl") == "data/in.completions.errors.jsonl"
    assert default_errors_path("out.parquet") == "out.errors.jsonl"
    assert default_errors_path("-") == "qwen-batch.errors.jsonl"
    assert legacy_output_path("data/in.jsonl") == "data/in.completions.jsonl"
    assert legacy_output_path("in") is None and legacy_output_path("-") is None


# --- ParquetOutput ----------------------------------------------------------------------------


def read_ids(path: Path) -> list[tuple[str, int]]:
    table = pq.read_table(path, columns=["id", "sample"])
    return list(zip(table.column("id").to_pylist(), table.column("sample").to_pylist(),
                    strict=True))


def test_parquet_write_and_close(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    with ParquetOutput(str(path)) as out:
        assert out.done_keys() == set()
        for i in range(5):
            out.write(rec(i, lang="en", n=i))
    table = pq.read_table(path)
    assert table.schema.names == [*OUTPUT_SCHEMA.names, "lang", "n"]
    assert table.schema.field("n").type == pa.int64()
    for field in OUTPUT_SCHEMA:
        assert table.schema.field(field.name).type == field.type
    assert table.slice(2, 1).to_pylist() == [rec(2, lang="en", n=2)]
    assert not Path(str(path) + ".journal.jsonl").exists()


def test_parquet_empty_run_creates_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    ParquetOutput(str(path)).close()
    assert pq.read_table(path).schema == OUTPUT_SCHEMA


def test_parquet_crash_keeps_journal_and_resumes(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    code = """
        import os, signal, sys
        from pipeline.parquet_output import ParquetOutput
        out = ParquetOutput(sys.argv[1])
        for i in range(30):
            out.write({"id": str(i), "sample": i % 2, "completion": "c"})
        os.kill(os.getpid(), signal.SIGKILL)
    """
    proc = child(code, str(path))
    assert proc.wait() == -signal.SIGKILL
    assert proc.stdout is not None
    proc.stdout.close()
    assert not path.exists() and Path(str(path) + ".journal.jsonl").exists()
    with ParquetOutput(str(path)) as out:
        for i in range(30, 40):
            out.write({"id": str(i), "sample": i % 2, "completion": "c"})
        assert out.done_keys() == {(str(i), i % 2) for i in range(30)}
    assert sorted(read_ids(path)) == sorted((str(i), i % 2) for i in range(40))


def test_parquet_crash_between_rename_and_journal_delete(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    journal = Path(str(path) + ".journal.jsonl")
    out = ParquetOutput(str(path))
    for i in range(10):
        out.write(rec(i))
    shutil.copy(journal, tmp_path / "saved")
    out.close()
    shutil.copy(tmp_path / "saved", journal)  # as if killed right after os.replace
    with ParquetOutput(str(path)) as out:
        assert out.done_keys() == {(str(i), 0) for i in range(10)}
        out.write(rec(10))
    assert sorted(read_ids(path)) == sorted((str(i), 0) for i in range(11))
    assert not journal.exists()
    # And with nothing new at all, the merge only deletes the journal.
    shutil.copy(tmp_path / "saved", journal)
    ParquetOutput(str(path)).close()
    assert len(read_ids(path)) == 11 and not journal.exists()


def test_parquet_leftover_tmp_from_a_crashed_merge_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    with ParquetOutput(str(path)) as out:
        out.write(rec(0))
    Path(str(path) + ".tmp").write_bytes(b"half a parquet file")
    Path(str(path) + ".journal.jsonl").write_bytes(encode_record(rec(1)) + b'{"id":"2","sa')
    with ParquetOutput(str(path)) as out:
        assert out.done_keys() == {("0", 0), ("1", 0)}
    assert sorted(read_ids(path)) == [("0", 0), ("1", 0)]
    assert not Path(str(path) + ".tmp").exists()


def test_parquet_journal_duplicates_are_merged_once(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    Path(str(path) + ".journal.jsonl").write_bytes(
        encode_record(rec(1, completion="first")) + encode_record(rec(1, completion="second"))
        + encode_record(rec(1, sample=1))
    )
    ParquetOutput(str(path)).close()
    table = pq.read_table(path)
    assert read_ids(path) == [("1", 0), ("1", 1)]
    assert table.column("completion").to_pylist() == ["first", "c1"]


def test_parquet_conflicting_keep_types_become_text(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    with ParquetOutput(str(path), flush_rows=2) as out:
        for i, value in enumerate([1, 2, 3, 4.5, None]):
            out.write(rec(i, num=value, mixed=value))
    schema = pq.read_schema(path)
    assert schema.field("num").type == pa.float64()  # int and float widen to float
    with ParquetOutput(str(path)) as out:
        out.write(rec(9, mixed="text", extra=[1, 2]))
    table = pq.read_table(path)
    field = table.schema.field("mixed")
    assert field.type == pa.string() and field.metadata == MIXED_TEXT
    # Strings as they are (not '"text"'), other values as JSON text (here the doubles
    # the column held before).
    assert table.column("mixed").to_pylist() == ["1.0", "2.0", "3.0", "4.5", None, "text"]
    assert table.column("extra").to_pylist() == [None] * 5 + [[1, 2]]
    with ParquetOutput(str(path)) as out:  # a text column stays text, nothing encoded twice
        out.write(rec(10, mixed={"k": 1}))
    assert pq.read_table(path).column("mixed").to_pylist() == \
        ["1.0", "2.0", "3.0", "4.5", None, "text", '{"k": 1}']


def test_parquet_json_text_column_of_an_earlier_version_becomes_plain_text(
    tmp_path: Path
) -> None:
    path = tmp_path / "out.parquet"
    schema = OUTPUT_SCHEMA.append(pa.field("mixed", pa.string(), metadata=LEGACY_JSON))
    old = [{**rec(0), "mixed": "1"}, {**rec(1), "mixed": '"two"'}, {**rec(2), "mixed": None}]
    pq.write_table(pa.Table.from_pylist(old, schema=schema), path)
    with ParquetOutput(str(path)) as out:
        out.write(rec(3, mixed=[3]))
    table = pq.read_table(path)
    assert table.schema.field("mixed").metadata == MIXED_TEXT
    assert table.column("mixed").to_pylist() == ["1", "two", None, "[3]"]


def test_parquet_large_merge_goes_by_batches(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    for start in (0, 50_000):
        with ParquetOutput(str(path), flush_rows=5_000) as out:
            assert len(out.done_keys()) == start
            for i in range(start, start + 50_000):
                out.write({"id": str(i), "sample": 0, "completion": "c", "k": i})
    meta = pq.ParquetFile(path).metadata
    assert meta.num_rows == 100_000
    assert meta.num_row_groups >= 20
    assert max(meta.row_group(g).num_rows for g in range(meta.num_row_groups)) <= 5_000
    assert len(set(read_ids(path))) == 100_000


def test_parquet_failed_merge_keeps_journal_and_old_file(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    with ParquetOutput(str(path)) as out:
        out.write(rec(0))
    before = path.read_bytes()
    out = ParquetOutput(str(path))
    out.write(rec(1))
    with open(str(path) + ".journal.jsonl", "ab") as journal:  # say, from an older version
        journal.write(encode_record(rec(2, attempts="not a number")))
    with pytest.raises(OutputError, match="journal is kept"):
        out.close()
    assert path.read_bytes() == before
    assert Path(str(path) + ".journal.jsonl").exists()


def test_parquet_corrupt_existing_output_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    path.write_bytes(b"not parquet")
    with pytest.raises(OutputError, match=r"out\.parquet"):
        ParquetOutput(str(path))
    assert path.read_bytes() == b"not parquet"


@pytest.mark.parametrize(
    ("field", "value"),
    [("id", None), ("id", 1.5), ("id", True), ("attempts", "2"), ("sample", True), ("completion", 3),
     ("queue_ms", "1")],
)
def test_parquet_write_rejects_wrong_standard_types(tmp_path: Path, field: str, value: Any) -> None:
    with ParquetOutput(str(tmp_path / "out.parquet")) as out:
        with pytest.raises(OutputError, match=field):
            out.write(rec(1, **{field: value}))
        out.write(rec(2, queue_ms=4, system=None))  # an int is a fine float; None is null
    assert read_ids(tmp_path / "out.parquet") == [("2", 0)]


def test_parquet_empty_objects_and_lists_in_kept_columns(tmp_path: Path) -> None:
    path = tmp_path / "out.parquet"
    with ParquetOutput(str(path)) as out:
        out.write(rec(0, meta={}, tags=[1]))
    with ParquetOutput(str(path)) as out:  # list type read back from Parquet unifies again
        out.write(rec(1, meta={}, tags=[2, 3]))
    table = pq.read_table(path)
    assert table.schema.field("meta").metadata == MIXED_TEXT
    assert table.column("meta").to_pylist() == ["{}", "{}"]
    assert table.column("tags").to_pylist() == [[1], [2, 3]]
