"""compact_errors: the newest failure per row, none for rows since done, rewritten atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from pipeline.errorlog import compact_errors, failure_key
from pipeline.errors import OutputError
from pipeline.jobs import KeySet
from pipeline.models import Failure, PromptRow
from pipeline.records import encode_record, failure_record


def rec(row_id: str | None, sample: int = 0, position: int = 0, **extra: Any) -> dict[str, Any]:
    return {"id": row_id, "sample": sample, "position": position, "error_type": "app_error",
            "error": "boom", **extra}


def write(path: Path, records: list[dict[str, Any]]) -> str:
    path.write_bytes(b"".join(encode_record(r) for r in records))
    return str(path)


def read(path: str) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


def test_failure_key() -> None:
    assert failure_key({"id": "a", "sample": 2}) == ("a", 2)
    assert failure_key({"id": 7}) == ("7", 0)  # a numeric id is the same row as "7"
    assert failure_key({"id": "a", "sample": None}) == ("a", 0)
    assert failure_key({"id": None, "position": 4}) == ("@4", 0)


def test_keeps_the_newest_record_per_key_in_order_of_newest(tmp_path: Path) -> None:
    path = write(tmp_path / "e.jsonl", [
        rec("a", error="old a"), rec("b", error="b"), rec("a", 1, error="a sample 1"),
        rec("c", error="old c"), rec("a", error="new a"), rec("c", error="new c"),
    ])
    assert compact_errors(path, KeySet()) == 4
    assert [(r["id"], r["sample"], r["error"]) for r in read(path)] == [
        ("b", 0, "b"), ("a", 1, "a sample 1"), ("a", 0, "new a"), ("c", 0, "new c")]


def test_drops_rows_now_done(tmp_path: Path) -> None:
    path = write(tmp_path / "e.jsonl", [rec("a"), rec("a", 1), rec("b"), rec("c"), rec("b")])
    done = KeySet([("a", 0), ("b", 0), ("zzz", 0)])
    assert compact_errors(path, done) == 2
    assert [(r["id"], r["sample"]) for r in read(path)] == [("a", 1), ("c", 0)]


def test_a_done_row_leaves_even_when_its_newest_record_came_after(tmp_path: Path) -> None:
    path = write(tmp_path / "e.jsonl", [rec("a", error="1"), rec("a", error="2")])
    assert compact_errors(path, KeySet([("a", 0)])) == 0
    assert read(path) == []


def test_id_less_input_errors_are_keyed_by_position(tmp_path: Path) -> None:
    path = write(tmp_path / "e.jsonl", [
        rec(None, position=3, error_type="input", error="in.jsonl:4: invalid JSON (old)"),
        rec(None, position=5, error_type="input", error="in.jsonl:6: invalid JSON"),
        rec("3", position=9, error="a row whose id is 3"),
        rec(None, position=3, error_type="input", error="in.jsonl:4: invalid JSON (new)"),
    ])
    assert compact_errors(path, KeySet()) == 3
    assert [(r["id"], r["position"], r["error"]) for r in read(path)] == [
        (None, 5, "in.jsonl:6: invalid JSON"), ("3", 9, "a row whose id is 3"),
        (None, 3, "in.jsonl:4: invalid JSON (new)")]
    # a done row "3" removes its own record, not the id-less error at position 3
    assert compact_errors(path, KeySet([("3", 0)])) == 2
    assert {r["position"] for r in read(path)} == {3, 5}


def test_real_failure_records_round_trip_unchanged(tmp_path: Path) -> None:
    row = PromptRow("r1", 0, "p", location="in.jsonl:1")
    records = [failure_record(Failure("r1", 0, "queue_full", "HTTP 503 «full» 日本", 4, row=row,
                                      retryable=True)),
               failure_record(Failure(None, 1, "input", "in.jsonl:2: invalid JSON", 0))]
    path = write(tmp_path / "e.jsonl", records)
    assert compact_errors(path, KeySet()) == 2
    assert read(path) == json.loads(json.dumps(records))


def test_rewrite_is_atomic_and_leaves_no_temp_file(tmp_path: Path) -> None:
    path = write(tmp_path / "e.jsonl", [rec("a"), rec("a"), rec("b")])
    inode = os.stat(path).st_ino
    compact_errors(path, KeySet())
    assert sorted(os.listdir(tmp_path)) == ["e.jsonl"]
    assert os.stat(path).st_ino != inode  # replaced by a rename, not rewritten in place


def test_failed_rewrite_keeps_the_old_file_and_no_temp(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "e.jsonl", [rec("a"), rec("a"), rec("b")])
    before = Path(path).read_bytes()

    def refuse(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", refuse)
    with pytest.raises(OutputError, match="cannot rewrite the errors file"):
        compact_errors(path, KeySet())
    assert Path(path).read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["e.jsonl"]


def test_corrupt_line_is_an_error_and_the_file_is_untouched(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    content = encode_record(rec("a")) + b"{not json\n" + encode_record(rec("b"))
    path.write_bytes(content)
    with pytest.raises(OutputError, match=r"e\.jsonl:2"):
        compact_errors(str(path), KeySet())
    assert path.read_bytes() == content
    assert sorted(os.listdir(tmp_path)) == ["e.jsonl"]


def test_torn_last_line_is_dropped(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(encode_record(rec("a")) + b'{"id": "b", "sam')
    assert compact_errors(str(path), KeySet()) == 1
    assert [r["id"] for r in read(str(path))] == ["a"]


def test_missing_file_or_stdout_gives_zero_and_creates_nothing(tmp_path: Path) -> None:
    assert compact_errors(str(tmp_path / "absent.jsonl"), KeySet()) == 0
    assert compact_errors("-", KeySet()) == 0
    assert os.listdir(tmp_path) == []


def test_empty_file_stays_empty(tmp_path: Path) -> None:
    path = tmp_path / "e.jsonl"
    path.write_bytes(b"")
    assert compact_errors(str(path), KeySet()) == 0
    assert path.read_bytes() == b""
