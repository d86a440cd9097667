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
from pipeline.endpoints import Completer, Endpoint, EndpointPool
from pipeline.errors import RequestError
from pipeline.limits import AdaptiveLimit, RateLimiter
from pipeline.models import Completion, RequestTrace
from pipeline.runner import _overload


class ActorPool(EndpointPool):
    """The actor's endpoint pool, behind the actor's gate, shared limit and rate.

    An attempt first waits for ``gate`` to be open (see
    :meth:`.actor.PromptBatchCallable.pause_requests`), takes a slot of ``limit`` (and waits
    for the rate), then an endpoint, as :func:`~pipeline.runner.run_batch` does with
    its own limit: the endpoint is chosen when the request can start, by the health
    known then. The slot is given back by the endpoint's :class:`BoundedCompleter`
    when its request ends (run_batch always calls it right after ``acquire``), which
    also adapts the limit: cut on overload, grown on answers that did not queue.
    """

    def __init__(self, clients: Sequence[GradioQueueClient], limit: AdaptiveLimit,
                 rate: RateLimiter, gate: asyncio.Event, **breaker: Any) -> None:
        completers: Sequence[Completer] = [BoundedCompleter(c, limit) for c in clients]
        super().__init__(completers, [c.display_url for c in clients], **breaker)
        self.limit = limit
        self.rate = rate
        self.gate = gate

    async def acquire(self) -> Endpoint:
        await self.gate.wait()
        await self.limit.acquire()
        try:
            await self.rate.wait()
            return await super().acquire()
        except BaseException:
            self.limit.release()
            raise


class BoundedCompleter:
    """An endpoint's client that gives back the actor's limit slot when its request ends."""

    def __init__(self, inner: GradioQueueClient, limit: AdaptiveLimit) -> None:
        self.inner = inner
        self.display_url = inner.display_url
        self.limit = limit

    async def complete(
        self, prompt: str, system: str | None = None, *, trace: RequestTrace | None = None
    ) -> Completion:
        try:
            completion = await self.inner.complete(prompt, system, trace=trace)
        except RequestError as error:
            if _overload(error):
                self.limit.on_overload()
            raise
        finally:
            self.limit.release()
        self.limit.on_success(completion.trace.queue_rank)
        return completion
