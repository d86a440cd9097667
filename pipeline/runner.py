"""The batch core: rows in, results out, with bounded concurrency, retries and a stop switch.

:func:`run_batch` is a plain async generator over any (sync or async) iterable of
rows. It knows nothing of files, Click or progress bars, so the CLI, benchmarks
and distributed engines drive the same code.

Inside, a run is a worker pool (:class:`_Batch`): ``concurrency`` workers take jobs
(a row and a sample) from a short queue and run each to its result, one attempt at
a time; the generator fills the queue from the input, so that at most ``2 *
concurrency`` jobs are held, and hands the results out as they end.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Callable,
    Iterable,
    Sequence,
)

from .clock import LOOP_CLOCK, Clock
from .endpoints import Attempt, Completer, Endpoint, EndpointPool
from .errors import (
    EndpointDownError,
    IncompleteResponseError,
    InternalError,
    RequestError,
    ResponseTooLargeError,
)
from .limits import AdaptiveLimit, RateLimiter
from .models import Completion, Failure, PromptRow, RequestTrace, Result, Success
from .settings import DEFAULT_MODEL, BatchSettings  # re-exported: BatchSettings lived here

__all__ = ["DEFAULT_MODEL", "BatchSettings", "BatchState", "Completer", "run_batch"]

log = logging.getLogger(__name__)


def _session_hashes() -> Callable[[], str]:
    from .client import new_session_hash  # the transport owns the hash format

    return new_session_hash


class BatchState:
    """Live counters of a run, for progress bars, summaries and the endpoint-down check."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.succeeded = 0
        self.failed = 0
        self.retries = 0
        self.attempts = 0
        """Attempts started: with the results and retries, what shows a run is moving."""
        self.consecutive_failures = 0
        self.unfinished = 0
        self.deadline_hit = False
        self.down_reason: str | None = None
        self.limit: AdaptiveLimit | None = None
        self.pool: EndpointPool | None = None

    @property
    def concurrency(self) -> int | None:
        """The current adaptive concurrency level."""
        return self.limit.level if self.limit is not None else None


async def _aiter(rows: Iterable[PromptRow | Failure] | AsyncIterable[PromptRow | Failure]
                 ) -> AsyncGenerator[PromptRow | Failure, None]:
    if isinstance(rows, AsyncIterable):
        async for row in rows:
            yield row
    else:
        for row in rows:
            yield row


class _Job:
    """One sample of one row, and what its attempts so far left."""

    __slots__ = ("attempts", "failed_on", "row", "sample", "trace")

    def __init__(self, row: PromptRow, sample: int) -> None:
        self.row = row
        self.sample = sample
        self.attempts = 0
        self.trace: RequestTrace | None = None
        self.failed_on: Endpoint | None = None
        """The endpoint of the last failed attempt: the retry goes elsewhere if it can."""


class _Jobs:
    """The jobs waiting for a worker, FIFO; an idle worker waits on a future of its own.

    Leaner than :class:`asyncio.Queue` (no bound, no join counting): the generator
    bounds what it puts in.
    """

    def __init__(self) -> None:
        self._items: deque[_Job] = deque()
        self._idle: deque[asyncio.Future[_Job | None]] = deque()
        self._closed = False

    def __len__(self) -> int:
        return len(self._items)

    def put(self, job: _Job) -> None:
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(job)  # straight to an idle worker
                return
        self._items.append(job)

    def close(self) -> None:
        """No more jobs: idle workers, and the others once the queue is empty, get None."""
        self._closed = True
        while self._idle:
            waiter = self._idle.popleft()
            if not waiter.done():
                waiter.set_result(None)

    async def get(self) -> _Job | None:
        if self._items:
            return self._items.popleft()
        if self._closed:
            return None
        waiter: asyncio.Future[_Job | None] = asyncio.get_running_loop().create_future()
        self._idle.append(waiter)
        try:
            return await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled() and (job := waiter.result()) is not None:
                self._items.appendleft(job)  # handed over, never taken: it stays queued
            raise


class _NotReached(Exception):
    """An attempt failed on an endpoint never reached in this run (see :mod:`.endpoints`)."""


