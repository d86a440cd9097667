"""EndpointPool: choice by score and the per-endpoint circuit breaker, without the network."""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Any

import pytest
from fake_clock import FakeClock, settle

from pipeline.endpoints import Endpoint, EndpointPool, endpoint_failure
from pipeline.errors import (
    AccessDeniedError,
    AppError,
    ConnectError,
    DiscoveryError,
    EndpointDownError,
    HTTPStatusError,
    IdleTimeoutError,
    IncompleteResponseError,
    InvalidEndpointError,
    QueueFullError,
    ServerError,
    SpaceUnavailableError,
    StreamEndedError,
    TLSError,
    TransportError,
)
from pipeline.models import Completion, RequestTrace


class Stub:
    """A completer that is never called: the pool only hands it out."""

    def __init__(self, url: str) -> None:
        self.display_url = url

    async def complete(self, prompt: str, system: str | None = None, *,
                       trace: RequestTrace | None = None) -> Completion:
        raise AssertionError("not used")


def down() -> TransportError:
    return TransportError("cannot connect: refused")


def pool_of(*urls: str, **kwargs: Any) -> EndpointPool:
    return EndpointPool([Stub(u) for u in urls], **kwargs)


async def fail(pool: EndpointPool, n: int, error: BaseException | None = None) -> None:
    """``n`` attempts in a row that fail with ``error`` (a transport error by default)."""
    for _ in range(n):
        ep = await asyncio.wait_for(pool.acquire(), 1)
        pool.release(ep, error or down(), None)


# -- classification ----------------------------------------------------------------------------


@pytest.mark.parametrize(("error", "kind"), [
    (DiscoveryError("no model_chat"), "gone"),
    (InvalidEndpointError("bad url"), "gone"),
    (SpaceUnavailableError("404", state="gone"), "gone"),
    (SpaceUnavailableError("crashed", state="error"), "gone"),
    (SpaceUnavailableError("zzz", state="sleeping"), "down"),
    (SpaceUnavailableError("wait", state="building"), "down"),
    (QueueFullError("full", status=503), None),
    (HTTPStatusError("bad gateway", status=502), "down"),
    (HTTPStatusError("slow down", status=429), "down"),
    (HTTPStatusError("bad request", status=400), None),
    (HTTPStatusError("not found", status=404), None),
    (TransportError("refused"), "down"),
    (StreamEndedError("cut"), "down"),
    (IdleTimeoutError("idle"), "down"),
    (ServerError("stopped"), "down"),
    (AppError("app failed"), None),
    (IncompleteResponseError("empty"), None),
    (ValueError("a bug"), None),
])
def test_endpoint_failure_classifies_errors(error: BaseException, kind: str | None) -> None:
    assert endpoint_failure(error) == kind


def test_a_pool_needs_an_endpoint_and_names_them() -> None:
    with pytest.raises(ValueError):
        EndpointPool([])
    pool = pool_of("http://a", "http://b")
    assert [ep.url for ep in pool.endpoints] == ["http://a", "http://b"]
    named = EndpointPool([Stub("x")], ["http://named"])  # type: ignore[list-item]
    assert named.endpoints[0].url == "http://named"


# -- choosing ----------------------------------------------------------------------------------


async def test_the_endpoint_expected_to_answer_soonest_is_chosen() -> None:
    pool = pool_of("http://fast", "http://slow")
    fast, slow = pool.endpoints
    fast.ewma_ms, slow.ewma_ms = 100.0, 350.0
    chosen = [await pool.acquire() for _ in range(5)]
    # fast scores 100, 200, 300, 400 (> slow's 350) as its in-flight count grows
    assert [ep.url for ep in chosen] == ["http://fast"] * 3 + ["http://slow", "http://fast"]
    assert fast.in_flight == 4 and slow.in_flight == 1
    for ep in chosen:
        pool.release(ep, None, None)
    assert fast.in_flight == 0 and slow.in_flight == 0
    assert fast.served == 4 and slow.served == 1


