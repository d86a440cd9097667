"""The timestamps of pipeline.models: taken as integers, written as ISO 8601."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.models import iso_utc, now_us

EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def by_datetime(micros: int) -> str:
    """What the standard library writes for the same moment (milliseconds, truncated)."""
    moment = EPOCH + timedelta(microseconds=micros)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 4_102_444_800_000_000))  # 1970 to 2100
def test_iso_utc_writes_what_datetime_writes(micros: int) -> None:
    assert iso_utc(micros) == by_datetime(micros)


def test_iso_utc_at_the_edges_of_a_second_and_of_a_millisecond() -> None:
    second = 1_714_564_800_000_000  # 2024-05-01T12:00:00Z
    assert iso_utc(second) == "2024-05-01T12:00:00.000Z"
    assert iso_utc(second + 999) == "2024-05-01T12:00:00.000Z"  # truncated, never rounded up
    assert iso_utc(second + 1_000) == "2024-05-01T12:00:00.001Z"
    assert iso_utc(second - 1) == "2024-05-01T11:59:59.999Z"
    assert iso_utc(second + 999_999) == "2024-05-01T12:00:00.999Z"
    assert iso_utc(None) is None


def test_now_us_is_the_wall_clock_in_microseconds() -> None:
    before = time.time()
    taken = now_us()
    after = time.time()
    assert isinstance(taken, int)
    assert before - 0.001 <= taken / 1e6 <= after + 0.001
    written = datetime.fromisoformat(str(iso_utc(taken)).replace("Z", "+00:00"))
    assert abs((written - datetime.now(timezone.utc)).total_seconds()) < 5
