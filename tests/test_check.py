"""``qwen-batch check`` rides out a transient queue-full, within a bound."""

from __future__ import annotations

import asyncio

from silent_space import SilentSpace, answer_for, run_silent_space

from pipeline.check import PROBE_PROMPT, QUEUE_FULL_TRIES, check_endpoint
from pipeline.client import Timeouts

TIMEOUTS = Timeouts(connect=2.0, read=5.0, idle=5.0, total=10.0)


async def test_check_retries_a_transient_queue_full_then_succeeds() -> None:
    async with run_silent_space(SilentSpace(queue_full=2)) as space:
        report = await asyncio.wait_for(check_endpoint(space.url, timeouts=TIMEOUTS), 20)
    assert report.ok, report.render()
    assert report.answer == answer_for(PROBE_PROMPT)
    assert space.hits["join"] == 3
    assert "queue       full twice, probe sent again" in report.render()


async def test_a_dead_url_says_why_without_noise_or_advice_to_run_check(unused_tcp_port: int) -> None:
    report = await asyncio.wait_for(
        check_endpoint(f"http://127.0.0.1:{unused_tcp_port}", timeouts=TIMEOUTS), 20)
    text = report.render()
    assert not report.ok and "connection refused" in text, text
    assert "/config" not in text  # nothing answered: no layout was guessed for anything
    assert "  fix         check --url, --proxy and the network, then run again" in text.splitlines()
    assert "qwen-batch check" not in text  # the command being run


async def test_check_gives_up_on_a_queue_that_stays_full() -> None:
    async with run_silent_space(SilentSpace(queue_full=1000)) as space:
        report = await asyncio.wait_for(check_endpoint(space.url, timeouts=TIMEOUTS), 30)
    assert not report.ok
    assert report.error is not None and report.error.startswith("queue_full:")
    assert space.hits["join"] == QUEUE_FULL_TRIES  # a few tries, not one and not forever
