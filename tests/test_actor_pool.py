"""ActorPool: the actor's shared limit slot is held for exactly one attempt, however it ends."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from fake_clock import settle

from pipeline.client import GradioQueueClient
from pipeline.endpoints import Attempt
from pipeline.engines.actor_pool import ActorPool
from pipeline.errors import AppError, QueueFullError
from pipeline.limits import AdaptiveLimit, RateLimiter
from pipeline.models import Completion, RequestTrace


class Peer:
    """Stands for an endpoint's client: answers, fails with ``error`` or waits for ``gate``."""

    display_url = "http://peer"

    def __init__(self, error: BaseException | None = None,
                 gate: asyncio.Event | None = None) -> None:
        self.error = error
        self.gate = gate

    async def complete(self, prompt: str, system: str | None = None, *,
                       trace: RequestTrace | None = None) -> Completion:
        assert trace is not None
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        trace.queue_rank = 0
        return Completion("answer", trace)


def actor_pool(peer: Peer, limit: AdaptiveLimit, gate: asyncio.Event | None = None,
               **breaker: Any) -> ActorPool:
    open_gate = gate or asyncio.Event()
    if gate is None:
        open_gate.set()
    return ActorPool([cast(GradioQueueClient, peer)], limit, RateLimiter(None), open_gate,
                     **breaker)


async def test_an_answer_gives_the_slot_back_and_may_grow_the_limit() -> None:
    limit = AdaptiveLimit(4, cooldown=0.0)
    limit.on_overload()  # 2: room to grow
    pool = actor_pool(Peer(), limit)
    async with pool.attempt() as attempt:
        assert limit.in_use == 1
        await attempt.complete("p", None, RequestTrace("h"))
    assert limit.in_use == 0 and limit._limit > 2.0
    assert pool.endpoints[0].in_flight == 0 and pool.endpoints[0].served == 1


async def test_an_error_before_the_request_was_even_sent_gives_the_slot_back() -> None:
    # The slot used to be given back by the endpoint's client when its request ended: an
    # attempt that never reached the client kept it for good.
    limit = AdaptiveLimit(1)
    pool = actor_pool(Peer(), limit)
    with pytest.raises(ValueError):
        async with pool.attempt():
            raise ValueError("the caller failed before sending")
    assert limit.in_use == 0 and pool.endpoints[0].in_flight == 0


async def test_an_overload_cuts_the_limit_and_other_errors_do_not() -> None:
    limit = AdaptiveLimit(8, cooldown=0.0)
    for error, level in ((AppError("the app failed"), 8), (QueueFullError("full", status=503), 4)):
        pool = actor_pool(Peer(error=error), limit)
        with pytest.raises(type(error)):
            async with pool.attempt() as attempt:
                await attempt.complete("p", None, RequestTrace("h"))
        assert limit.level == level and limit.in_use == 0


async def test_a_cancelled_attempt_gives_the_slot_and_the_endpoint_back() -> None:
    limit = AdaptiveLimit(1)
    never = asyncio.Event()
    pool = actor_pool(Peer(gate=never), limit)

    async def attempt_once() -> None:
        async with pool.attempt() as attempt:
            await attempt.complete("p", None, RequestTrace("h"))

    task = asyncio.create_task(attempt_once())
    await settle()
    assert limit.in_use == 1 and pool.endpoints[0].in_flight == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert limit.in_use == 0 and pool.endpoints[0].in_flight == 0
    assert pool.endpoints[0].failed == 0 and limit.cuts == 0  # a cancel is no verdict


async def test_a_closed_gate_holds_the_attempt_before_it_takes_a_slot() -> None:
    limit = AdaptiveLimit(1)
    gate = asyncio.Event()
    pool = actor_pool(Peer(), limit, gate=gate)
    entering = asyncio.create_task(pool.attempt().__aenter__())
    await settle()
    assert not entering.done() and limit.in_use == 0
    gate.set()
    attempt = await asyncio.wait_for(entering, 1)
    assert limit.in_use == 1
    await attempt.__aexit__(None, None, None)
    assert limit.in_use == 0


async def test_an_attempt_is_entered_once_and_ends_once() -> None:
    pool = actor_pool(Peer(), AdaptiveLimit(2))
    attempt: Attempt = pool.attempt()
    with pytest.raises(RuntimeError):
        await attempt.__aexit__(None, None, None)  # never began: nothing to give back
    async with attempt:
        pass
    with pytest.raises(RuntimeError):
        await attempt.__aenter__()
    with pytest.raises(RuntimeError):
        await attempt.__aexit__(None, None, None)
    assert pool.limit.in_use == 0 and pool.endpoints[0].in_flight == 0
