"""Tests for pipeline.records: output/errors records, their JSON lines, and the resume key."""

from __future__ import annotations

import datetime as dt
import decimal
import json
import re

import pytest

from pipeline.models import Failure, PromptRow, RequestTrace, Success
from pipeline.records import (
    STANDARD_FIELDS,
    encode_record,
    failure_record,
    record_key,
    success_record,
)

T0 = 1_714_564_800_123_456  # 2024-05-01T12:00:00.123456Z, in microseconds


def trace() -> RequestTrace:
    return RequestTrace(
        session_hash="abc123", url="https://space.example", event_id="ev1", started_at=T0,
        finished_at=T0 + 2_000_000, queue_ms=12.345, ttft_ms=150.06,
        duration_ms=2000.04, chunks=17,
    )


def success(keep: dict[str, object] | None = None, sample: int = 0) -> Success:
    row = PromptRow(id="r1", position=3, prompt="Hi", system="Be brief", keep=keep or {},
                    location="in.jsonl:4")
    return Success(row=row, text="Hello!", trace=trace(), attempts=2, model="qwen", sample=sample)


def test_success_record_keys_in_order_and_values() -> None:
    record = success_record(success(sample=1))
    assert tuple(record) == STANDARD_FIELDS
    assert record == {
        "id": "r1", "sample": 1, "position": 3, "prompt": "Hi", "system": "Be brief", "completion": "Hello!",
        "model": "qwen", "attempts": 2, "session_hash": "abc123", "event_id": "ev1",
        "url": "https://space.example", "started_at": "2024-05-01T12:00:00.123Z",
        "finished_at": "2024-05-01T12:00:02.123Z", "queue_ms": 12.3, "ttft_ms": 150.1,
        "duration_ms": 2000.0, "chunks": 17,
    }


def test_success_record_sample_is_always_present() -> None:
    assert success_record(success())["sample"] == 0


def test_success_record_keep_columns_follow_and_never_override() -> None:
    record = success_record(success({"lang": "en", "id": "orig", "input_id": "x"}))
    assert list(record)[len(STANDARD_FIELDS):] == ["lang", "input_input_id", "input_id"]
    assert record["id"] == "r1"
    assert record["lang"] == "en" and record["input_id"] == "x"
    assert record["input_input_id"] == "orig"


def test_success_record_missing_timings_are_none() -> None:
    s = success()
    s.trace.ttft_ms = None
    s.trace.finished_at = None
    record = success_record(s)
    assert record["ttft_ms"] is None and record["finished_at"] is None


def test_failure_record_with_trace() -> None:
    row = PromptRow(id="r1", position=3, prompt="Hi", location="in.jsonl:4")
    failure = Failure(id="r1", position=3, error_type="idle_timeout", error="no text for 60 s",
                      attempts=3, row=row, trace=trace(), sample=2, retryable=True)
    record = failure_record(failure)
    assert list(record) == [
        "id", "sample", "position", "location", "error_type", "error", "attempts", "retryable",
        "session_hash", "event_id", "queue_ms", "ttft_ms", "duration_ms", "failed_at",
    ]
    assert record["location"] == "in.jsonl:4" and record["sample"] == 2
    assert (record["session_hash"], record["queue_ms"], record["duration_ms"]) == (
        "abc123", 12.3, 2000.0
    )
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", record["failed_at"])


def test_failure_record_without_row_or_trace() -> None:
    failure = Failure(id=None, position=9, error_type="input", error="in.jsonl:10: bad", attempts=0)
    record = failure_record(failure)
    assert record["location"] is None and record["id"] is None and record["retryable"] is False
    assert all(record[k] is None for k in ("session_hash", "event_id", "queue_ms", "ttft_ms",
                                           "duration_ms"))


def test_record_key() -> None:
    assert record_key({"id": "a", "sample": 2}) == ("a", 2)
    assert record_key({"id": 7}) == ("7", 0)
    assert record_key({"id": "a", "sample": None}) == ("a", 0)
    with pytest.raises(ValueError):
        record_key({"sample": 1})


def test_encode_record_is_one_compact_utf8_line() -> None:
    line = encode_record({"id": "é", "text": "a\nb", "n": 1})
    assert line == '{"id":"é","text":"a\\nb","n":1}\n'.encode()
    assert line.count(b"\n") == 1


def test_encode_record_handles_parquet_values() -> None:
    record = {"t": dt.datetime(2024, 1, 2, 3, 4, 5), "d": dt.date(2024, 1, 2),
              "dec": decimal.Decimal("1.50"), "b": b"text", "raw": b"\xff\x00"}
    decoded = json.loads(encode_record(record))
    assert decoded == {"t": "2024-01-02T03:04:05", "d": "2024-01-02", "dec": "1.50",
                       "b": "text", "raw": "/wA="}


def test_encode_record_lone_surrogate_stays_valid_utf8() -> None:
    value = json.loads('"\\ud800x"')
    line = encode_record({"id": value})
    line.decode("utf-8")  # must not raise
    assert json.loads(line)["id"] == value
