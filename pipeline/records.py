"""Flat dict records for the output and errors files, their JSON lines, and the resume key."""

from __future__ import annotations

import base64
import datetime as dt
import decimal
import functools
import json
from collections.abc import Mapping
from typing import Any

from pipeline.errors import OutputError, explain
from pipeline.models import Failure, Success, iso_utc, now_us
from pipeline.prompts import DEFAULT_SYSTEM_PROMPT

Key = tuple[str, int]
"""A record's resume key: ``(id, sample)``."""

STANDARD_FIELDS: tuple[str, ...] = (
    "id", "sample", "position", "prompt", "system", "completion", "model", "attempts", "session_hash",
    "event_id", "url", "started_at", "finished_at", "queue_ms", "ttft_ms", "duration_ms",
    "chunks",
)
"""The keys of a success record, in order, before the kept input columns."""

KEEP_PREFIX = "input_"
"""Prepended to a kept input column whose name is already taken by a standard key."""


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def success_record(s: Success) -> dict[str, Any]:
    """The output record of a success: the standard fields, then the kept input columns.

    A kept column named like a standard key is renamed ``input_<name>`` (prefixed
    again while that name is used by another column): nothing is ever overridden.
    """
    trace = s.trace
    record: dict[str, Any] = {
        # The input's own value: an integer id stays an integer (JSON number, int64...).
        "id": s.row.id if s.row.id_value is None else s.row.id_value,
        "sample": s.sample,
        # 0-based in the input: what `qwen-batch sort` and the Parquet merge order by.
        "position": s.row.position,
        "prompt": s.row.prompt,
        # What was sent: the Space's own default when the row had none.
        "system": s.row.system if s.row.system is not None else DEFAULT_SYSTEM_PROMPT,
        "completion": s.text,
        "model": s.model,
        "attempts": s.attempts,
        "session_hash": trace.session_hash,
        "event_id": trace.event_id,
        "url": trace.url,
        "started_at": iso_utc(trace.started_at),
        "finished_at": iso_utc(trace.finished_at),
        "queue_ms": _ms(trace.queue_ms),
        "ttft_ms": _ms(trace.ttft_ms),
        "duration_ms": _ms(trace.duration_ms),
        "chunks": trace.chunks,
    }
    for key, value in zip(kept_keys(tuple(s.row.keep)), s.row.keep.values(), strict=True):
        record[key] = value
    return record


@functools.lru_cache(maxsize=64)
def kept_keys(names: tuple[str, ...]) -> tuple[str, ...]:
    """The output keys of the kept input columns ``names``, in order (see :func:`success_record`)."""
    taken = set(STANDARD_FIELDS) | set(names)
    keys = []
    for name in names:
        key = name
        if key in STANDARD_FIELDS:  # a standard key: rename to a name no other column uses
            while key in taken:
                key = KEEP_PREFIX + key
            taken.add(key)
        keys.append(key)
    return tuple(keys)


def failure_record(f: Failure) -> dict[str, Any]:
    """The errors-file record of a failure; trace fields are None when no request was made.

    ``error`` says what happened, then what to do about it (:func:`~pipeline.errors.explain`).
    """
    trace = f.trace
    return {
        "id": f.id,
        "sample": f.sample,
        "position": f.position,
        "location": f.location or (f.row.location if f.row is not None else "") or None,
        "error_type": f.error_type,
        "error": explain(f.error_type, f.error),
        "attempts": f.attempts,
        "retryable": f.retryable,
        "session_hash": trace.session_hash if trace else None,
        "event_id": trace.event_id if trace else None,
        "queue_ms": _ms(trace.queue_ms) if trace else None,
        "ttft_ms": _ms(trace.ttft_ms) if trace else None,
        "duration_ms": _ms(trace.duration_ms) if trace else None,
        "failed_at": iso_utc(now_us()),
    }


def record_key(record: Mapping[str, Any]) -> tuple[str, int]:
    """The resume key ``(id, sample)`` of an output record; ValueError if it has no id."""
    record_id = record.get("id")
    if record_id is None:
        raise ValueError("the record has no 'id'")
    return str(record_id), int(record.get("sample") or 0)


def output_key(record: Mapping[str, Any], path: str) -> Key:
    """A stored record's ``(id, sample)``; OutputError naming ``path`` if it has none."""
    try:
        return record_key(record)
    except (ValueError, TypeError) as exc:
        raise OutputError(f"{path}: a record has no usable id/sample ({exc})") from exc


def json_default(obj: Any) -> Any:
    """JSON stand-in for values Parquet inputs carry (datetimes, decimals, bytes...).

    Anything else becomes ``str(obj)``: one odd value must not stop the batch.
    """
    if isinstance(obj, (dt.datetime, dt.date, dt.time)):
        return obj.isoformat()
    if isinstance(obj, dt.timedelta):
        return obj.total_seconds()
    if isinstance(obj, decimal.Decimal):
        return str(obj)
    if isinstance(obj, (bytes, bytearray)):
        try:
            return bytes(obj).decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(obj).decode("ascii")
    if isinstance(obj, (set, frozenset)):
        return list(obj)
    return str(obj)


def encode_record(record: Mapping[str, Any]) -> bytes:
    """One record as a compact UTF-8 JSON line, newline included."""
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=json_default)
    try:
        return text.encode("utf-8") + b"\n"
    except UnicodeEncodeError:  # lone surrogates (a \ud800 escape in the input): keep them escaped
        return json.dumps(record, separators=(",", ":"), default=json_default).encode() + b"\n"