async def test_latency_average_follows_successes_only() -> None:
    pool = pool_of("http://a")
    ep = await pool.acquire()
    pool.release(ep, None, 500.0)
    assert ep.ewma_ms == 500.0
    ep = await pool.acquire()
    pool.release(ep, None, 1000.0)
    assert ep.ewma_ms == pytest.approx(600.0)
    ep = await pool.acquire()
    pool.release(ep, down(), 5.0)
    assert ep.ewma_ms == pytest.approx(600.0)
    assert pool.report() == [{"url": "http://a", "state": "closed", "served": 2, "failed": 1,
                              "avg_ms": 600.0}]


# -- the breaker -------------------------------------------------------------------------------


async def test_the_circuit_opens_at_the_threshold_and_traffic_moves() -> None:
    pool = pool_of("http://a", "http://b", failure_threshold=3, cooldown=5.0)
    a, b = pool.endpoints
    b.ewma_ms = 10_000.0  # a is preferred while it is healthy
    await fail(pool, 2)
    assert a.state == "closed" and a.failures == 2
    ep = await pool.acquire()
    pool.release(ep, None, 10.0)  # a success in between resets the count
    assert a.failures == 0
    await fail(pool, 2)
    assert a.state == "closed"
    await fail(pool, 1)
    assert a.state == "open" and a.failed == 5
    for _ in range(3):
        ep = await asyncio.wait_for(pool.acquire(), 1)
        assert ep is b
        pool.release(ep, None, 10.0)
    assert pool.report()[0]["state"] == "open"


async def test_queue_full_and_row_errors_never_open_the_breaker() -> None:
    pool = pool_of("http://a", failure_threshold=2)
    ep = pool.endpoints[0]
    await fail(pool, 1)
    assert ep.failures == 1
    for error in [QueueFullError("full", status=503), AppError("x"),
                  HTTPStatusError("bad", status=400)] * 5:
        got = await asyncio.wait_for(pool.acquire(), 1)
        pool.release(got, error, None)
        assert ep.state == "closed" and ep.failures == 0  # alive: the count restarts
    assert ep.failed == 1 and ep.served == 0


async def test_half_open_sends_a_single_probe_and_its_success_closes() -> None:
    clock = FakeClock()
    pool = pool_of("http://a", failure_threshold=2, cooldown=0.1, clock=clock)
    ep = pool.endpoints[0]
    await fail(pool, 2)
    assert ep.state == "open"
    t0 = clock.now()
    probe = await clock.run(pool.acquire())
    assert probe is ep and ep.state == "half_open" and ep.probing
    assert clock.now() - t0 == pytest.approx(0.1)  # the cooldown, to the tick
    others = [asyncio.create_task(pool.acquire()) for _ in range(3)]
    await clock.advance(0.3)  # well past the cooldown: still nothing beside the probe
    assert not any(t.done() for t in others)
    assert ep.in_flight == 1
    pool.release(probe, None, 20.0)
    assert ep.state == "closed" and ep.failures == 0 and ep.cooldown == 0.0
    got = await asyncio.wait_for(asyncio.gather(*others), 1)
    assert all(g is ep for g in got) and ep.in_flight == 3


async def test_a_failed_probe_reopens_with_a_doubled_cooldown_up_to_the_cap() -> None:
    clock = FakeClock()
    pool = pool_of("http://a", failure_threshold=1, cooldown=0.05, max_cooldown=0.2, clock=clock)
    ep = pool.endpoints[0]
    await fail(pool, 1)
    assert ep.cooldown == 0.05
    cooldowns: list[float] = []
    waits: list[float] = []
    for _ in range(4):
        t0 = clock.now()
        probe = await clock.run(pool.acquire())
        waits.append(round(clock.now() - t0, 9))
        assert ep.state == "half_open"
        pool.release(probe, down(), None)
        assert ep.state == "open"
        cooldowns.append(ep.cooldown)
    assert cooldowns == [0.1, 0.2, 0.2, 0.2]
    assert waits == [0.05, 0.1, 0.2, 0.2]  # each probe waits out the cooldown before it
    assert ep.open_until == pytest.approx(clock.now() + 0.2)