class _Batch:
    """One run of :func:`run_batch`: its workers, their jobs and the results they leave.

    A worker takes a job (:meth:`work`), attempts it (:meth:`attempt`) until it has a
    result (:meth:`run`): an error is classified (:meth:`on_error`) into a retry, an
    attempt not counted, a failure or a job left undone. The generator notes each
    result (:meth:`note`) as it hands it out. ``open`` counts the jobs taken in and
    not yet ended, so that whatever is left at the end is counted as unfinished.
    """

    def __init__(self, settings: BatchSettings, pool: EndpointPool, state: BatchState,
                 stop: asyncio.Event, clock: Clock) -> None:
        self.settings = settings
        self.pool = pool
        self.state = state
        self.stop = stop
        self.clock = clock
        self.limit = AdaptiveLimit(settings.concurrency, adaptive=settings.adaptive, clock=clock)
        self.rate = RateLimiter(settings.rate, clock) if settings.rate is not None else None
        self.rng = random.Random(settings.seed)
        self.session_hash = _session_hashes()
        self.jobs = _Jobs()
        self.done: deque[Result] = deque()
        self.open = 0
        self.draining = False  # the deadline passed: start nothing new
        self._wake: asyncio.Future[None] | None = None
        self.crash: BaseException | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._workers: list[asyncio.Task[None]] = []
        state.limit, state.pool = self.limit, pool

    # -- the run's tasks: the workers and two watchers ----------------------------------------

    def start(self) -> None:
        self._workers = [asyncio.create_task(self.work(), name=f"run_batch:worker-{i}")
                         for i in range(self.settings.concurrency)]
        for task in self._workers:
            task.add_done_callback(self._worker_ended)
        self._tasks = [*self._workers, asyncio.create_task(self.watch_stop(), name="run_batch:stop")]
        if self.settings.deadline is not None:
            self._tasks.append(asyncio.create_task(self.watch_deadline(), name="run_batch:deadline"))

    def _worker_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and (error := task.exception()) is not None:
            self.crash = error  # a bug in the runner itself: the generator raises it
            self.notify()

    async def watch_stop(self) -> None:
        await self.stop.wait()
        self.notify()

    async def watch_deadline(self) -> None:
        assert self.settings.deadline is not None
        await self.clock.sleep(self.settings.deadline)
        self.state.deadline_hit = True
        self.draining = True
        log.warning("deadline reached: no new requests; %d in flight get %.0f s to finish",
                    self.state.in_flight, self.settings.grace)
        self.notify()
        await self.clock.sleep(self.settings.grace)
        self.stop.set()

    async def halt(self) -> None:
        """Cancel the workers mid-job and count the jobs they and the queue leave undone."""
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self.state.unfinished += self.open
        self.open = 0

    async def close(self) -> None:
        """End every task of the run (nothing may outlive the generator); count what is left."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.state.unfinished += self.open + len(self.done)
        self.open = 0
        self.done.clear()

    # -- the generator's side -----------------------------------------------------------------

    def accepting(self) -> bool:
        """Whether new jobs may be taken in (room aside)."""
        return not self.draining and not self.stop.is_set()

    def held(self) -> int:
        """Jobs taken in whose result has not been handed out."""
        return self.open + len(self.done)

    def add(self, row: PromptRow) -> None:
        for sample in row.samples or range(self.settings.samples):
            self.open += 1
            self.jobs.put(_Job(row, sample))

    def finished(self, exhausted: bool) -> bool:
        """Nothing more will end: every job taken in has (and no more come, or may start)."""
        return self.open == 0 and not self.done and (exhausted or not self.accepting())

    async def wait(self) -> None:
        """Until a job ends, the deadline passes or ``stop`` is set."""
        if self.done or self.stop.is_set() or self.crash is not None:
            return
        self._wake = asyncio.get_running_loop().create_future()
        try:
            await self._wake
        finally:
            self._wake = None

    def notify(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def note(self, result: Result) -> None:
        """Count a result; too many request failures in a row stop the run."""
        state = self.state
        if isinstance(result, Success):
            state.succeeded += 1
            state.consecutive_failures = 0
        elif result.row is not None:  # a request failure, not bad input
            state.failed += 1
            if result.error_type != ResponseTooLargeError.error_type:
                state.consecutive_failures += 1
            if state.consecutive_failures >= self.settings.max_consecutive_failures:
                state.down_reason = (
                    f"{state.consecutive_failures} rows failed in a row; last: {result.error}"
                )
                self.stop.set()

    # -- a worker's side ----------------------------------------------------------------------

    async def work(self) -> None:
        """Take jobs until there are no more; leave each one's result (if any) for the generator."""
        while (job := await self.jobs.get()) is not None:
            result = await self.run(job)
            self.open -= 1
            if result is not None:
                self.done.append(result)
            self.notify()

    async def run(self, job: _Job) -> Result | None:
        """Attempt ``job`` until it succeeds or fails for good (None: left for the next run)."""
        while True:
            job.attempts += 1
            try:
                completion = await self.attempt(job)
            except Exception as error:  # CancelledError is not one: a stop goes through
                delay = self.on_error(job, error)
                if isinstance(delay, float):
                    await self.clock.sleep(delay)
                    continue
                return delay
            if completion is None:
                return None
            return Success(job.row, completion.text, completion.trace, job.attempts,
                           self.settings.model, job.sample)

    async def attempt(self, job: _Job) -> Completion | None:
        """One attempt of ``job`` within the limit and the rate (None: start nothing, leave it)."""
        async with self.limit:
            if self.draining or self.stop.is_set():
                self.state.unfinished += 1
                return None
            if self.rate is not None:
                await self.rate.wait()
            job.trace = trace = RequestTrace(self.session_hash())  # a new session every attempt
            attempt: Attempt | None = None
            try:
                async with self.pool.attempt(job.failed_on) as attempt:
                    completion = await self.send(attempt, job.row, trace)
            except Exception as error:
                if attempt is not None:
                    job.failed_on = attempt.endpoint
                if attempt is not None and attempt.not_reached:
                    raise _NotReached(error) from error
                raise
        self.limit.adapt(None, completion.trace.queue_rank)
        return completion

    async def send(self, attempt: Attempt, row: PromptRow, trace: RequestTrace) -> Completion:
        state = self.state
        state.attempts += 1
        state.in_flight += 1
        try:
            completion = await attempt.complete(row.prompt, row.system, trace)
        finally:
            state.in_flight -= 1
        length = len(completion.text.strip())
        if length < self.settings.min_chars:
            raise IncompleteResponseError(
                f"answer of {length} characters, under the minimum of {self.settings.min_chars}")
        return completion

    def on_error(self, job: _Job, error: Exception) -> float | Result | None:
        """What follows an attempt's error: seconds to wait before the next attempt, the
        job's failure, or None (the job is left undone: the run is stopping)."""
        if isinstance(error, EndpointDownError):
            self.state.down_reason = str(error)
            self.stop.set()
            self.state.unfinished += 1
            return None
        if isinstance(error, _NotReached):
            # The endpoint has never answered: not this row's fault, so not one of its
            # attempts. The pool paces the next try (the endpoint is benched meanwhile).
            job.attempts -= 1
            return 0.0
        row = job.row
        if not isinstance(error, RequestError):  # a bug must not sink the other rows
            log.error("row %s: unexpected error", row.id, exc_info=error)
            return Failure(row.id, row.position, InternalError.error_type,
                           f"{type(error).__name__}: {error}",
                           job.attempts, row=row, trace=job.trace, sample=job.sample)
        self.limit.adapt(error)
        if self.settings.policy.should_retry(error, job.attempts) and not self.stop.is_set():
            delay = self.settings.policy.delay(error, job.attempts, self.rng)
            self.state.retries += 1
            log.info("row %s attempt %d failed (%s: %s); retrying in %.1f s",
                     row.id, job.attempts, error.error_type, error, delay)
            return float(delay)
        return Failure(row.id, row.position, error.error_type, str(error), job.attempts,
                       row=row, trace=job.trace, sample=job.sample, retryable=error.retryable)


