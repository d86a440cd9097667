"""Durations and clock-time deadlines."""

from __future__ import annotations

from datetime import datetime

import pytest

from pipeline.durations import parse_duration, seconds_until


@pytest.mark.parametrize(("text", "seconds"), [
    ("90", 90.0), ("90s", 90.0), ("55m", 3300.0), ("1h30m", 5400.0), ("1.5h", 5400.0),
    ("250ms", 0.25), (" 2m 5s ", 125.0),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "soon", "5x", "m5", "1h-2m"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_clock_times_mean_their_next_occurrence() -> None:
    now = datetime(2026, 1, 1, 7, 0, 0)
    assert seconds_until("07:30", now) == 1800.0
    assert seconds_until("06:30", now) == 23.5 * 3600
    assert seconds_until("07:00:10", now) == 10.0
    assert seconds_until("55m", now) == 3300.0
    with pytest.raises(ValueError):
        seconds_until("25:00", now)
