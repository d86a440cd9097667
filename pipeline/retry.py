"""When to retry a failed request and how long to wait first (pure policy, no sleeping)."""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from .errors import RequestError

_RETRY_IN = re.compile(
    r"(?:retry|try again)\s+(?:in|after)\s+(\d+(?:\.\d+)?)\s*(ms|milliseconds?|s|sec(?:ond)?s?|m|min(?:ute)?s?)?\b",
    re.IGNORECASE,
)


def parse_retry_after(value: str | None, *, now: datetime | None = None) -> float | None:
    """Seconds from an HTTP ``Retry-After`` header (delta-seconds or HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=timezone.utc)
        seconds = (when - (now or datetime.now(timezone.utc))).total_seconds()
    return max(0.0, seconds) if seconds == seconds else None  # NaN check


def retry_hint_from_text(text: str | None) -> float | None:
    """Seconds from a human wait hint such as "Please retry in 30 seconds"."""
    if not text:
        return None
    match = _RETRY_IN.search(text)
    if not match:
        return None
    unit = (match.group(2) or "s").lower()
    scale = 1.0
    if unit.startswith("ms") or unit.startswith("milli"):
        scale = 0.001
    elif unit.startswith("m"):
        scale = 60.0
    return float(match.group(1)) * scale


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with full jitter, honouring server wait hints up to a cap.

    ``max_attempts`` counts the first try. The n-th retry waits a uniform random
    time in ``[0, min(max_delay, base_delay * 2**(n-1))]``, or the server's hint
    when it gave one (never more than ``max_hint``).
    """

    max_attempts: int = 4
    """``--max-attempts``."""
    base_delay: float = 1.0
    """``--retry-delay``."""
    max_delay: float = 60.0
    """``--retry-max-delay``."""
    max_hint: float = 300.0
    """internal: the longest server wait hint (Retry-After) honoured."""

    def should_retry(self, error: BaseException, attempt: int) -> bool:
        """True when ``error`` ended attempt number ``attempt`` (1-based) and another may follow."""
        return (
            isinstance(error, RequestError) and error.retryable and attempt < self.max_attempts
        )

    def delay(self, error: BaseException, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before the attempt after ``attempt``."""
        hint = getattr(error, "retry_after", None)
        if hint is None:
            hint = retry_hint_from_text(str(error))
        if hint is not None:
            return min(float(hint), self.max_hint)
        ceiling = min(self.max_delay, self.base_delay * (2 ** max(0, attempt - 1)))
        return (rng or random).uniform(0.0, ceiling)