async def test_late_failures_of_requests_sent_before_the_circuit_opened_do_not_stretch_it(
) -> None:
    # Ten requests in flight when the endpoint dies: all ten fail. The circuit opens at
    # the threshold; the rest are the same outage, not failed probes.
    clock = FakeClock()
    pool = pool_of("http://a", failure_threshold=2, cooldown=0.1, clock=clock)
    ep = pool.endpoints[0]
    attempts = [await pool.acquire() for _ in range(10)]
    for got in attempts:
        pool.release(got, down(), None)
    assert ep.state == "open" and ep.failed == 10
    assert ep.cooldown == 0.1
    t0 = clock.now()
    probe = await clock.run(pool.acquire())
    assert probe is ep and ep.state == "half_open"
    assert clock.now() - t0 == pytest.approx(0.1)  # not 0.1 * 2**8 s


async def test_a_retry_after_hint_lengthens_the_cooldown() -> None:
    pool = pool_of("http://a", failure_threshold=1, cooldown=0.1)
    ep = await pool.acquire()
    pool.release(ep, HTTPStatusError("slow down", status=429, retry_after=7.0), None)
    assert ep.state == "open" and ep.cooldown == 7.0


async def test_gone_endpoints_are_never_used_again() -> None:
    clock = FakeClock()
    pool = pool_of("http://a", "http://b", clock=clock)
    a, b = pool.endpoints
    ep = await pool.acquire()
    assert ep is a
    pool.release(ep, DiscoveryError("no model_chat here"), None)
    assert a.state == "gone"
    for _ in range(5):
        ep = await pool.acquire()
        assert ep is b
        pool.release(ep, None, 1.0)
    pool.release(await pool.acquire(), SpaceUnavailableError("404", state="gone"), None)
    with pytest.raises(EndpointDownError, match="every endpoint is gone"):
        await clock.run(pool.acquire())
    assert clock.sleeps == []  # no waiting for what cannot come back


async def test_all_down_raises_after_max_outage_not_after_the_cooldown() -> None:
    clock = FakeClock()
    pool = pool_of("http://a", failure_threshold=1, cooldown=30.0, max_outage=0.4, clock=clock)
    await fail(pool, 1)
    t0 = clock.now()
    with pytest.raises(EndpointDownError, match="no endpoint has worked"):
        await clock.run(pool.acquire())
    assert 0.4 < clock.now() - t0 < 0.5


async def test_a_waiting_acquire_raises_too_when_the_outage_runs_out() -> None:
    clock = FakeClock()
    pool = pool_of("http://a", "http://b", failure_threshold=1, cooldown=0.1, max_outage=0.6,
                   clock=clock)
    await fail(pool, 2)  # both open
    assert [ep.state for ep in pool.endpoints] == ["open", "open"]
    t0 = clock.now()
    probes = 0

    async def probes_keep_failing() -> None:
        nonlocal probes
        while True:
            ep = await pool.acquire()
            probes += 1
            await clock.sleep(0.01)
            pool.release(ep, down(), None)

    with pytest.raises(EndpointDownError):
        await clock.run(probes_keep_failing())
    assert 0.6 < clock.now() - t0 < 0.7
    assert probes == 4  # a and b at 0.1 s, then again after their doubled cooldown (0.31 s)