async def run_batch(
    rows: Iterable[PromptRow | Failure] | AsyncIterable[PromptRow | Failure],
    completer: Completer | Sequence[Completer] | EndpointPool,
    settings: BatchSettings | None = None,
    *,
    stop: asyncio.Event | None = None,
    state: BatchState | None = None,
    clock: Clock | None = None,
) -> AsyncIterator[Result]:
    """Answer every row (``samples`` times each) and yield one result per job as it ends.

    Failures in the input (already a :class:`Failure`) pass straight through. A
    row never raises: its request errors become a :class:`Failure` after the
    retry policy gives up. At most ``2 * concurrency`` jobs exist at once and at
    most ``concurrency`` requests are in flight, so memory does not grow with the
    input. Setting ``stop`` ends the run early: no new requests start, those in
    flight are cancelled (their rows are not yielded), and the generator returns.
    When the endpoint keeps failing, the run stops the same way and
    :class:`EndpointDownError` is raised after the last result. Several
    completers (endpoints) share the work by health and speed. Rows left undone
    (deadline, stop, the generator closed early) are counted in ``state.unfinished``.
    ``clock`` times the deadline, retry delays and the rate (the event loop's by default).
    """
    settings = settings or BatchSettings()
    state = state or BatchState()
    stop = stop or asyncio.Event()
    clock = clock or LOOP_CLOCK
    if isinstance(completer, EndpointPool):
        pool = completer
    else:
        completers = list(completer) if isinstance(completer, Sequence) else [completer]
        pool = EndpointPool(completers, failure_threshold=settings.failure_threshold,
                            cooldown=settings.probe_cooldown, max_outage=settings.max_outage,
                            connect_grace=settings.connect_grace, clock=clock)
    batch = _Batch(settings, pool, state, stop, clock)
    window = 2 * settings.concurrency
    source = _aiter(rows)
    exhausted = False
    batch.start()
    try:
        while True:
            while not exhausted and batch.accepting() and batch.held() < window:
                try:
                    item = await source.__anext__()
                except StopAsyncIteration:
                    exhausted = True
                    batch.jobs.close()
                    break
                if isinstance(item, Failure):
                    yield item
                else:
                    batch.add(item)
            if stop.is_set():
                # Stop: cancel what is in flight, but keep whatever finished meanwhile.
                await batch.halt()
                while batch.done:
                    result = batch.done.popleft()
                    batch.note(result)
                    yield result
                break
            if batch.done:
                result = batch.done.popleft()
                batch.note(result)
                yield result
                continue
            if batch.crash is not None:
                raise batch.crash
            if batch.finished(exhausted):
                break
            await batch.wait()
    finally:
        try:
            await batch.close()  # closed early by the consumer: leave nothing running behind
        finally:
            await source.aclose()  # close the input now (e.g. a reader's file), not at GC
    if state.down_reason:
        raise EndpointDownError(state.down_reason)
