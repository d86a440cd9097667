"""The per-actor callable of distributed engines: a batch of encoded rows in, result rows out.

:class:`PromptBatchCallable` is what Ray Data's ``map_batches`` instantiates once per
actor, but nothing here imports Ray: tests (and the in-process executor) call it
directly. Per actor it keeps, across every batch it is given:

* one pooled ``aiohttp`` session and one :class:`~pipeline.client.GradioQueueClient`
  per endpoint, in an :class:`~pipeline.endpoints.EndpointPool` (the circuit breakers
  and failover rules of the local engine);
* one :class:`~pipeline.limits.AdaptiveLimit` (AIMD, as locally) and one
  :class:`~pipeline.limits.RateLimiter` in front of that pool (:class:`ActorPool`). Ray
  runs several batches of one actor at once (4 per task by default), each a
  :func:`~pipeline.runner.run_batch` with its own window: this shared limit is what
  bounds the requests in flight of the actor to ``concurrency``;
* one :class:`~pipeline.runner.BatchState` and stop switch, so an endpoint that is down
  (or ``max_consecutive_failures`` rows failing in a row) stops the actor's later batches
  too.

A call never raises for a row: each job becomes a ``kind="ok"`` row holding exactly
:func:`~pipeline.records.success_record` or a ``kind="error"`` row holding exactly
:func:`~pipeline.records.failure_record` (as JSON text, see :mod:`.codec`). A batch
whose endpoints went down adds one ``kind="down"`` row (the driver stops the run, exit
4); every batch ends with one ``kind="stats"`` row (the actor's counters, for the
summary). Rows left undone (deadline, down) produce no row: the next run does them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pyarrow as pa

from pipeline.client import GradioQueueClient, Timeouts
from pipeline.endpoints import Completer, Endpoint, EndpointPool
from pipeline.errors import EndpointDownError, RequestError
from pipeline.limits import AdaptiveLimit, RateLimiter
from pipeline.models import Completion, Failure, PromptRow, RequestTrace
from pipeline.retry import RetryPolicy
from pipeline.runner import DEFAULT_MODEL, BatchSettings, BatchState, _overload, run_batch

from .codec import Kind, decode_row, dumps, encode_result

log = logging.getLogger(__name__)

ROW_COLUMN = "row"
"""The one column of an input batch: a :class:`~pipeline.models.PromptRow` as JSON text."""

RESULT_SCHEMA = pa.schema([
    pa.field("kind", pa.string(), nullable=False),
    pa.field("id", pa.string()),
    pa.field("sample", pa.int64()),
    pa.field("record", pa.string(), nullable=False),
])
"""The result rows of a call: ``kind`` (ok/error/down/stats), the job's key, the record."""


@dataclass(frozen=True)
class ActorConfig:
    """Everything an actor needs; plain data, pickled to each actor once.

    ``concurrency`` and ``rate`` are *per actor*. ``deadline_at`` is a wall-clock
    time (``time.time()``): no request starts after it, those in flight get ``grace``
    seconds. The token and proxy are kept out of the repr (Ray may print it).
    """

    urls: tuple[str, ...]
    concurrency: int = 4
    adaptive: bool = True
    rate: float | None = None
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_response_chars: int | None = None
    max_attempts: int = 4
    retry_base_delay: float = 1.0
    retry_max_delay: float = 60.0
    samples: int = 1
    model: str = DEFAULT_MODEL
    max_consecutive_failures: int = 20
    min_chars: int = 1
    deadline_at: float | None = None
    grace: float = 60.0
    max_outage: float = 600.0
    failure_threshold: int = 5
    probe_cooldown: float = 2.0
    proxy: str | None = field(default=None, repr=False)
    hf_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if not self.urls:
            raise ValueError("at least one endpoint URL is needed")
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")


class ActorPool(EndpointPool):
    """The actor's endpoint pool, behind the actor's shared limit and rate.

    An attempt first takes a slot of ``limit`` (and waits for the rate), then an
    endpoint, as :func:`~pipeline.runner.run_batch` does with its own limit: the
    endpoint is chosen when the request can start, by the health known then. The
    slot is given back by the endpoint's :class:`BoundedCompleter` when its request
    ends (run_batch always calls it right after ``acquire``), which also adapts the
    limit: cut on overload, grown on answers that did not queue.
    """

    def __init__(self, clients: Sequence[GradioQueueClient], limit: AdaptiveLimit,
                 rate: RateLimiter, **breaker: Any) -> None:
        completers: Sequence[Completer] = [BoundedCompleter(c, limit) for c in clients]
        super().__init__(completers, [c.display_url for c in clients], **breaker)
        self.limit = limit
        self.rate = rate

    async def acquire(self) -> Endpoint:
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


class _Out:
    """Result rows being collected for one batch."""

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.ids: list[str | None] = []
        self.samples: list[int | None] = []
        self.records: list[str] = []

    def add(self, kind: Kind, record: str, row_id: str | None = None,
            sample: int | None = None) -> None:
        self.kinds.append(kind)
        self.ids.append(row_id)
        self.samples.append(sample)
        self.records.append(record)

    def table(self) -> pa.Table:
        return pa.Table.from_arrays(
            [pa.array(self.kinds, pa.string()), pa.array(self.ids, pa.string()),
             pa.array(self.samples, pa.int64()), pa.array(self.records, pa.string())],
            schema=RESULT_SCHEMA)


