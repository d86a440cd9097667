"""AdaptiveLimit (AIMD semaphore) and RateLimiter, driven directly on the event loop."""

from __future__ import annotations

import asyncio

import pytest
from fake_clock import FakeClock, settle

from pipeline.errors import (
    AppError,
    HTTPStatusError,
    IdleTimeoutError,
    QueueFullError,
    ServerError,
    TransportError,
)
from pipeline.limits import AdaptiveLimit, RateLimiter, is_overload


async def holders(limit: AdaptiveLimit, n: int) -> tuple[list[asyncio.Task[None]], asyncio.Event]:
    """``n`` tasks that take a slot each and keep it until the returned event is set."""
    release = asyncio.Event()

    async def hold() -> None:
        async with limit:
            await release.wait()

    tasks = [asyncio.create_task(hold()) for _ in range(n)]
    await settle()
    return tasks, release


# -- the semaphore ---------------------------------------------------------------------------


def test_ceiling_must_be_positive() -> None:
    with pytest.raises(ValueError):
        AdaptiveLimit(0)


async def test_acquire_blocks_at_the_level_and_release_lets_the_next_in() -> None:
    limit = AdaptiveLimit(3)
    for _ in range(3):
        await asyncio.wait_for(limit.acquire(), 1)
    assert limit.in_use == 3
    fourth = asyncio.create_task(limit.acquire())
    await settle()
    assert not fourth.done(), "a 4th acquire got past a limit of 3"
    limit.release()
    await asyncio.wait_for(fourth, 1)
    assert limit.in_use == 3


async def test_in_use_never_exceeds_the_level_under_contention() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(4, clock=clock)
    peak = 0
    running = 0

    async def worker(i: int) -> None:
        nonlocal peak, running
        async with limit:
            running += 1
            peak = max(peak, running)
            await clock.sleep(0.001 * (i % 3))
            running -= 1

    await clock.run(asyncio.gather(*(worker(i) for i in range(60))))
    assert peak == 4
    assert limit.in_use == 0


async def test_a_cut_holds_new_acquires_until_in_flight_work_drains_below_it() -> None:
    limit = AdaptiveLimit(4, cooldown=0.0)
    tasks, release = await holders(limit, 4)
    limit.on_overload()  # 4 -> 2 while 4 are in flight
    assert limit.level == 2
    extra = asyncio.create_task(limit.acquire())
    await settle()
    limit.release()  # 3 in use, level 2: still no room
    await settle()
    assert not extra.done()
    limit.release()
    limit.release()  # 1 in use: room for one
    await asyncio.wait_for(extra, 1)
    assert limit.in_use == 2
    release.set()
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_growth_lets_a_waiter_in_without_a_release() -> None:
    limit = AdaptiveLimit(4, cooldown=0.0)
    limit.on_overload()
    assert limit.level == 2
    await limit.acquire()
    await limit.acquire()
    waiter = asyncio.create_task(limit.acquire())
    await settle()
    assert not waiter.done()
    limit.on_success(0)  # 2.5
    limit.on_success(0)  # 2.9
    await settle()
    assert not waiter.done()
    limit.on_success(0)  # 3.24: level 3
    await asyncio.wait_for(waiter, 1)
    assert limit.level == 3 and limit.in_use == 3


async def test_a_woken_waiter_cancelled_before_it_runs_passes_the_slot_on() -> None:
    limit = AdaptiveLimit(1)
    await limit.acquire()
    first = asyncio.create_task(limit.acquire())
    second = asyncio.create_task(limit.acquire())
    await settle()
    limit.release()  # wakes `first`...
    first.cancel()  # ...which is cancelled before it can take the slot
    with pytest.raises(asyncio.CancelledError):
        await first
    await asyncio.wait_for(second, 1)  # the wake-up was not lost
    assert limit.in_use == 1


async def test_a_cancelled_waiter_leaves_no_trace() -> None:
    limit = AdaptiveLimit(1)
    await limit.acquire()
    waiter = asyncio.create_task(limit.acquire())
    await settle()
    waiter.cancel()
    await asyncio.gather(waiter, return_exceptions=True)
    limit.release()
    assert limit.in_use == 0
    await asyncio.wait_for(limit.acquire(), 1)
    assert limit.in_use == 1


# -- AIMD ------------------------------------------------------------------------------------


async def test_growth_only_when_the_job_did_not_queue() -> None:
    limit = AdaptiveLimit(10, cooldown=0.0)
    limit.on_overload()
    assert limit.level == 5
    for _ in range(50):
        limit.on_success(3)  # the Space made us wait: no growth
        limit.on_success(1)
    assert limit.level == 5 and limit.history == [(limit.history[0][0], 5)]
    limit.on_success(0)
    limit.on_success(None)  # no estimation seen: it did not queue
    assert limit._limit == pytest.approx(5 + 1 / 5 + 1 / 5.2)
    for _ in range(5):
        limit.on_success(0)
    assert limit.level == 6  # about +1 per window of `level` successes
    assert limit.history[-1][1] == 6


async def test_max_queue_rank_widens_what_counts_as_not_queued() -> None:
    limit = AdaptiveLimit(10, cooldown=0.0, max_queue_rank=2)
    limit.on_overload()
    before = limit._limit
    limit.on_success(2)
    assert limit._limit > before
    grown = limit._limit
    limit.on_success(3)
    assert limit._limit == grown


