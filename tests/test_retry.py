"""Retry policy: backoff with full jitter and server wait hints."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from pipeline.errors import AppError, HTTPStatusError, QueueFullError, ResponseTooLargeError
from pipeline.retry import RetryPolicy, parse_retry_after, retry_hint_from_text


def test_retry_after_seconds_and_dates() -> None:
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after(format_datetime(now + timedelta(seconds=30), usegmt=True), now=now) == 30.0
    assert parse_retry_after(format_datetime(now - timedelta(seconds=30), usegmt=True), now=now) == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None
    assert parse_retry_after("nan") is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("Please retry in 30 seconds", 30.0),
        ("Too many requests, try again in 2 minutes.", 120.0),
        ("retry after 1.5s", 1.5),
        ("retry in 250ms", 0.25),
        ("no hint here", None),
    ],
)
def test_wait_hints_in_messages(text: str, seconds: float | None) -> None:
    assert retry_hint_from_text(text) == seconds


def test_full_jitter_stays_under_the_exponential_ceiling() -> None:
    policy = RetryPolicy(base_delay=1.0, max_delay=8.0)
    rng = random.Random(1)
    error = AppError("boom")
    for attempt, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (9, 8.0)]:
        delays = [policy.delay(error, attempt, rng) for _ in range(200)]
        assert all(0.0 <= d <= ceiling for d in delays)
        assert max(delays) > ceiling * 0.8  # jitter spreads over the whole range


def test_server_hint_wins_up_to_the_cap() -> None:
    policy = RetryPolicy(max_hint=60.0)
    assert policy.delay(QueueFullError("full", status=503, retry_after=7.0), 1) == 7.0
    assert policy.delay(QueueFullError("full", status=503, retry_after=900.0), 1) == 60.0
    assert policy.delay(AppError("rate limited, retry in 20 seconds"), 1) == 20.0


def test_should_retry_respects_retryable_and_attempts() -> None:
    policy = RetryPolicy(max_attempts=3)
    assert policy.should_retry(AppError("x"), 1)
    assert policy.should_retry(AppError("x"), 2)
    assert not policy.should_retry(AppError("x"), 3)
    assert not policy.should_retry(ResponseTooLargeError("big"), 1)
    assert not policy.should_retry(HTTPStatusError("nope", status=400), 1)
    assert policy.should_retry(HTTPStatusError("later", status=429), 1)
    assert not policy.should_retry(ValueError("not ours"), 1)
