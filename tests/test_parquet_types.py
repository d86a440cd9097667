"""Journal (JSON) values back into Arrow types, and the plan of a column's type."""

from __future__ import annotations

import json
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pytest

from pipeline.parquet_types import (
    MIXED_TEXT,
    Unconvertible,
    from_json,
    journal_value,
    mixed_text,
    new_array,
    old_array,
    parse_times,
    plan,
)
from pipeline.records import encode_record


def through_journal(value: Any, kind: pa.DataType) -> Any:
    """A value as it comes back from the journal: journal_value, then a JSON line and back."""
    return json.loads(encode_record({"v": journal_value(value, kind)}))["v"]


@pytest.mark.parametrize(("kind", "value"), [
    (pa.timestamp("ms", tz="Europe/Paris"),
     datetime(2024, 3, 1, 12, 30, 15, 250_000, tzinfo=timezone.utc)),
    (pa.timestamp("s"), datetime(1900, 1, 1, 0, 0, 1)),
    (pa.timestamp("us", tz="UTC"), datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone.utc)),
    (pa.date32(), date(1, 1, 1)),
    (pa.time64("us"), time(23, 59, 59, 123_456)),
    (pa.duration("ms"), timedelta(seconds=90, milliseconds=5)),
    (pa.decimal128(20, 4), Decimal("-1234567890123456.7891")),
    (pa.binary(), b"\xff\x00 not utf-8"),
    (pa.binary(), b"dGV4dA=="),  # bytes that read as base64 stay these bytes
    (pa.large_binary(), "caf\u00e9".encode()),
    (pa.struct([("b", pa.binary()), ("t", pa.timestamp("ms"))]),
     {"b": b"\x00\x01", "t": datetime(2024, 1, 1, 0, 0, 0, 1000)}),
    (pa.list_(pa.date32()), [date(2024, 2, 29), None]),
    (pa.map_(pa.string(), pa.timestamp("us")), [("a", datetime(2024, 1, 1))]),
    (pa.dictionary(pa.int32(), pa.string()), "cat"),
])
def test_a_value_comes_back_from_the_journal_as_its_type(kind: pa.DataType, value: Any) -> None:
    original = pa.array([value, None], kind)
    field = pa.field("c", kind)
    again = new_array([through_journal(v, kind) for v in original.to_pylist()], field)
    assert again.equals(original)


def test_nanosecond_times_keep_their_nanoseconds() -> None:
    text = pa.array(["2024-05-06T07:08:09.123456789", None])
    assert parse_times(text, pa.timestamp("ns"))[0].value % 1000 == 789


def test_times_written_with_more_digits_than_the_unit_parse() -> None:
    text = pa.array(["2024-03-01T13:30:15.250000+01:00", "2024-03-01T13:30:15+01:00"])
    parsed = parse_times(text, pa.timestamp("ms", tz="UTC")).to_pylist()
    assert parsed == [datetime(2024, 3, 1, 12, 30, 15, 250_000, tzinfo=timezone.utc),
                      datetime(2024, 3, 1, 12, 30, 15, tzinfo=timezone.utc)]


def test_integer_text_converts_only_when_it_comes_back_as_written() -> None:
    assert from_json("42", pa.int64()) == 42
    with pytest.raises(ValueError, match="007"):
        from_json("007", pa.int64())
    old = pa.field("id", pa.string())
    upgraded = old_array(pa.array(["1", "-2"]), old, pa.field("id", pa.int64()))
    assert upgraded.to_pylist() == [1, -2]
    with pytest.raises(Unconvertible, match="'id'"):
        old_array(pa.array(["1", "007"]), old, pa.field("id", pa.int64()))
    with pytest.raises(Unconvertible, match="'id'"):
        new_array([1, "h:abc"], pa.field("id", pa.int64()))


def test_mixed_text_keeps_strings_and_writes_the_rest_as_json() -> None:
    assert [mixed_text(v) for v in ("two", 1, 2.5, True, None, {"k": [1]}, [])] == \
        ["two", "1", "2.5", "true", None, '{"k": [1]}', "[]"]
    assert mixed_text(datetime(2024, 1, 1, tzinfo=timezone.utc)) == "2024-01-01T00:00:00+00:00"
    assert mixed_text(Decimal("1.50")) == "1.50"


@pytest.mark.parametrize(("old", "new", "planned"), [
    (None, pa.int64(), pa.int64()),
    (None, None, None),
    (pa.int64(), pa.float64(), pa.float64()),
    (pa.null(), pa.string(), pa.string()),
    (pa.struct([("a", pa.int64())]), pa.struct([("b", pa.string())]),
     pa.struct([("a", pa.int64()), ("b", pa.string())])),
    (pa.string(), pa.int64(), pa.int64()),  # an earlier version's text: upgraded if it converts
    (pa.string(), pa.timestamp("us", tz="UTC"), pa.timestamp("us", tz="UTC")),
    (pa.string(), pa.null(), pa.string()),
    (pa.int64(), pa.string(), None),  # ints before, text now: mixed
    (pa.timestamp("ms", tz="UTC"), pa.timestamp("ms", tz="Asia/Tokyo"), None),
])
def test_a_column_type_is_planned_from_the_old_and_the_new(
    old: pa.DataType | None, new: pa.DataType | None, planned: pa.DataType | None
) -> None:
    field = plan(None if old is None else pa.field("c", old), new, "c")
    if planned is None:
        assert field.type == pa.string() and field.metadata == MIXED_TEXT
    else:
        assert field.type == planned and not field.metadata


def test_a_mixed_column_stays_mixed() -> None:
    old = pa.field("c", pa.string(), metadata=MIXED_TEXT)
    assert plan(old, pa.int64(), "c").metadata == MIXED_TEXT
    assert old_array(pa.array(["1", "two"]), old, old).to_pylist() == ["1", "two"]
    typed = old_array(pa.array([1, None]), pa.field("c", pa.int64()), old)
    assert typed.to_pylist() == ["1", None]
