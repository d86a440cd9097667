"""The driver side of a distributed engine: spool the planned rows, stream the results back.

The driver plans rows exactly as the local engine does (``plan_rows``: templates,
messages, duplicates, resume by ``(id, sample)``, ``--limit``); bad input comes out at
once as input failures. The rows to do are written to a *spool*: Parquet files of at
most ``rows_per_file`` encoded rows (:func:`.codec.encode_row`), and about
:data:`~pipeline.batching.MERGE_BATCH_BYTES` of them, in ``<output>.spool/``,
so the input is never held in memory, cut into the executor's blocks (one spool row per
block, see :mod:`.stream`). An :class:`Executor` (Ray Data, or the in-process one used
by tests) runs :class:`.actor.PromptBatchCallable` over the blocks and hands back each
result table as soon as an actor yields it; the driver turns them back into
``Success`` and ``Failure`` objects (:mod:`.codec`) for the caller, which writes each
one at once through the same writers as the local engine. Resume is therefore ours, by
id, whatever engine wrote the earlier part of the output.

What a crash or Ctrl-C loses: the requests in flight, and per actor the results
waiting for its next table (fewer than ``flush_rows``, or under ``flush_interval``
seconds' worth) or on their way to the driver. ``--deadline``: actors start no
request after it and give those in flight ``--grace`` seconds; the driver stops
waiting some seconds after that, and counts the jobs not done as ``remaining``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.batching import MERGE_BATCH_BYTES
from pipeline.endpoints import EndpointPool
from pipeline.errors import (
    ConfigError,
    EndpointDownError,
    EngineUnavailableError,
    OutputError,
    QwenBatchError,
)
from pipeline.jobs import KeySet
from pipeline.limits import AdaptiveLimit
from pipeline.models import Completion, Failure, PromptRow, RequestTrace, Result
from pipeline.runner import BatchSettings, BatchState

from .actor import ActorConfig
from .base import EngineOptions, Rows, spool_path
from .codec import decode_result, encode_row
from .stream import block_packets

T = TypeVar("T")

log = logging.getLogger(__name__)

SPOOL_ROWS_PER_FILE = 10_000
DEADLINE_SLACK = 10.0
"""Seconds the driver waits past ``deadline + grace`` for the last blocks to come back."""
WAIT_NOTE_EVERY = 5.0
"""While the engine starts, say what it waits for this often (seconds)."""
READER_JOIN_SECONDS = 15.0
"""How long the end of a run waits for the results thread to leave the executor's iterator."""


class EngineError(QwenBatchError):
    """The distributed engine itself failed (not a row): the run stops, exit 1."""


