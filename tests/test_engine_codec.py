"""Rows and records survive the trip to an actor and back unchanged (pipeline.engines.codec)."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.engines.codec import (
    decode_result,
    decode_row,
    encode_result,
    encode_row,
    success_from_record,
)
from pipeline.models import Failure, PromptRow, RequestTrace, Success
from pipeline.records import STANDARD_FIELDS, failure_record, success_record

text = st.text(st.characters(codec=None, exclude_categories=()), max_size=40)  # surrogates too
json_leaf = st.none() | st.booleans() | st.integers(-2**62, 2**62) | text | \
    st.floats(allow_nan=False, allow_infinity=False)
json_value = st.recursive(json_leaf, lambda inner: st.lists(inner, max_size=3)
                          | st.dictionaries(text, inner, max_size=3), max_leaves=8)
rows = st.builds(
    PromptRow, id=text.filter(bool), id_value=st.none() | st.integers(-2**63, 2**63 - 1),
    position=st.integers(0, 2**40), prompt=text,
    system=st.none() | text, keep=st.dictionaries(text, json_value, max_size=4),
    location=text,
    samples=st.none() | st.lists(st.integers(0, 100), max_size=4).map(tuple))
# Microseconds since the epoch, 2000 to 2100: the records keep milliseconds.
moments = st.none() | st.integers(946_684_800_000_000, 4_102_444_800_000_000)
millis = st.none() | st.floats(0, 1e7, allow_nan=False)
traces = st.builds(RequestTrace, session_hash=st.text("0123456789abcdef", min_size=12, max_size=12),
                   url=text, event_id=st.none() | text, started_at=moments, finished_at=moments,
                   queue_ms=millis, ttft_ms=millis, duration_ms=millis,
                   chunks=st.integers(0, 10_000))


@settings(max_examples=150, deadline=None)
@given(rows)
def test_a_row_survives_encoding_as_json_text(row: PromptRow) -> None:
    text_form = encode_row(row)
    text_form.encode("ascii")  # ASCII only: Arrow strings must be valid UTF-8
    pa.array([text_form], pa.string())
    assert decode_row(text_form) == row


@settings(max_examples=150, deadline=None)
@given(rows, traces, text, st.integers(1, 9), text, st.integers(0, 50))
def test_a_success_record_is_rebuilt_exactly(row: PromptRow, trace: RequestTrace, answer: str,
                                             attempts: int, model: str, sample: int) -> None:
    record = json.loads(encode_result(Success(row, answer, trace, attempts, model, sample))[1])
    assert success_record(success_from_record(record)) == record
    assert list(record)[:len(STANDARD_FIELDS)] == list(STANDARD_FIELDS)


@settings(max_examples=100, deadline=None)
@given(rows, st.none() | traces, text, st.integers(0, 9), st.booleans())
def test_a_failure_record_is_rebuilt_exactly(row: PromptRow, trace: RequestTrace | None,
                                             error: str, attempts: int, retryable: bool) -> None:
    failure = Failure(row.id, row.position, "timeout", error, attempts, row=row, trace=trace,
                      sample=3, retryable=retryable)
    kind, text_form = encode_result(failure)
    assert kind == "error"
    record = json.loads(text_form)
    rebuilt = decode_result(kind, text_form)
    assert isinstance(rebuilt, Failure) and rebuilt.row is not None  # counts as a failed row
    again = failure_record(rebuilt)
    assert {k: v for k, v in again.items() if k != "failed_at"} == \
        {k: v for k, v in record.items() if k != "failed_at"}


def test_kept_values_are_stored_as_the_writers_store_them_and_bytes_stay_bytes() -> None:
    raw = {"raw": b"\xff\x00", "nested": [{"b": b"ok"}], "text": "/wA="}
    row = PromptRow("x", 0, "p", keep={"when": datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc),
                                        "span": timedelta(seconds=90), **raw})
    assert decode_row(encode_row(row)).keep == {"when": "2024-05-01T12:00:00+00:00",
                                                 "span": 90.0, **raw}
    trace = RequestTrace("0123456789ab")
    kind, text_form = encode_result(Success(decode_row(encode_row(row)), "a", trace, 1, "m"))
    rebuilt = decode_result(kind, text_form)
    assert isinstance(rebuilt, Success)
    assert {k: rebuilt.row.keep[k] for k in raw} == raw
