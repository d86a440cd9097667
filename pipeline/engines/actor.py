"""The per-actor callable of distributed engines: a batch of encoded rows in, result rows out.

:class:`PromptBatchCallable` is what every Ray actor runs (behind
:class:`~.stream.StreamingCallable`), but nothing here imports Ray: tests (and the
in-process executor) call it directly. Per actor it keeps, across every batch it is
given:

* one pooled ``aiohttp`` session and one :class:`~pipeline.client.GradioQueueClient`
  per endpoint, in an :class:`~pipeline.endpoints.EndpointPool` (the circuit breakers
  and failover rules of the local engine);
* one :class:`~pipeline.limits.AdaptiveLimit` (AIMD, as locally) and one
  :class:`~pipeline.limits.RateLimiter` in front of that pool
  (:class:`~.actor_pool.ActorPool`). Several calls may run at once on one actor (Ray
  gives it one block at a time, but a caller may run more), each a
  :func:`~pipeline.runner.run_batch` with its own window: this shared limit is what
  bounds the requests in flight of the actor to ``concurrency``;
* one :class:`~pipeline.runner.BatchState` and stop switch, so an endpoint that is down
  (or ``max_consecutive_failures`` rows failing in a row) stops the actor's later batches
  too.

A call is an async generator: it yields result tables *while* the batch runs, so
that a crash loses only what is in flight. A table goes out once ``flush_rows``
results are waiting, or ``flush_interval`` seconds after the last one went out if
anything is waiting. A call never raises for a row: each job becomes a
``kind="ok"`` row holding exactly :func:`~pipeline.records.success_record` or a
``kind="error"`` row holding exactly :func:`~pipeline.records.failure_record` (as
JSON text, see :mod:`.codec`). The last table of a call ends with one
``kind="stats"`` row (the actor's counters, for the summary), after one
``kind="down"`` row if its endpoints went down (the driver stops the run, exit 4).
Rows left undone (deadline, down) produce no row: the next run does them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import pyarrow as pa

from pipeline.client import GradioQueueClient
from pipeline.endpoints import EndpointPool
from pipeline.errors import EndpointDownError
from pipeline.limits import AdaptiveLimit, RateLimiter
from pipeline.models import Failure, PromptRow
from pipeline.runner import BatchState, run_batch
from pipeline.sessions import open_session
from pipeline.settings import BatchSettings, ClientSettings

from .actor_pool import ActorPool
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

    ``client`` and ``batch`` are the run's own settings, except that the batch's
    ``concurrency`` and ``rate`` are *per actor* (see
    :func:`~pipeline.engines.distributed.actor_config`) and its relative ``deadline`` is
    unused: ``deadline_at`` is a wall-clock time (``time.time()``), after which no request
    starts; those in flight get ``batch.grace`` seconds. ``driver_pid`` makes the actors
    on the driver's machine (``driver_host``, see :func:`.stream.host_identity`; any
    machine when None) stop the moment the driver ends (:mod:`.stream`). ``announce``: a
    streaming actor yields an empty table first, to tell the driver it runs. The token
    and proxy stay out of the repr (Ray may print it):
    :class:`~pipeline.settings.ClientSettings` hides them.
    """

    client: ClientSettings
    batch: BatchSettings = field(default_factory=BatchSettings)
    deadline_at: float | None = None
    flush_rows: int | None = None
    """internal: a call yields a table once this many results wait (see rows_per_flush)."""
    flush_interval: float = 0.5
    """internal: ... or this many seconds after the last table, if anything waits."""
    driver_pid: int | None = None
    """internal: the driver's process id; the actors on its machine stop the moment it
    ends (:mod:`.stream`)."""
    driver_host: str | None = None
    """internal: the driver's machine (see :func:`.stream.host_identity`); None: any."""
    announce: bool = False
    """internal: a streaming actor yields an empty table first, to say it runs."""

    def __post_init__(self) -> None:
        if self.flush_rows is not None and self.flush_rows < 1:
            raise ValueError("flush_rows must be at least 1")
        if self.flush_interval <= 0:
            raise ValueError("flush_interval must be positive")

    @property
    def rows_per_flush(self) -> int:
        """``flush_rows``, by default half the requests in flight (at least 1).

        A crash loses what is in flight plus what waits for the next table; half the
        window keeps that under 1.5 windows, while a table (one Ray block, a few
        milliseconds of bookkeeping) still carries several rows at high concurrency.
        """
        return self.flush_rows or max(1, self.batch.concurrency // 2)


_Row = tuple[Kind, str, str | None, int | None]
"""A result row: kind, record, the job's id and sample."""


class _Out:
    """Result rows being collected for one batch, until they go out in a table."""

    def __init__(self) -> None:
        self.kinds: list[str] = []
        self.ids: list[str | None] = []
        self.samples: list[int | None] = []
        self.records: list[str] = []
        self.added = asyncio.Event()

    def __len__(self) -> int:
        return len(self.kinds)

    def add(self, kind: Kind, record: str, row_id: str | None = None,
            sample: int | None = None) -> None:
        self.kinds.append(kind)
        self.ids.append(row_id)
        self.samples.append(sample)
        self.records.append(record)
        self.added.set()

    def take(self) -> pa.Table:
        """The rows collected so far as one table; the collection starts empty again."""
        table = pa.Table.from_arrays(
            [pa.array(self.kinds, pa.string()), pa.array(self.ids, pa.string()),
             pa.array(self.samples, pa.int64()), pa.array(self.records, pa.string())],
            schema=RESULT_SCHEMA)
        self.kinds, self.ids, self.samples, self.records = [], [], [], []
        return table


class PromptBatchCallable:
    """The per-actor callable: ``async for table in callable(batch)`` answers ``batch``.

    ``batch`` has a ``row`` column of encoded rows (:func:`.codec.encode_row`); the
    tables yielded have :data:`RESULT_SCHEMA`. Several calls may run at once on one
    loop: they share the actor's session, pool and limit, made on the first call, on
    the loop that runs the calls (see :mod:`.stream` for the one Ray actors run).
    """

    def __init__(self, config: ActorConfig) -> None:
        self.config = config
        self.actor_id = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self.state = BatchState()
        self.limit = AdaptiveLimit(config.batch.concurrency, adaptive=config.batch.adaptive)
        self._rate = RateLimiter(config.batch.rate)
        self._gate = asyncio.Event()
        self._gate.set()
        self._setup = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None
        self._clients: list[GradioQueueClient] = []
        self._pool: EndpointPool | None = None
        self._stop = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def _ready(self) -> EndpointPool:
        async with self._setup:
            if self._pool is None:
                reach, batch = self.config.client, self.config.batch
                self._loop = asyncio.get_running_loop()
                self._session = open_session(reach.ca_bundle)
                # Each actor lists the endpoints from another start, so that their first
                # requests (equal scores) do not all go to the first URL.
                shift = uuid.uuid4().int % len(reach.urls)
                urls = reach.urls[shift:] + reach.urls[:shift]
                self._clients = [
                    GradioQueueClient(url, session=self._session, proxy=reach.proxy,
                                      hf_token=reach.hf_token, timeouts=reach.timeouts,
                                      max_answer_chars=reach.max_response_chars)
                    for url in urls]
                self._pool = ActorPool(
                    self._clients, self.limit, self._rate, self._gate,
                    failure_threshold=batch.failure_threshold, cooldown=batch.probe_cooldown,
                    max_outage=batch.max_outage, connect_grace=batch.connect_grace)
            return self._pool

    def settings(self, deadline: float | None) -> BatchSettings:
        """The run_batch settings of one batch; the limit and rate live in the actor's pool."""
        return replace(self.config.batch, rate=None, adaptive=False, deadline=deadline)

    async def __call__(self, batch: pa.Table) -> AsyncGenerator[pa.Table, None]:
        """Yield the results of ``batch`` in tables as they come (see the module docstring)."""
        rows = [decode_row(text) for text in batch.column(ROW_COLUMN).to_pylist()]
        out = _Out()
        work = asyncio.ensure_future(self._run(rows, out))
        every, interval = self.config.rows_per_flush, self.config.flush_interval
        last = time.monotonic()
        try:
            while not work.done():
                # Requests go on while a table waits to be taken: ``out`` keeps filling.
                wait = None if not out else max(0.0, last + interval - time.monotonic())
                added = asyncio.ensure_future(out.added.wait())
                try:
                    await asyncio.wait({work, added}, timeout=wait,
                                       return_when=asyncio.FIRST_COMPLETED)
                finally:
                    added.cancel()
                out.added.clear()
                if len(out) >= every or (out and time.monotonic() - last >= interval):
                    yield out.take()
                    last = time.monotonic()
            for row in work.result():  # the down row, or a bug's failures: in the last table
                out.add(*row)
            out.add("stats", dumps(self.stats()))
            yield out.take()
        finally:
            if not work.done():  # the caller stopped early: cancel the requests in flight
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work

    async def _run(self, rows: list[PromptRow], out: _Out) -> list[_Row]:
        """Answer ``rows`` into ``out``; the rows to end with. Never raises (but cancelled)."""
        answered: set[tuple[str, int]] = set()
        try:
            await self._answer(rows, out, answered)
        except EndpointDownError as exc:
            return [("down", dumps({"reason": str(exc), "actor": self.actor_id}), None, None)]
        except Exception as exc:  # a bug: fail the batch's unanswered jobs, never the run
            log.exception("actor %s: unexpected error in a batch", self.actor_id)
            failed: list[_Row] = []
            for row in rows:
                for sample in row.samples or range(self.config.batch.samples):
                    if (row.id, sample) not in answered:
                        failure = Failure(row.id, row.position, "internal",
                                          f"{type(exc).__name__}: {exc}", 0, row=row,
                                          sample=sample)
                        failed.append((*encode_result(failure), row.id, sample))
            return failed
        return []

    async def _answer(self, rows: list[PromptRow], out: _Out,
                      answered: set[tuple[str, int]]) -> None:
        pool = await self._ready()
        deadline = None
        if self.config.deadline_at is not None:
            deadline = self.config.deadline_at - time.time()
            if deadline <= 0:
                return  # past the deadline: start nothing; the rows are left for the next run
        results = run_batch(rows, pool, self.settings(deadline), stop=self._stop,
                            state=self.state)
        try:
            async for result in results:
                sample = result.sample
                row_id = result.row.id if result.row is not None else result.id
                answered.add((row_id or "", sample))
                out.add(*encode_result(result), row_id, sample)
        finally:
            if isinstance(results, AsyncGenerator):  # cancelled: end its requests now, not at GC
                await results.aclose()

    def pause_requests(self) -> None:
        """Start no request until :meth:`resume_requests` (those in flight go on).

        For the caller's consumer: Ray holds an actor's yield while the driver has not
        taken its results, and forever once the driver is dead (the actor lives on for
        a second or two), so that no work starts that nobody would receive. Call on the
        loop that runs the calls.
        """
        self._gate.clear()

    def resume_requests(self) -> None:
        """Start requests again (see :meth:`pause_requests`)."""
        self._gate.set()

    def stop(self) -> None:
        """Stop for good: cancel the requests in flight, start no more (its driver is gone).

        The calls running end with their stats row, later calls at once. Call on the
        loop that runs the calls.
        """
        self._stop.set()

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