async def test_growth_stops_at_the_ceiling() -> None:
    limit = AdaptiveLimit(3, cooldown=0.0)
    limit.on_overload()
    for _ in range(200):
        limit.on_success(0)
    assert limit.level == 3 and limit._limit == 3.0
    assert [level for _, level in limit.history] == [1, 2, 3]


async def test_one_cut_per_cooldown() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(16, cooldown=10.0, clock=clock)
    for _ in range(10):
        limit.on_overload()  # one burst of failures
    assert limit.level == 8 and limit.cuts == 1
    await clock.advance(9.99)
    limit.on_overload()
    assert limit.level == 8 and limit.cuts == 1  # still inside the cooldown
    assert limit.lowest == 8 and [level for _, level in limit.history] == [8]


async def test_a_new_cut_after_the_cooldown() -> None:
    clock = FakeClock()
    limit = AdaptiveLimit(16, cooldown=0.25, clock=clock)  # seconds exact in binary
    await clock.advance(1.0)  # history counts from the first use, not from the clock's zero
    limit.on_overload()
    limit.on_overload()
    assert limit.level == 8 and limit.cuts == 1
    await clock.advance(0.125)
    limit.on_overload()
    assert limit.cuts == 1  # half the cooldown
    await clock.advance(0.125)
    limit.on_overload()
    assert limit.level == 4 and limit.cuts == 2 and limit.lowest == 4
    assert limit.history == [(0.0, 8), (0.25, 4)]


async def test_adapt_cuts_on_overload_only_and_grows_on_answers_that_did_not_queue() -> None:
    limit = AdaptiveLimit(8, cooldown=0.0)
    for error in (AppError("the app failed"), HTTPStatusError("bad request", status=400),
                  TransportError("refused"), ValueError("a bug")):
        limit.adapt(error)
    assert limit.level == 8 and limit.cuts == 0
    limit.adapt(QueueFullError("full", status=503))
    assert limit.level == 4 and limit.cuts == 1
    limit.adapt(None, queue_rank=5)  # answered, but after queueing
    assert limit.level == 4
    for _ in range(5):
        limit.adapt(None, queue_rank=0)
    assert limit.level == 5  # about +1 per window of `level` answers


@pytest.mark.parametrize(("error", "overload"), [
    (QueueFullError("full", status=503), True),
    (HTTPStatusError("slow down", status=429), True),
    (HTTPStatusError("bad gateway", status=502), True),
    (HTTPStatusError("gateway timeout", status=504), True),
    (IdleTimeoutError("idle"), True),
    (ServerError("stopped"), True),
    (HTTPStatusError("bad request", status=400), False),
    (TransportError("refused"), False),
    (AppError("app failed"), False),
    (ValueError("a bug"), False),
])
def test_is_overload(error: BaseException, overload: bool) -> None:
    assert is_overload(error) is overload


async def test_the_floor_is_one() -> None:
    limit = AdaptiveLimit(8, cooldown=0.0)
    for _ in range(20):
        limit.on_overload()
    assert limit.level == 1 and limit.lowest == 1
    assert limit.cuts == 20
    assert [level for _, level in limit.history] == [4, 2, 1]  # only changes are recorded
    await asyncio.wait_for(limit.acquire(), 1)  # level 1 still lets one through
    blocked = asyncio.create_task(limit.acquire())
    await settle()
    assert not blocked.done()
    limit.release()
    await asyncio.wait_for(blocked, 1)


async def test_fixed_concurrency_never_changes_level() -> None:
    limit = AdaptiveLimit(6, adaptive=False, cooldown=0.0)
    for _ in range(10):
        limit.on_overload()
        limit.on_success(0)
    assert limit.level == 6 and limit.cuts == 0 and limit.lowest == 6
    assert limit.history == []


# -- RateLimiter -----------------------------------------------------------------------------


async def test_rate_limiter_spaces_starts() -> None:
    clock = FakeClock()
    rate = RateLimiter(20.0, clock)  # one start per 50 ms
    starts = []

    async def start() -> None:
        await rate.wait()
        starts.append(clock.now())

    t0 = clock.now()
    await clock.run(asyncio.gather(*(start() for _ in range(6))))
    # the first at once, then one per interval
    assert [round(s - t0, 9) for s in starts] == [0.0, 0.05, 0.1, 0.15, 0.2, 0.25]


async def test_rate_limiter_does_not_bank_idle_time() -> None:
    clock = FakeClock()
    rate = RateLimiter(20.0, clock)
    await rate.wait()
    await clock.advance(0.2)  # idle: must not earn a burst of back-to-back starts
    t0 = clock.now()

    async def three() -> None:
        await rate.wait()
        await rate.wait()
        await rate.wait()

    await clock.run(three())
    assert clock.now() - t0 == pytest.approx(0.1)  # at once, then 50 ms, then 50 ms


async def test_no_rate_means_no_wait() -> None:
    clock = FakeClock()
    rate = RateLimiter(None, clock)
    for _ in range(1000):
        await rate.wait()
    assert clock.sleeps == []