async def test_the_outage_counts_from_the_last_endpoint_that_worked() -> None:
    # a dies; b keeps working for a while, then dies too. The run may only give up
    # max_outage after b (the last one working) went out, not after a did.
    clock = FakeClock()
    pool = pool_of("http://a", "http://b", failure_threshold=1, cooldown=30.0, max_outage=0.5,
                   clock=clock)
    a, b = pool.endpoints
    b.ewma_ms = 10_000.0
    ep = await pool.acquire()
    assert ep is a
    pool.release(ep, down(), None)
    for _ in range(4):
        await clock.advance(0.1)
        ep = await pool.acquire()
        assert ep is b
        pool.release(ep, None, 10.0)
    ep = await pool.acquire()
    pool.release(ep, down(), None)  # b goes out 0.4 s after a
    t0 = clock.now()
    with pytest.raises(EndpointDownError):
        await clock.run(pool.acquire())
    assert 0.5 < clock.now() - t0 < 0.6  # a full max_outage since b failed


async def test_a_successful_probe_ends_the_outage() -> None:
    clock = FakeClock()
    pool = pool_of("http://a", failure_threshold=1, cooldown=0.05, max_outage=1.0, clock=clock)
    ep = pool.endpoints[0]
    await fail(pool, 1)
    probe = await clock.run(pool.acquire())
    pool.release(probe, None, 5.0)
    assert ep.outage_since is None and ep.state == "closed"
    await clock.advance(1.1)  # past the end the old outage would have had
    await fail(pool, 1)  # a new outage starts now
    probe = await clock.run(pool.acquire())  # a probe, not EndpointDownError
    assert probe is ep and ep.state == "half_open"


# -- an attempt, start to end ----------------------------------------------------------------------


class Answering(Stub):
    """A completer that answers, fails with ``error`` or waits for ``gate``."""

    def __init__(self, url: str, error: BaseException | None = None,
                 gate: asyncio.Event | None = None) -> None:
        super().__init__(url)
        self.error = error
        self.gate = gate

    async def complete(self, prompt: str, system: str | None = None, *,
                       trace: RequestTrace | None = None) -> Completion:
        assert trace is not None
        if self.gate is not None:
            await self.gate.wait()
        trace.duration_ms = 40.0
        if self.error is not None:
            raise self.error
        trace.queue_rank = 0
        return Completion("answer", trace)


async def test_an_attempt_releases_its_endpoint_with_the_outcome() -> None:
    pool = EndpointPool([Answering("http://a")])
    async with pool.attempt() as attempt:
        completion = await attempt.complete("p", None, RequestTrace("h"))
    ep = pool.endpoints[0]
    assert completion.text == "answer" and attempt.queue_rank == 0 and not attempt.not_reached
    assert ep.in_flight == 0 and ep.served == 1 and ep.ewma_ms == 40.0


async def test_an_attempt_that_fails_is_released_with_its_error_and_says_if_never_reached(
) -> None:
    pool = EndpointPool([Answering("http://a", error=refused())], connect_grace=30.0)
    with pytest.raises(ConnectError):
        async with pool.attempt() as attempt:
            await attempt.complete("p", None, RequestTrace("h"))
    ep = pool.endpoints[0]
    assert attempt.not_reached and ep.in_flight == 0 and ep.state == "open"
    pool = EndpointPool([Answering("http://a", error=AppError("the app failed"))])
    with pytest.raises(AppError):
        async with pool.attempt() as attempt:
            await attempt.complete("p", None, RequestTrace("h"))
    assert not attempt.not_reached and pool.endpoints[0].reached


async def test_a_cancelled_probe_gives_its_place_back_and_the_next_attempt_probes() -> None:
    clock = FakeClock()
    gate = asyncio.Event()
    pool = EndpointPool([Answering("http://a", gate=gate)], failure_threshold=1, cooldown=0.1,
                        clock=clock)
    ep = pool.endpoints[0]
    await fail(pool, 1)

    async def probe() -> None:
        async with pool.attempt() as attempt:
            await attempt.complete("p", None, RequestTrace("h"))

    first = asyncio.create_task(probe())
    await clock.advance(0.1)
    assert ep.state == "half_open" and ep.probing and ep.in_flight == 1
    waiting = asyncio.create_task(pool.acquire())  # no second probe while one is out
    await settle()
    assert not waiting.done()
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    assert ep.state == "half_open"  # no verdict on the endpoint
    got = await asyncio.wait_for(waiting, 1)  # the next attempt is the probe, at once
    assert got is ep and ep.probing and ep.in_flight == 1
    assert ep.failed == 1  # the cancelled probe was not counted as a failure


