"""The types of Parquet output columns, and journal values turned back into them.

Parquet output is journaled as JSON (:mod:`pipeline.parquet_output`), so a value
reaches the merge as JSON: a timestamp as ISO 8601 text, a decimal as text, bytes as
base64 (:func:`journal_value`). Here each column gets its type (the standard fields
fixed, ``id`` and kept columns from the input's Arrow schema or, for JSONL inputs,
from the values) and the values are turned back into that type. A column whose values
fit no one type (``1`` and ``"two"``) is stored as text: strings as they are, other
values as JSON, flagged by the field metadata :data:`MIXED_TEXT`.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import decimal
import json
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.records import json_default

UTC_US = pa.timestamp("us", tz="UTC")

OUTPUT_SCHEMA = pa.schema(
    [pa.field("id", pa.string(), nullable=False), pa.field("sample", pa.int64()),
     pa.field("position", pa.int64())]
    + [pa.field(n, pa.string()) for n in ("prompt", "system", "completion", "model")]
    + [pa.field("attempts", pa.int64())]
    + [pa.field(n, pa.string()) for n in ("session_hash", "event_id", "url")]
    + [pa.field(n, UTC_US) for n in ("started_at", "finished_at")]
    + [pa.field(n, pa.float64()) for n in ("queue_ms", "ttft_ms", "duration_ms")]
    + [pa.field("chunks", pa.int64())]
)
"""The standard success fields in Parquet output; ``id`` has the input's type (string here
when there is none), kept columns follow."""

ENCODING = b"qwen_batch.encoding"
MIXED_TEXT = {ENCODING: b"text"}
"""Field metadata of a column of mixed types stored as text (strings as is, others as JSON)."""
LEGACY_JSON = {ENCODING: b"json"}
"""Field metadata of earlier versions: every value of the column is JSON text."""

_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_EXTRA_DIGITS = {"s": r"\.\d+", "ms": r"(\.\d{3})\d+", "us": r"(\.\d{6})\d+",
                 "ns": r"(\.\d{9})\d+"}
"""Fraction digits past a unit's (Python writes 6 for a millisecond time: ``.250000``)."""
_ERRORS = (pa.ArrowException, ValueError, TypeError, OverflowError, decimal.InvalidOperation)


class Unconvertible(Exception):
    """A column's values do not fit the type planned for it; the merge stores it as text."""

    def __init__(self, column: str, detail: object) -> None:
        super().__init__(f"column {column!r}: {detail}")
        self.column = column


def is_mixed(field: pa.Field) -> bool:
    """Whether the field holds mixed values as text (this version's or an earlier one's)."""
    return field.metadata in (MIXED_TEXT, LEGACY_JSON)


def mixed_field(name: str) -> pa.Field:
    return pa.field(name, pa.string(), metadata=MIXED_TEXT)


def mixed_text(value: Any) -> str | None:
    """A value in a mixed column: a string as it is, anything else as JSON text."""
    if value is None or isinstance(value, str):
        return value
    if not isinstance(value, (dict, list, tuple, int, float)):
        value = json_default(value)  # a datetime, a decimal...: its text, not quoted JSON
        if isinstance(value, str):
            return value
    return json.dumps(value, ensure_ascii=False, default=json_default)


def writable(kind: pa.DataType) -> bool:
    """Whether Parquet can store the type (it has no struct without fields)."""
    if pa.types.is_struct(kind):
        return kind.num_fields > 0 and all(writable(kind.field(i).type)
                                           for i in range(kind.num_fields))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return writable(kind.value_type)
    return True


def infer(values: list[Any]) -> pa.DataType | None:
    """The type pyarrow gives JSON values; None when no one type holds them all."""
    try:
        kind = pa.array(values).type
    except _ERRORS:
        return None
    return kind if writable(kind) else None  # e.g. {} infers as struct<>


