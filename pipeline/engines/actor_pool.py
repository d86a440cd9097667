"""The endpoint pool of one actor, behind the actor's gate, shared limit and rate.

Every batch an actor runs is a :func:`~pipeline.runner.run_batch` with its own window;
they all draw on this one pool, so that the actor never has more than its
``concurrency`` requests in flight, whatever number of batches run at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from pipeline.client import GradioQueueClient
from pipeline.endpoints import Attempt, Endpoint, EndpointPool
from pipeline.limits import AdaptiveLimit, RateLimiter


class ActorPool(EndpointPool):
    """The actor's endpoint pool, behind the actor's gate, shared limit and rate.

    An attempt (:class:`~pipeline.endpoints.Attempt`, the only way
    :func:`~pipeline.runner.run_batch` takes an endpoint) first waits for ``gate`` to be
    open (see :meth:`.actor.PromptBatchCallable.pause_requests`), takes a slot of
    ``limit`` (and waits for the rate), then an endpoint, as run_batch does with its own limit: the
    endpoint is chosen when the request can start, by the health known then. The slot is
    held for the attempt's length and given back however it ends, after the limit has
    followed the outcome (cut on overload, grown on answers that did not queue).
    """

    def __init__(self, clients: Sequence[GradioQueueClient], limit: AdaptiveLimit,
                 rate: RateLimiter, gate: asyncio.Event, **breaker: Any) -> None:
        super().__init__(clients, [c.display_url for c in clients], **breaker)
        self.limit = limit
        self.rate = rate
        self.gate = gate

    async def _begin_attempt(self, avoid: Endpoint | None = None) -> Endpoint:
        await self.gate.wait()
        await self.limit.acquire()
        try:
            await self.rate.wait()
            return await super()._begin_attempt(avoid)
        except BaseException:
            self.limit.release()
            raise

    def _end_attempt(self, attempt: Attempt, error: BaseException | None) -> None:
        try:
            super()._end_attempt(attempt, error)
        finally:
            if error is None:
                self.limit.adapt(None, attempt.queue_rank)
            elif not isinstance(error, asyncio.CancelledError):
                self.limit.adapt(error)
            self.limit.release()