# -- endpoints never reached in this run ---------------------------------------------------------


def refused() -> ConnectError:
    return ConnectError("cannot connect: Connect call failed ('127.0.0.1', 1)")


async def test_a_never_reached_endpoint_blames_itself_not_the_row_and_is_benched_at_once() -> None:
    pool = pool_of("http://a", connect_grace=30.0)
    ep = await pool.acquire()
    assert pool.release(ep, refused(), None) is True  # the row is not at fault
    assert ep.state == "open" and not ep.reached
    assert ep.failed == 0  # nothing failed that the summary should count


@pytest.mark.parametrize("error", [
    AccessDeniedError("HTTP 407 from the proxy", status=407),
    AccessDeniedError("HTTP 401", status=401),
    TLSError("TLS failure: certificate verify failed"),
])
async def test_access_denied_or_tls_on_a_never_reached_endpoint_stops_at_once(
        error: BaseException) -> None:
    pool = pool_of("http://a", connect_grace=600.0, max_outage=600.0)
    ep = await pool.acquire()
    assert pool.release(ep, error, None) is True
    with pytest.raises(EndpointDownError) as info:
        await asyncio.wait_for(pool.acquire(), 1)
    message = str(info.value)
    assert "http://a" in message and str(error) in message
    assert "cannot reach" in message


async def test_never_reached_stops_after_the_connect_grace_not_the_max_outage() -> None:
    clock = FakeClock()
    pool = pool_of("http://a", connect_grace=0.05, max_outage=600.0, cooldown=0.01, clock=clock)
    t0 = clock.now()
    ep = await pool.acquire()
    pool.release(ep, refused(), None)

    async def probes_keep_failing() -> None:
        while True:
            ep = await pool.acquire()
            pool.release(ep, refused(), None)

    with pytest.raises(EndpointDownError) as info:
        await clock.run(probes_keep_failing())
    assert "http://a" in str(info.value) and "Connect call failed" in str(info.value)
    assert 0.05 < clock.now() - t0 < 0.1  # the grace, far from the 600 s outage


async def test_an_endpoint_that_answered_once_keeps_the_max_outage() -> None:
    clock = FakeClock()
    pool = pool_of("http://a", connect_grace=0.01, max_outage=600.0, cooldown=0.01,
                   failure_threshold=1, clock=clock)
    ep = await pool.acquire()
    pool.release(ep, None, 5.0)
    assert ep.reached
    ep = await pool.acquire()
    assert pool.release(ep, refused(), None) is False  # now an outage: the row's attempt counts
    await clock.advance(0.05)  # past the grace
    ep = await clock.run(pool.acquire())  # still handed out (a probe), no EndpointDownError
    assert ep.url == "http://a"


async def test_any_answer_even_an_error_counts_as_reached() -> None:
    pool = pool_of("http://a", connect_grace=0.01)
    ep = await pool.acquire()
    assert pool.release(ep, QueueFullError("full", status=503), None) is False
    assert ep.reached


async def test_with_one_endpoint_reached_the_other_never_stops_the_run() -> None:
    clock = FakeClock()
    pool = pool_of("http://dead", "http://live", connect_grace=0.01, cooldown=0.01, clock=clock)
    first = await pool.acquire()
    second = await pool.acquire()
    dead, live = (first, second) if first.url == "http://dead" else (second, first)
    pool.release(live, None, 5.0)
    pool.release(dead, AccessDeniedError("HTTP 403", status=403), None)
    assert dead.state == "gone"
    await clock.advance(0.05)  # past the grace
    for _ in range(3):
        ep = await clock.run(pool.acquire())
        assert ep.url == "http://live"
        pool.release(ep, None, 5.0)