def unify(old: pa.DataType | None, new: pa.DataType | None) -> pa.DataType | None:
    """A type holding values of both (int and float: float; structs: their fields merged)."""
    if old is None or new is None:
        return None
    if old == new:
        return old
    try:
        merged = pa.unify_schemas([pa.schema([("x", old)]), pa.schema([("x", new)])],
                                  promote_options="permissive").field("x").type
    except _ERRORS:
        return None
    return merged if writable(merged) else None


def plan(old: pa.Field | None, new: pa.DataType | None, name: str) -> pa.Field:
    """The field of a column from the existing output's field and the new rows' type.

    Text in the existing output and another type now is an output of an earlier
    version (ids, times as text): the new type is planned, and :func:`old_array`
    raises Unconvertible if the old values do not convert.
    """
    if old is None:
        return mixed_field(name) if new is None else pa.field(name, new)
    if is_mixed(old):
        return mixed_field(name)
    if _is_text(old.type) and new is not None and not _is_text(new) and not pa.types.is_null(new):
        return pa.field(name, new)
    kind = unify(old.type, new)
    return mixed_field(name) if kind is None else pa.field(name, kind)


def _plain(kind: pa.DataType) -> bool:
    """Whether pyarrow takes JSON values for the type as they are."""
    if pa.types.is_struct(kind):
        return all(_plain(kind.field(i).type) for i in range(kind.num_fields))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or \
            pa.types.is_fixed_size_list(kind):
        return _plain(kind.value_type)
    return bool(pa.types.is_null(kind) or pa.types.is_boolean(kind)
                or pa.types.is_integer(kind) or pa.types.is_float64(kind)
                or pa.types.is_float32(kind) or _is_text(kind))


def _binary(kind: pa.DataType) -> bool:
    return bool(pa.types.is_binary(kind) or pa.types.is_large_binary(kind)
                or pa.types.is_fixed_size_binary(kind))


def has_binary(kind: pa.DataType) -> bool:
    """Whether a value of the type can hold bytes (which the journal keeps as base64)."""
    if pa.types.is_struct(kind):
        return any(has_binary(kind.field(i).type) for i in range(kind.num_fields))
    if pa.types.is_map(kind):
        return has_binary(kind.key_type) or has_binary(kind.item_type)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or \
            pa.types.is_fixed_size_list(kind):
        return has_binary(kind.value_type)
    if pa.types.is_dictionary(kind):
        return has_binary(kind.value_type)
    return _binary(kind)


def journal_value(value: Any, kind: pa.DataType) -> Any:
    """A value of a column of ``kind`` as the journal keeps it: bytes as base64 text.

    (JSON text alone would leave bytes that happen to be UTF-8 and base64 text apart
    only by guessing.) Text where bytes were expected (a row that came through the Ray
    engine's JSON) is kept as its UTF-8 bytes.
    """
    if value is None:
        return None
    if pa.types.is_struct(kind) and isinstance(value, dict):
        types = {kind.field(i).name: kind.field(i).type for i in range(kind.num_fields)}
        return {k: journal_value(v, types[k]) if k in types else v for k, v in value.items()}
    if pa.types.is_map(kind) and isinstance(value, (list, tuple)):
        return [(journal_value(k, kind.key_type), journal_value(v, kind.item_type))
                for k, v in value]
    if (pa.types.is_list(kind) or pa.types.is_large_list(kind)
            or pa.types.is_fixed_size_list(kind)) and isinstance(value, (list, tuple)):
        return [journal_value(v, kind.value_type) for v in value]
    if pa.types.is_dictionary(kind):
        return journal_value(value, kind.value_type)
    if _binary(kind):
        data = value.encode("utf-8", "surrogatepass") if isinstance(value, str) else bytes(value)
        return base64.b64encode(data).decode("ascii")
    return value