class PromptBatchCallable:
    """Ray Data callable class: ``await callable(table)`` answers every row of ``table``.

    ``table`` has a ``row`` column of encoded rows (:func:`.codec.encode_row`);
    the result has :data:`RESULT_SCHEMA`. The session, clients and limits are
    made on the first call, on the loop that runs the calls (Ray's per-actor loop).
    """

    def __init__(self, config: ActorConfig) -> None:
        self.config = config
        self.actor_id = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.state = BatchState()
        self.limit = AdaptiveLimit(config.concurrency, adaptive=config.adaptive)
        self._rate = RateLimiter(config.rate)
        self._setup = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._clients: list[GradioQueueClient] = []
        self._pool: EndpointPool | None = None
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _ready(self) -> EndpointPool:
        async with self._setup:
            if self._pool is None:
                cfg = self.config
                self._loop = asyncio.get_running_loop()
                self._stop = asyncio.Event()
                self._session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                # Each actor lists the endpoints from another start, so that their first
                # requests (equal scores) do not all go to the first URL.
                shift = uuid.uuid4().int % len(cfg.urls)
                urls = cfg.urls[shift:] + cfg.urls[:shift]
                self._clients = [
                    GradioQueueClient(url, session=self._session, proxy=cfg.proxy,
                                      hf_token=cfg.hf_token, timeouts=cfg.timeouts,
                                      max_answer_chars=cfg.max_response_chars)
                    for url in urls]
                self._pool = ActorPool(
                    self._clients, self.limit, self._rate,
                    failure_threshold=cfg.failure_threshold, cooldown=cfg.probe_cooldown,
                    max_outage=cfg.max_outage)
            return self._pool

    def settings(self, deadline: float | None) -> BatchSettings:
        """The run_batch settings of one batch; the limit and rate live in the actor's pool."""
        cfg = self.config
        return BatchSettings(
            concurrency=cfg.concurrency,
            policy=RetryPolicy(max_attempts=cfg.max_attempts, base_delay=cfg.retry_base_delay,
                               max_delay=cfg.retry_max_delay),
            samples=cfg.samples, rate=None, model=cfg.model,
            max_consecutive_failures=cfg.max_consecutive_failures, adaptive=False,
            min_chars=cfg.min_chars, deadline=deadline, grace=cfg.grace,
            failure_threshold=cfg.failure_threshold, probe_cooldown=cfg.probe_cooldown,
            max_outage=cfg.max_outage)

    async def __call__(self, batch: pa.Table) -> pa.Table:
        out = _Out()
        rows = [decode_row(text) for text in batch.column(ROW_COLUMN).to_pylist()]
        answered: set[tuple[str, int]] = set()
        try:
            await self._answer(rows, out, answered)
        except EndpointDownError as exc:
            out.add("down", dumps({"reason": str(exc), "actor": self.actor_id}))
        except Exception as exc:  # a bug: fail the batch's unanswered jobs, never the run
            log.exception("actor %s: unexpected error in a batch", self.actor_id)
            for row in rows:
                for sample in row.samples or range(self.config.samples):
                    if (row.id, sample) not in answered:
                        failure = Failure(row.id, row.position, "internal",
                                          f"{type(exc).__name__}: {exc}", 0, row=row,
                                          sample=sample)
                        out.add(*encode_result(failure), row.id, sample)
        out.add("stats", dumps(self.stats()))
        return out.table()

    async def _answer(self, rows: list[PromptRow], out: _Out,
                      answered: set[tuple[str, int]]) -> None:
        pool = await self._ready()
        assert self._stop is not None
        deadline = None
        if self.config.deadline_at is not None:
            deadline = self.config.deadline_at - time.time()
            if deadline <= 0:
                return  # past the deadline: start nothing; the rows are left for the next run
        results = run_batch(rows, pool, self.settings(deadline), stop=self._stop,
                            state=self.state)
        async for result in results:
            sample = result.sample
            row_id = result.row.id if result.row is not None else result.id
            answered.add((row_id or "", sample))
            out.add(*encode_result(result), row_id, sample)

    def stats(self) -> dict[str, Any]:
        """The actor's counters so far (cumulative): for the driver's summary."""
        limit = self.limit
        return {
            "actor": self.actor_id,
            "ceiling": limit.ceiling, "level": limit.level, "lowest": limit.lowest,
            "cuts": limit.cuts, "adaptive": limit.adaptive,
            "retries": self.state.retries,
            "endpoints": self._pool.report() if self._pool is not None else [],
        }

    def __del__(self) -> None:
        """Close the session on its own loop when Ray drops the actor's callable gracefully."""
        loop = self._loop
        if self._session is None or loop is None or loop.is_closed() or not loop.is_running():
            return
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            return  # cannot wait on our own loop; the process is ending anyway
        with contextlib.suppress(Exception):  # best effort at exit
            asyncio.run_coroutine_threadsafe(self.aclose(), loop).result(timeout=5)

    async def aclose(self) -> None:
        """Close the clients and the session (Ray ends actors without calling this)."""
        for client in self._clients:
            await client.close()
        if self._session is not None:
            await self._session.close()
        self._session, self._clients, self._pool = None, [], None