async def test_the_run_stops_only_when_no_endpoint_was_ever_reached() -> None:
    pool = pool_of("http://a", "http://b", connect_grace=600.0)
    for error in (AccessDeniedError("HTTP 407", status=407), TLSError("certificate verify failed")):
        ep = await pool.acquire()
        pool.release(ep, error, None)
    with pytest.raises(EndpointDownError) as info:
        await asyncio.wait_for(pool.acquire(), 1)
    assert "http://a" in str(info.value) and "http://b" in str(info.value)


async def test_a_cause_is_warned_once_not_once_per_attempt(caplog: pytest.LogCaptureFixture) -> None:
    pool = pool_of("http://a", connect_grace=30.0)
    attempts = [await pool.acquire() for _ in range(4)]  # all sent before the first failed
    with caplog.at_level(logging.WARNING, logger="pipeline.endpoints"):
        for ep in attempts:
            assert pool.release(ep, refused(), None) is True
    warnings = [r for r in caplog.records if "cannot reach" in r.getMessage()]
    assert len(warnings) == 1
    assert "http://a" in warnings[0].getMessage()


# -- answers of requests sent before the circuit opened ------------------------------------------


async def test_a_late_success_of_a_request_sent_before_the_circuit_opened_does_not_close_it(
) -> None:
    # The Space stops taking new jobs but finishes the streams it has open: their answers
    # come after the circuit opened and say nothing of new requests. Only a probe decides.
    clock = FakeClock()
    pool = pool_of("http://a", "http://b", failure_threshold=2, cooldown=2.0, clock=clock)
    a, b = pool.endpoints
    b.ewma_ms = 10_000.0  # a is preferred while it is healthy
    old = [await pool.acquire() for _ in range(3)]
    assert all(ep is a for ep in old)
    await fail(pool, 2)
    assert a.state == "open"
    pool.release(old[0], None, 300.0, probe=False)  # an answer from before
    assert a.state == "open" and a.served == 1 and a.open_until == pytest.approx(clock.now() + 2.0)
    pool.release(old[1], AppError("the app failed"), None, probe=False)  # a row's, from before
    assert a.state == "open"
    assert await pool.acquire() is b  # traffic stays off a
    await clock.advance(2.0)
    probe = await pool.acquire()
    assert probe is a and a.state == "half_open"
    pool.release(old[2], None, 300.0, probe=False)  # another old answer, the probe still out
    assert a.state == "half_open" and a.probing
    pool.release(probe, None, 300.0, probe=True)
    assert a.state == "closed" and a.failures == 0 and a.outage_since is None


async def test_a_late_success_is_not_logged_as_the_endpoint_coming_back(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="pipeline.endpoints")
    pool = pool_of("http://a", failure_threshold=1, cooldown=5.0, clock=FakeClock())
    old = await pool.acquire()
    await fail(pool, 1)
    pool.release(old, None, 10.0)
    assert "benched" in caplog.text and "is back" not in caplog.text


# -- a retry goes elsewhere --------------------------------------------------------------------


async def test_an_attempt_avoids_the_endpoint_named_when_another_is_healthy() -> None:
    pool = pool_of("http://a", "http://b", failure_threshold=5)
    a, b = pool.endpoints
    b.ewma_ms = 10_000.0  # a scores better
    assert await pool.acquire(avoid=a) is b
    assert await pool.acquire(avoid=b) is a
    b.state = "gone"
    assert await pool.acquire(avoid=a) is a  # nothing else: the same one rather than none