def from_json(value: Any, kind: pa.DataType) -> Any:
    """A journal (JSON) value as pyarrow takes it for ``kind``: ISO text to a timestamp..."""
    if value is None:
        return None
    if pa.types.is_struct(kind):
        if not isinstance(value, dict):
            return value
        return {kind.field(i).name: from_json(value.get(kind.field(i).name), kind.field(i).type)
                for i in range(kind.num_fields)}
    if pa.types.is_map(kind):
        pairs = value.items() if isinstance(value, dict) else value
        return [(from_json(k, kind.key_type), from_json(v, kind.item_type)) for k, v in pairs]
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or \
            pa.types.is_fixed_size_list(kind):
        return [from_json(v, kind.value_type) for v in value] if isinstance(value, list) \
            else value
    if pa.types.is_dictionary(kind):
        return from_json(value, kind.value_type)
    if pa.types.is_duration(kind) and isinstance(value, (int, float)):
        return round(value * _PER_SECOND[kind.unit])  # the journal holds seconds
    if not isinstance(value, str):
        return value
    if pa.types.is_timestamp(kind):
        return parse_times(pa.array([value], pa.string()), kind)[0].value
    if pa.types.is_date(kind):
        return dt.date.fromisoformat(value)
    if pa.types.is_time(kind):
        return dt.time.fromisoformat(value)
    if pa.types.is_decimal(kind):
        return decimal.Decimal(value)
    if _binary(kind):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return value.encode("utf-8", "surrogatepass")  # a journal of an earlier version
    if pa.types.is_integer(kind):
        number = int(value)
        if str(number) != value:  # "007" is not 7: ids must come back as they were
            raise ValueError(f"{value!r} is not an integer as written")
        return number
    return value


def parse_times(text: pa.Array, kind: pa.DataType) -> pa.Array:
    """ISO 8601 text as timestamps of ``kind``, with Arrow's parser (offsets, nanoseconds).

    Arrow refuses more fraction digits than the unit has: Python writes a millisecond
    time as ``.250000``, so the zeros past the unit are dropped first.
    """
    trimmed = pc.replace_substring_regex(text, _EXTRA_DIGITS[kind.unit],
                                         "" if kind.unit == "s" else r"\1")
    return trimmed.cast(kind)


def _is_text(kind: pa.DataType) -> bool:
    return bool(pa.types.is_string(kind) or pa.types.is_large_string(kind))


def new_array(values: list[Any], field: pa.Field) -> pa.Array:
    """Journal values as an array of the field's type; Unconvertible when they do not fit."""
    try:
        if is_mixed(field):
            return pa.array([mixed_text(v) for v in values], pa.string())
        kind = field.type
        if _plain(kind):
            return pa.array(values, kind)
        if pa.types.is_timestamp(kind) and all(v is None or isinstance(v, str) for v in values):
            return parse_times(pa.array(values, pa.string()), kind)  # the standard times
        return pa.array([from_json(v, kind) for v in values], kind)
    except _ERRORS as exc:
        raise Unconvertible(field.name, exc) from exc


def old_array(column: pa.Array, old: pa.Field, field: pa.Field) -> pa.Array:
    """A column of the existing output as an array of the field's (new) type.

    Earlier versions stored ids and times as text: integer text becomes integers only
    when every value comes back as it was written (``"007"`` does not).
    """
    try:
        if is_mixed(field):
            if old.metadata == MIXED_TEXT:
                return column
            values = column.to_pylist()
            if old.metadata == LEGACY_JSON:
                values = [None if v is None else json.loads(v) for v in values]
            return pa.array([mixed_text(v) for v in values], pa.string())
        if column.type == field.type:
            return column
        if _is_text(column.type) and pa.types.is_integer(field.type):
            cast = column.cast(field.type)
            if not cast.cast(column.type).equals(column):
                raise ValueError("integer text that does not come back as written")
            return cast
        try:
            return column.cast(field.type)
        except _ERRORS:
            return new_array(column.to_pylist(), field)
    except Unconvertible as exc:
        raise Unconvertible(field.name, exc) from exc
    except _ERRORS as exc:
        raise Unconvertible(field.name, exc) from exc
