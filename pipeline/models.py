"""Plain data carried between the layers: prompts, request traces, results."""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field
from typing import Any, Union

Micros = int
"""A wall-clock moment: whole microseconds since the Unix epoch (UTC).

Timestamps stay integers until a record is written: taking one is a clock read, not
a timezone-aware ``datetime``, and formatting it is exact (no float rounding)."""


def now_us() -> Micros:
    """The current wall-clock time (timestamps; durations use the monotonic clock)."""
    return time.time_ns() // 1000


@functools.lru_cache(maxsize=8)
def _second_text(seconds: int) -> str:
    # Records written together share their second: this is computed about once a second.
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))


def iso_utc(moment: Micros | None) -> str | None:
    """ISO 8601 in UTC to the millisecond (truncated) with a ``Z`` suffix, or None."""
    if moment is None:
        return None
    seconds, micros = divmod(moment, 1_000_000)
    return f"{_second_text(seconds)}.{micros // 1000:03d}Z"


@dataclass(frozen=True, slots=True)
class ChatMessage:
    """One turn of a conversation as callers pass it (``{"role", "content"}``)."""

    role: str
    content: str


@dataclass(frozen=True, slots=True)
class RawRecord:
    """One record as a reader found it, before it is turned into a prompt.

    ``position`` is the 0-based index of the record in the input; ``location``
    is what a person needs to find it (``data.jsonl:17`` or ``data.parquet row 16``).
    """

    position: int
    location: str
    values: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PromptRow:
    """One unit of work: a prompt and the system prompt to send with it."""

    id: str
    position: int
    prompt: str
    system: str | None = None
    keep: dict[str, Any] = field(default_factory=dict)
    location: str = ""
    samples: tuple[int, ...] | None = None
    """Which sample numbers to run; None means all of the run's samples."""
    id_value: int | None = None
    """The id as the input holds it when it is an integer (``id`` is its text, the key
    resume and digests use); the output writes this value. None: ``id`` is the value."""


@dataclass(slots=True)
class RequestTrace:
    """What happened during one attempt; filled in by the client as it goes.

    Millisecond figures are measured from the start of the join request with
    the monotonic clock; ``None`` means the moment never came.
    """

    session_hash: str
    url: str = ""
    event_id: str | None = None
    started_at: Micros | None = None
    finished_at: Micros | None = None
    queue_ms: float | None = None
    ttft_ms: float | None = None
    duration_ms: float | None = None
    chunks: int = 0
    queue_rank: int | None = None
    queue_eta_s: float | None = None


@dataclass(frozen=True, slots=True)
class Completion:
    """A finished answer and the trace of the attempt that produced it."""

    text: str
    trace: RequestTrace


@dataclass(frozen=True, slots=True)
class Success:
    """A row that got its completion."""

    row: PromptRow
    text: str
    trace: RequestTrace
    attempts: int
    model: str
    sample: int = 0


@dataclass(frozen=True, slots=True)
class Failure:
    """A row that did not: bad input, or a request that failed for good."""

    id: str | None
    position: int
    error_type: str
    error: str
    attempts: int
    row: PromptRow | None = None
    trace: RequestTrace | None = None
    sample: int = 0
    retryable: bool = False
    location: str = ""
    """Where the row is in the input (``data.jsonl:17``); the row's own when it has one."""


Result = Union[Success, Failure]  # noqa: UP007 - a runtime alias, fine on Python 3.10