async def test_a_probe_is_not_a_retry_on_the_endpoint_that_failed_it() -> None:
    clock = FakeClock()
    pool = pool_of("http://a", "http://b", failure_threshold=1, cooldown=1.0, clock=clock)
    a, b = pool.endpoints
    await fail(pool, 1)
    assert a.state == "open"
    await clock.advance(1.0)
    assert await pool.acquire(avoid=a) is b  # a fresh attempt probes a, not this retry
    probe = await pool.acquire()
    assert probe is a and a.state == "half_open"
    pool.release(probe, None, 10.0)
    alone = pool_of("http://c", failure_threshold=1, cooldown=1.0, clock=clock)
    await fail(alone, 1)
    await clock.advance(1.0)
    assert await alone.acquire(avoid=alone.endpoints[0]) is alone.endpoints[0]  # no one else


class Held:
    """A completer whose answers (or errors) the test hands out one by one."""

    def __init__(self, url: str) -> None:
        self.display_url = url
        self.pending: list[asyncio.Future[None]] = []

    async def complete(self, prompt: str, system: str | None = None, *,
                       trace: RequestTrace | None = None) -> Completion:
        assert trace is not None
        waiter = asyncio.get_running_loop().create_future()
        self.pending.append(waiter)
        await waiter
        return Completion("answer", trace)


def attempt_task(pool: EndpointPool) -> asyncio.Task[BaseException | None]:
    """One attempt through the pool, as the runner makes it; its error, or None."""

    async def run() -> BaseException | None:
        try:
            async with pool.attempt() as attempt:
                await attempt.complete("p", None, RequestTrace("h"))
        except Exception as error:
            return error
        return None
    return asyncio.create_task(run())


async def test_old_attempts_ending_while_the_probe_is_out_neither_close_nor_reopen() -> None:
    # Through attempts, the way the runner uses the pool: each knows whether it probes.
    clock = FakeClock()
    held = Held("http://a")
    pool = EndpointPool([held], failure_threshold=1, cooldown=1.0, clock=clock)
    ep = pool.endpoints[0]
    old = [attempt_task(pool) for _ in range(3)]
    await settle()
    await fail(pool, 1)
    assert ep.state == "open"
    await clock.advance(1.0)
    probe = attempt_task(pool)
    await settle()
    assert ep.state == "half_open" and ep.probing and len(held.pending) == 4
    held.pending[0].set_result(None)  # an old answer
    held.pending[1].set_exception(down())  # an old failure
    old[2].cancel()  # an old attempt cancelled
    assert await old[0] is None and isinstance(await old[1], TransportError)
    await settle()
    assert ep.state == "half_open" and ep.probing and ep.cooldown == 1.0
    held.pending[3].set_result(None)  # the probe answers
    assert await probe is None
    assert ep.state == "closed" and ep.in_flight == 0


# -- verdicts that arrive while a probe is out, and "gone" is final ------------------------------


@dataclass
class ProbeOut:
    """One endpoint whose probe is out, with an attempt sent before its circuit opened."""

    clock: FakeClock
    held: Held
    pool: EndpointPool
    ep: Endpoint
    old: asyncio.Task[BaseException | None]
    """Sent before the circuit opened, still out: its answer is ``held.pending[1]``."""
    probe: asyncio.Task[BaseException | None]
    """Its answer is ``held.pending[2]``."""


async def probe_out(first_error: Exception, **pool_kw: Any) -> ProbeOut:
    """Two attempts out on one endpoint (threshold 1, cooldown 1 s); the first fails with
    ``first_error`` and the circuit opens; the cooldown passes and the probe goes out."""
    clock = FakeClock()
    held = Held("http://a")
    pool = EndpointPool([held], failure_threshold=1, cooldown=1.0, clock=clock, **pool_kw)
    ep = pool.endpoints[0]
    first, old = attempt_task(pool), attempt_task(pool)
    await settle()
    held.pending[0].set_exception(first_error)
    await first
    assert ep.state == "open" and ep.cooldown == 1.0
    await clock.advance(1.0)
    probe = attempt_task(pool)
    await settle()
    assert ep.state == "half_open" and ep.probing and len(held.pending) == 3
    return ProbeOut(clock, held, pool, ep, old, probe)


