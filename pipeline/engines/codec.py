"""Rows and results as JSON text, so they can travel between processes (Ray) losslessly.

A :class:`~pipeline.models.PromptRow` goes to a worker as one JSON text; a result
comes back as a ``(kind, record)`` pair where ``record`` is *exactly* what the local
engine writes (:func:`~pipeline.records.success_record` or
:func:`~pipeline.records.failure_record`) as JSON text. The driver rebuilds a
:class:`~pipeline.models.Success` / :class:`~pipeline.models.Failure` from it, so the
writers, the summary and the progress bar see what they see on the local engine, and
``success_record(success_from_record(r)) == r``.

JSON is written with ``ensure_ascii=True``: any Python string survives the trip,
lone surrogates from a ``"\\ud800"`` escape in the input included (Arrow strings
must be valid UTF-8, escaped JSON always is). Kept bytes travel as base64 in a tagged
object and come back as bytes, so a Parquet output keeps them exactly; other values
JSON lacks (datetimes, decimals) travel as the writers store them, as text the
Parquet merge reads back into the input's type.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from pipeline.models import Failure, Micros, PromptRow, RequestTrace, Result, Success
from pipeline.records import STANDARD_FIELDS, failure_record, json_default, success_record

Kind = Literal["ok", "error", "down", "stats"]
"""What a result row of a worker holds: a success record, a failure record, the reason
the endpoints are down (the run must stop, exit 4), or the worker's counters."""

KINDS: tuple[str, ...] = ("ok", "error", "down", "stats")


BYTES_TAG = "__qwen_batch_bytes__"
"""The one key of the object that carries bytes (as base64) through the JSON text."""


def _default(obj: Any) -> Any:
    if isinstance(obj, (bytes, bytearray)):
        return {BYTES_TAG: base64.b64encode(obj).decode("ascii")}
    return json_default(obj)


def dumps(value: Any) -> str:
    """Compact, ASCII-only JSON text; bytes tagged, other odd values (datetimes...) as the
    writers store them."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":"), default=_default)


def _restore(value: Any) -> Any:
    """A kept value back from JSON: tagged bytes are bytes again."""
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get(BYTES_TAG), str):
            try:
                return base64.b64decode(value[BYTES_TAG], validate=True)
            except (binascii.Error, ValueError):
                return value
        return {k: _restore(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_restore(v) for v in value]
    return value


def _keep(value: Any) -> dict[str, Any]:
    return {k: _restore(v) for k, v in dict(value or {}).items()}


def encode_row(row: PromptRow) -> str:
    """A PromptRow as JSON text (kept values JSON-encoded the way the output stores them)."""
    return dumps({
        "id": row.id, "id_value": row.id_value, "position": row.position, "prompt": row.prompt,
        "system": row.system,
        "keep": row.keep, "location": row.location,
        "samples": list(row.samples) if row.samples is not None else None,
    })


def decode_row(text: str) -> PromptRow:
    """The PromptRow of :func:`encode_row`; ValueError if the text is not one."""
    data = json.loads(text)
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        raise ValueError("not an encoded prompt row")
    samples = data.get("samples")
    id_value = data.get("id_value")
    return PromptRow(
        id=data["id"], id_value=int(id_value) if id_value is not None else None,
        position=int(data["position"]), prompt=str(data["prompt"]),
        system=data.get("system"), keep=_keep(data.get("keep")),
        location=str(data.get("location") or ""),
        samples=tuple(int(s) for s in samples) if samples is not None else None,
    )


def encode_result(result: Result) -> tuple[Kind, str]:
    """``("ok", success record)`` or ``("error", failure record)``, the record as JSON text."""
    if isinstance(result, Success):
        return "ok", dumps(success_record(result))
    return "error", dumps(failure_record(result))


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_MICROSECOND = timedelta(microseconds=1)


def _moment(value: Any) -> Micros | None:
    """The moment :func:`~pipeline.models.iso_utc` wrote as ``value``."""
    if not isinstance(value, str):
        return None
    # Python 3.10's fromisoformat does not take the "Z" suffix that iso_utc writes.
    moment = datetime.fromisoformat(value[:-1] + "+00:00" if value.endswith("Z") else value)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=timezone.utc)
    return (moment - _EPOCH) // _MICROSECOND


def _float(value: Any) -> float | None:
    return None if value is None else float(value)


def success_from_record(record: Mapping[str, Any]) -> Success:
    """The Success whose :func:`~pipeline.records.success_record` is ``record``.

    Every key that is not a standard field is a kept column, already renamed: as
    keys that are not standard they come out of ``success_record`` unchanged.
    """
    keep = _keep({k: v for k, v in record.items() if k not in STANDARD_FIELDS})
    position = record.get("position")
    row_id = record["id"]
    integer = isinstance(row_id, int) and not isinstance(row_id, bool)
    row = PromptRow(id=str(row_id), id_value=row_id if integer else None,
                    position=-1 if position is None else int(position),
                    prompt=record["prompt"],
                    system=record.get("system"), keep=keep)
    trace = RequestTrace(
        session_hash=record.get("session_hash") or "", url=record.get("url") or "",
        event_id=record.get("event_id"), started_at=_moment(record.get("started_at")),
        finished_at=_moment(record.get("finished_at")), queue_ms=_float(record.get("queue_ms")),
        ttft_ms=_float(record.get("ttft_ms")), duration_ms=_float(record.get("duration_ms")),
        chunks=int(record.get("chunks") or 0),
    )
    return Success(row, record["completion"], trace, int(record["attempts"]),
                   record["model"], int(record.get("sample") or 0))


def failure_from_record(record: Mapping[str, Any]) -> Failure:
    """The request Failure whose :func:`~pipeline.records.failure_record` is ``record``.

    Only ``failed_at`` differs when it is written again: it is the time of writing.
    """
    row_id = record.get("id")
    position = int(record.get("position") or 0)
    row = PromptRow(id=str(row_id) if row_id is not None else "", position=position, prompt="",
                    location=record.get("location") or "")
    session_hash = record.get("session_hash")
    trace = None if session_hash is None else RequestTrace(
        session_hash=session_hash, event_id=record.get("event_id"),
        queue_ms=_float(record.get("queue_ms")), ttft_ms=_float(record.get("ttft_ms")),
        duration_ms=_float(record.get("duration_ms")),
    )
    return Failure(
        None if row_id is None else str(row_id), position, str(record["error_type"]),
        str(record["error"]), int(record.get("attempts") or 0), row=row, trace=trace,
        sample=int(record.get("sample") or 0), retryable=bool(record.get("retryable")),
    )


def decode_result(kind: str, text: str) -> Result:
    """The Success or Failure of an ``ok``/``error`` result row."""
    record = json.loads(text)
    if kind == "ok":
        return success_from_record(record)
    if kind == "error":
        return failure_from_record(record)
    raise ValueError(f"a {kind!r} row holds no result")