class Spool:
    """Planned rows written as Parquet files of blocks of encoded rows, a bounded number per file.

    Each Parquet row is one block of at most ``block_rows`` rows
    (:func:`.stream.block_packets`): the unit an actor is given. A file is written once
    it holds ``rows_per_file`` rows, or ``max_bytes`` of them at the end of a block.
    """

    def __init__(self, directory: str, samples: int, block_rows: int,
                 rows_per_file: int = SPOOL_ROWS_PER_FILE,
                 max_bytes: int = MERGE_BATCH_BYTES) -> None:
        self.directory = directory
        self.samples = samples
        self.block_rows = block_rows
        # Whole blocks per file: only the last block of the spool is a short one.
        self.rows_per_file = max(1, rows_per_file // block_rows) * block_rows
        self.max_bytes = max_bytes
        self.paths: list[str] = []
        self.rows = 0
        self.jobs = 0
        self._buffer: list[str] = []
        self._buffer_bytes = 0
        shutil.rmtree(directory, ignore_errors=True)  # a crashed run's spool: planned anew
        try:
            os.makedirs(directory)
        except OSError as exc:
            raise OutputError(f"cannot make the spool {directory}: {exc.strerror or exc}") from exc

    def add(self, row: PromptRow) -> None:
        encoded = encode_row(row)
        self._buffer.append(encoded)
        self._buffer_bytes += len(encoded)
        self.rows += 1
        self.jobs += len(row.samples) if row.samples is not None else self.samples
        if len(self._buffer) >= self.rows_per_file or (
                self._buffer_bytes >= self.max_bytes and len(self._buffer) % self.block_rows == 0):
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            path = os.path.join(self.directory, f"part-{len(self.paths):05d}.parquet")
            try:
                pq.write_table(block_packets(self._buffer, self.block_rows), path)
            except (OSError, pa.ArrowException) as exc:
                raise OutputError(f"cannot write the spool {path}: {exc}") from exc
            self.paths.append(path)
            self._buffer, self._buffer_bytes = [], 0

    def remove(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


def spool_directory(output: str) -> str:
    """``<output>.spool`` beside the output (guarded by its lock); a temp dir for stdout."""
    if output == "-":
        return os.path.join(tempfile.mkdtemp(prefix="qwen-batch-"), "spool")
    return spool_path(output)


class Executor(Protocol):
    """Runs the per-actor callable over a spool and yields result tables as they come."""

    block_rows: int
    """Rows an actor is given at once (a block: one spool row)."""

    def describe(self) -> str:
        """One line for the user: where it runs and the global bound of requests in flight."""

    def start(self) -> None:
        """Get ready (start or join a cluster); blocking, run in a thread."""

    def batches(self, spool: Spool, config: ActorConfig) -> Iterator[pa.Table]:
        """Result tables (:data:`.actor.RESULT_SCHEMA`); blocking, iterated in a thread."""

    def stop(self) -> None:
        """Make the iterator of :meth:`batches` end soon; from another thread."""

    def close(self) -> None:
        """Stop everything still running, once the iterator is left; safe to call twice."""


class _NoCompleter:
    async def complete(self, prompt: str, system: str | None = None, *,
                       trace: RequestTrace | None = None) -> Completion:
        raise RuntimeError("a report-only endpoint")


class ActorsLimit(AdaptiveLimit):
    """The summary's view of the actors' limits: their levels added up."""

    def __init__(self, actors: int, per_actor: int, adaptive: bool) -> None:
        super().__init__(actors * per_actor, adaptive=adaptive)
        self.expected = actors
        self.per_actor = per_actor
        self.actors: dict[str, dict[str, Any]] = {}

    def _total(self, key: str) -> int:
        # Actors not heard from yet count at their full level. A restarted actor is a new
        # one: only the latest ``expected`` reports count.
        latest = list(self.actors.values())[-self.expected:]
        return (sum(int(a[key]) for a in latest)
                + max(0, self.expected - len(latest)) * self.per_actor)

    @property
    def level(self) -> int:
        return self._total("level")

    def update(self, stats: dict[str, Any]) -> None:
        self.actors.pop(str(stats["actor"]), None)
        self.actors[str(stats["actor"])] = stats
        self.cuts = sum(int(a["cuts"]) for a in self.actors.values())
        self.lowest = min(self.lowest, self._total("lowest"))


def _pool_view(urls: tuple[str, ...]) -> EndpointPool:
    return EndpointPool([_NoCompleter() for _ in urls], list(urls))


def _update_pool(pool: EndpointPool, actors: dict[str, dict[str, Any]]) -> None:
    """Per endpoint: requests served and failed by every actor, the healthiest state seen."""
    rank = {"closed": 0, "half_open": 1, "open": 2, "gone": 3}
    for ep in pool.endpoints:
        reports = [r for a in actors.values() for r in a.get("endpoints", ()) if r["url"] == ep.url]
        if not reports:
            continue
        ep.served = sum(int(r["served"]) for r in reports)
        ep.failed = sum(int(r["failed"]) for r in reports)
        ep.state = min((r["state"] for r in reports), key=lambda s: rank.get(s, 9))
        weighted = [(r["avg_ms"], r["served"]) for r in reports if r["avg_ms"] is not None]
        total = sum(n for _, n in weighted)
        ep.ewma_ms = sum(ms * n for ms, n in weighted) / total if total else None


@dataclass
class _End:
    error: BaseException | None = None


def _pump(batches: Iterator[pa.Table], queue: asyncio.Queue[pa.Table | _End],
          loop: asyncio.AbstractEventLoop, cancelled: threading.Event) -> None:
    """Thread body: move result tables from the blocking iterator onto the loop's queue."""

    def put(item: pa.Table | _End) -> bool:
        try:
            future = asyncio.run_coroutine_threadsafe(queue.put(item), loop)
        except RuntimeError:  # the loop is closed: nobody is listening any more
            return False
        while True:
            try:
                future.result(timeout=0.2)
                return True
            except TimeoutError:
                if cancelled.is_set():
                    future.cancel()
                    return False
            except Exception:  # cancelled with the loop
                return False

    end = _End()
    try:
        for table in batches:
            if cancelled.is_set() or not put(table):
                return
    except BaseException as exc:  # the executor failed: tell the driver
        end = _End(exc)
    finally:
        with contextlib.suppress(Exception):
            close = getattr(batches, "close", None)
            if close is not None:
                close()
    if not cancelled.is_set():
        put(end)


@contextlib.asynccontextmanager
async def open_distributed(
    executor: Executor, config: ActorConfig, rows: Rows, *, output: str, samples: int,
    stop: asyncio.Event, state: BatchState, actors: int, adaptive: bool,
    announce: bool = True, start_timeout: float | None = None,
) -> AsyncIterator[AsyncIterator[Result]]:
    """Yields the results of ``rows`` run on ``executor``; cleans the executor and spool up.

    ``start_timeout``: seconds the executor may take to start and hand back its first
    table (its actors announce themselves, see :class:`.stream.StreamingCallable`);
    meanwhile what it waits for is printed every few seconds, after it the run stops
    (EngineUnavailableError, exit 4). None: no bound (actors that do not announce).
    """
    spool = Spool(spool_directory(output), samples, executor.block_rows)
    cancelled = threading.Event()
    starter_done = threading.Event()  # the thread that started the engine may end
    threads: list[threading.Thread] = []
    started = False

    async def results() -> AsyncGenerator[Result, None]:
        nonlocal started
        limit = ActorsLimit(actors, config.batch.concurrency, adaptive)
        pool = _pool_view(config.client.urls)
        state.limit, state.pool = limit, pool
        # 1. Plan: bad input now, the rows to do into the spool (the file is read here, as
        #    on the local engine, so positions, duplicates and resume are the same).
        for count, planned in enumerate(rows, 1):
            if isinstance(planned, Failure):
                yield planned
            else:
                spool.add(planned)
            if count % 1000 == 0:
                await asyncio.sleep(0)  # let a Ctrl-C in
            if stop.is_set():
                return
        spool.flush()
        state.unfinished = spool.jobs
        if not spool.jobs:
            return  # nothing to do: no cluster started at all
        # 2. Run: start (or join) the cluster, then stream the result tables back.
        if announce:
            print(f"qwen-batch: {executor.describe()}; {spool.rows} rows "
                  f"({spool.jobs} jobs) to do", file=sys.stderr, flush=True)
        started = True
        run_config = config
        try:
            await _unless_stopped(
                _in_daemon_thread(executor.start, "qwen-batch-engine-start", starter_done), stop)
        except (EngineUnavailableError, ConfigError):
            raise
        except Exception as exc:
            raise EngineError(f"cannot start the engine: {type(exc).__name__}: {exc}") from exc
        if stop.is_set():
            return
        fitted = int(getattr(executor, "actors", actors))
        if fitted != actors:  # fewer actors than asked for fit the cluster
            limit = ActorsLimit(fitted, config.batch.concurrency, adaptive)
            state.limit = limit
            if config.batch.rate:
                run_config = replace(config, batch=replace(
                    config.batch, rate=config.batch.rate * actors / fitted))
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[pa.Table | _End] = asyncio.Queue(maxsize=2)
        thread = threading.Thread(target=_pump, name="qwen-batch-results", daemon=True,
                                  args=(executor.batches(spool, run_config), queue, loop,
                                        cancelled))
        threads.append(thread)
        thread.start()
        seen = KeySet()
        finished = 0
        down: str | None = None
        end_by = (config.deadline_at + config.batch.grace + DEADLINE_SLACK
                  if config.deadline_at is not None else None)
        waiting_since = time.monotonic() if start_timeout is not None else None
        stopper = asyncio.ensure_future(stop.wait())
        try:
            while down is None:
                getter = asyncio.ensure_future(queue.get())
                timeout = None if end_by is None else max(0.0, end_by - time.time())
                if waiting_since is not None:
                    note = min(WAIT_NOTE_EVERY,
                               waiting_since + (start_timeout or 0.0) - time.monotonic())
                    timeout = max(0.0, note if timeout is None else min(timeout, note))
                waiters: set[asyncio.Future[Any]] = {getter, stopper}
                ready, _ = await asyncio.wait(waiters, timeout=timeout,
                                              return_when=asyncio.FIRST_COMPLETED)
                if getter not in ready:
                    getter.cancel()
                    past_deadline = end_by is not None and time.time() >= end_by
                    if stopper in ready or past_deadline or waiting_since is None:
                        break  # interrupted, or past the deadline and its grace
                    await _still_starting(executor, waiting_since, start_timeout)
                    continue
                waiting_since = None  # an actor runs: the engine has started
                item = getter.result()
                if isinstance(item, _End):
                    if item.error is not None:
                        raise EngineError(f"the engine failed: {type(item.error).__name__}: "
                                          f"{item.error}") from item.error
                    break
                for kind, record in zip(item.column("kind").to_pylist(),
                                        item.column("record").to_pylist(), strict=True):
                    if kind == "stats":
                        limit.update(json.loads(record))
                        state.retries = sum(int(a["retries"]) for a in limit.actors.values())
                        _update_pool(pool, limit.actors)
                        continue
                    if kind == "down":
                        down = down or str(json.loads(record).get("reason"))
                        continue
                    result = decode_result(kind, record)
                    if result.row is None:  # only request results come from actors
                        continue
                    key = (result.row.id, result.sample)
                    if key in seen:
                        log.info("dropping a repeated result for %s (a retried block)", key)
                        continue
                    seen.add(*key)
                    finished += 1
                    state.unfinished = spool.jobs - finished
                    yield result
        finally:
            stopper.cancel()
            state.unfinished = spool.jobs - finished
            if (config.deadline_at is not None and time.time() >= config.deadline_at
                    and state.unfinished > 0):
                state.deadline_hit = True
        if down is not None:
            state.down_reason = down
            raise EndpointDownError(down)

    try:
        yield results()
    finally:
        # In this order: the results thread must be out of the executor's iterator before
        # Ray goes (ray.shutdown under a reader inside Ray Data fails the run, exit 1).
        cancelled.set()
        if started:
            await asyncio.to_thread(executor.stop)
        for thread in threads:
            await asyncio.to_thread(thread.join, READER_JOIN_SECONDS)
            if thread.is_alive():
                log.warning("the results thread did not leave the engine in %g s",
                            READER_JOIN_SECONDS)
        if started:
            await asyncio.to_thread(executor.close)
        starter_done.set()
        spool.remove()
        if output == "-":
            shutil.rmtree(os.path.dirname(spool.directory), ignore_errors=True)


def _in_daemon_thread(fn: Callable[[], T], name: str,
                      keep: threading.Event) -> asyncio.Future[T]:
    """``fn()`` in a daemon thread, as a future of this loop: the run may leave it behind
    (``asyncio.to_thread`` may not: the loop's end waits for its threads).

    The thread then lives on until ``keep`` is set: a private Ray's GCS and raylet are
    forked by it with a parent-death signal, which Linux sends when the forking *thread*
    ends (measured: the GCS died when this thread returned)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(value: Any, error: BaseException | None) -> None:
        if not future.done():
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(value)

    def body() -> None:
        value: Any = None
        error: BaseException | None = None
        try:
            value = fn()
        except BaseException as exc:
            error = exc
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits
            loop.call_soon_threadsafe(settle, value, error)
        keep.wait()

    threading.Thread(target=body, name=name, daemon=True).start()
    return future


async def _unless_stopped(future: asyncio.Future[T], stop: asyncio.Event) -> T | None:
    """The future's result, or None as soon as ``stop`` is set (the future is left to run)."""
    stopper = asyncio.ensure_future(stop.wait())
    waiters: set[asyncio.Future[Any]] = {future, stopper}
    try:
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopper.cancel()
    if not future.done():
        future.add_done_callback(lambda f: f.cancelled() or f.exception())  # no "never retrieved"
        return None
    return future.result()


async def _still_starting(executor: Executor, since: float, timeout: float | None) -> None:
    """Say what the starting engine waits for; EngineUnavailableError past ``timeout``."""
    awaiting = getattr(executor, "awaiting", None)
    what = await asyncio.to_thread(awaiting) if awaiting is not None else "its workers"
    waited = time.monotonic() - since
    if timeout is not None and waited >= timeout:
        raise EngineUnavailableError(
            f"the engine did not start in {timeout:g} s (--engine-start-timeout): still "
            f"waiting for {what}")
    print(f"qwen-batch: waiting {waited:.0f} s (of {timeout:g}) for the engine to start: "
          f"{what}", file=sys.stderr, flush=True)


def actor_config(options: EngineOptions, settings: BatchSettings, per_actor: int) -> ActorConfig:
    """What every actor gets: the run's settings, with the rate shared out among the actors."""
    actors = max(1, options.engine.actors)
    batch = replace(settings, concurrency=per_actor,
                    rate=settings.rate / actors if settings.rate else None, deadline=None)
    deadline_at = time.time() + settings.deadline if settings.deadline is not None else None
    return ActorConfig(client=options.client, batch=batch, deadline_at=deadline_at)


@contextlib.asynccontextmanager
async def open_executor(
    executor: Executor, options: EngineOptions, rows: Rows, settings: BatchSettings,
    stop: asyncio.Event, state: BatchState, start_timeout: float | None = None,
) -> AsyncIterator[AsyncIterator[Result]]:
    """:func:`open_distributed` with everything taken from the run's options and settings."""
    per_actor = options.engine.per_actor(settings.concurrency)
    async with open_distributed(executor, actor_config(options, settings, per_actor), rows,
                                output=options.output, samples=settings.samples, stop=stop,
                                state=state, actors=options.engine.actors,
                                adaptive=settings.adaptive,
                                start_timeout=start_timeout) as results:
        yield results