async def test_a_gone_verdict_from_an_old_attempt_is_not_undone_by_the_probe_failing() -> None:
    # The old attempt learns the Space is gone for good (a runtime error) while the probe
    # is out; the probe then fails with a 502. The endpoint must stay gone: the run stops
    # on "every endpoint is gone" rather than probing a crashed Space until max_outage.
    s = await probe_out(HTTPStatusError("HTTP 502", status=502), max_outage=600.0)
    s.held.pending[1].set_exception(SpaceUnavailableError("crashed", state="error"))
    await s.old
    assert s.ep.state == "gone"
    s.held.pending[2].set_exception(HTTPStatusError("HTTP 502", status=502))  # the probe fails
    await s.probe
    assert s.ep.state == "gone"
    with pytest.raises(EndpointDownError, match="gone"):
        await asyncio.wait_for(s.pool.acquire(), 1)


async def test_an_old_connect_failure_of_a_never_reached_endpoint_does_not_rebench_it_under_its_probe(
) -> None:
    # As test_old_attempts_ending_while_the_probe_is_out_neither_close_nor_reopen, for an
    # endpoint not reached yet: an old attempt's connect failure arriving while the probe
    # is out neither reopens the circuit nor doubles the cooldown.
    s = await probe_out(ConnectError("refused"), connect_grace=600.0)
    s.held.pending[1].set_exception(ConnectError("refused"))
    await s.old
    assert (s.ep.state, s.ep.cooldown) == ("half_open", 1.0)
    s.probe.cancel()


async def test_a_slow_probe_of_a_never_reached_endpoint_doubles_the_cooldown_once() -> None:
    # Were the old failure to re-bench it (2 s) under the probe, the probe failing after
    # that ran out would double again: one failed probe, the cooldown four times over.
    s = await probe_out(ConnectError("refused"), connect_grace=600.0)
    s.held.pending[1].set_exception(ConnectError("refused"))
    await s.old
    await s.clock.advance(3.0)
    waiter = asyncio.create_task(s.pool.acquire())  # someone looks: open -> half_open
    await settle()
    s.held.pending[2].set_exception(ConnectError("connect timeout"))  # the probe fails
    await s.probe
    assert s.ep.cooldown == 2.0
    waiter.cancel()


async def test_a_cancelled_probe_attempt_lets_the_waiting_one_probe() -> None:
    clock = FakeClock()
    held = Held("http://a")
    pool = EndpointPool([held], failure_threshold=1, cooldown=1.0, clock=clock)
    ep = pool.endpoints[0]
    t = attempt_task(pool)
    await settle()
    held.pending[0].set_exception(HTTPStatusError("HTTP 502", status=502))
    await t
    await clock.advance(1.0)
    probe = attempt_task(pool)
    await settle()
    waiting = attempt_task(pool)  # waits: the probe is out
    await settle()
    assert len(held.pending) == 2 and ep.probing
    probe.cancel()
    await settle()
    assert len(held.pending) == 3 and ep.probing and ep.in_flight == 1
    held.pending[2].set_result(None)
    assert await waiting is None
    assert ep.state == "closed" and ep.in_flight == 0 and not ep.probing


async def test_a_never_reached_endpoint_refused_for_good_stays_gone() -> None:
    clock = FakeClock()
    held = Held("http://a")
    pool = EndpointPool([held], failure_threshold=1, cooldown=1.0, connect_grace=600.0, clock=clock)
    ep = pool.endpoints[0]
    x, y = attempt_task(pool), attempt_task(pool)
    await settle()
    held.pending[0].set_exception(AccessDeniedError("HTTP 403", status=403, retryable=False))
    await x
    assert ep.state == "gone"
    held.pending[1].set_exception(ConnectError("refused"))  # the other one out, retryable
    await y
    assert ep.state == "gone", ep.state
