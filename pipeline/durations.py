"""Parsing human durations ("55m", "1h30m", "90") and clock times ("06:30") into seconds."""

from __future__ import annotations

import re
from datetime import datetime, timedelta

_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|h|m|s)?", re.IGNORECASE)
_CLOCK = re.compile(r"^(\d{1,2}):(\d{2})(?::(\d{2}))?$")
_UNITS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}


def parse_duration(text: str) -> float:
    """Seconds in ``text``: ``90``, ``90s``, ``55m``, ``1h30m``, ``1.5h``. ValueError if not one."""
    cleaned = text.strip().lower().replace(" ", "")
    if not cleaned:
        raise ValueError("empty duration")
    total, pos = 0.0, 0
    for match in _PART.finditer(cleaned):
        if match.start() != pos or not match.group(0):
            break
        total += float(match.group(1)) * _UNITS[(match.group(2) or "s").lower()]
        pos = match.end()
    if pos != len(cleaned):
        raise ValueError(f"not a duration: {text!r} (try 90s, 55m or 1h30m)")
    return total


def seconds_until(text: str, now: datetime | None = None) -> float:
    """Seconds from ``now`` to a deadline given as a duration or a local clock time.

    A clock time (``06:30``, ``23:59:30``) means its next occurrence: ``06:30``
    at 07:00 is tomorrow morning.
    """
    match = _CLOCK.match(text.strip())
    if not match:
        return parse_duration(text)
    hour, minute, second = int(match.group(1)), int(match.group(2)), int(match.group(3) or 0)
    if hour > 23 or minute > 59 or second > 59:
        raise ValueError(f"not a clock time: {text!r}")
    now = now or datetime.now()
    target = now.replace(hour=hour, minute=minute, second=second, microsecond=0)
    if target <= now:
        target += timedelta(days=1)
    return (target - now).total_seconds()
