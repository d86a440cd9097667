"""The batch core: rows in, results out, with bounded concurrency, retries and a stop switch.

:func:`run_batch` is a plain async generator over any (sync or async) iterable of
rows. It knows nothing of files, Click or progress bars, so the CLI, benchmarks
and distributed engines drive the same code.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Sequence
from typing import Any

from .endpoints import Completer, Endpoint, EndpointPool
from .errors import (
    EndpointDownError,
    HTTPStatusError,
    IncompleteResponseError,
    InternalError,
    QueueFullError,
    RequestError,
    ResponseTooLargeError,
    ServerError,
    TimeoutError_,
)
from .limits import AdaptiveLimit, RateLimiter
from .models import Completion, Failure, PromptRow, RequestTrace, Result, Success
from .settings import DEFAULT_MODEL, BatchSettings  # re-exported: BatchSettings lived here

__all__ = ["DEFAULT_MODEL", "BatchSettings", "BatchState", "Completer", "run_batch"]

log = logging.getLogger(__name__)


def _fresh_trace() -> RequestTrace:
    from .client import new_session_hash  # the transport owns the hash format

    return RequestTrace(new_session_hash())


def _overload(error: BaseException) -> bool:
    """Errors that mean "too much in flight": the adaptive limit is cut on these."""
    if isinstance(error, (QueueFullError, TimeoutError_, ServerError)):
        return True
    return isinstance(error, HTTPStatusError) and error.status in (429, 502, 503, 504)


class _NotReached(Exception):
    """An attempt failed on an endpoint never reached in this run (see :mod:`.endpoints`)."""


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


async def run_batch(
    rows: Iterable[PromptRow | Failure] | AsyncIterable[PromptRow | Failure],
    completer: Completer | Sequence[Completer] | EndpointPool,
    settings: BatchSettings | None = None,
    *,
    stop: asyncio.Event | None = None,
    state: BatchState | None = None,
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
    (deadline, stop) are counted in ``state.unfinished``.
    """
    settings = settings or BatchSettings()
    state = state or BatchState()
    stop = stop or asyncio.Event()
    drain = asyncio.Event()  # the deadline passed: start nothing new
    loop = asyncio.get_running_loop()
    if isinstance(completer, EndpointPool):
        pool = completer
    else:
        completers = list(completer) if isinstance(completer, Sequence) else [completer]
        pool = EndpointPool(completers, failure_threshold=settings.failure_threshold,
                            cooldown=settings.probe_cooldown, max_outage=settings.max_outage,
                            connect_grace=settings.connect_grace)
    limit = AdaptiveLimit(settings.concurrency, adaptive=settings.adaptive)
    state.limit, state.pool = limit, pool
    rate = RateLimiter(settings.rate)
    rng = random.Random(settings.seed)
    window = 2 * settings.concurrency
    queued: deque[tuple[PromptRow, int]] = deque()
    pending: set[asyncio.Task[Result | None]] = set()
    # Tasks put themselves here when they end (None: `stop` was set). Waiting on this
    # queue costs the same at any window; asyncio.wait over `pending` costs O(window).
    ended: asyncio.Queue[asyncio.Task[Result | None] | None] = asyncio.Queue()
    source = _aiter(rows)
    exhausted = False

    async def attempt_once(row: PromptRow, trace: RequestTrace) -> Completion:
        endpoint: Endpoint = await pool.acquire()
        state.attempts += 1
        state.in_flight += 1
        try:
            try:
                completion = await endpoint.completer.complete(row.prompt, row.system, trace=trace)
            finally:
                state.in_flight -= 1
            if len(completion.text.strip()) < settings.min_chars:
                raise IncompleteResponseError(
                    f"answer of {len(completion.text.strip())} characters, "
                    f"under the minimum of {settings.min_chars}")
        except asyncio.CancelledError:
            endpoint.in_flight -= 1
            endpoint.probing = False
            raise
        except BaseException as exc:
            if pool.release(endpoint, exc, trace.duration_ms):
                raise _NotReached(exc) from exc
            raise
        pool.release(endpoint, None, trace.duration_ms)
        return completion

    async def job(row: PromptRow, sample: int) -> Result | None:
        attempt = 0
        trace: RequestTrace | None = None
        while True:
            attempt += 1
            try:
                async with limit:
                    if drain.is_set() or stop.is_set():
                        state.unfinished += 1
                        return None  # left for the next run
                    await rate.wait()
                    trace = _fresh_trace()  # a new session hash for every attempt
                    completion = await attempt_once(row, trace)
                limit.on_success(completion.trace.queue_rank)
            except EndpointDownError as error:
                state.down_reason = str(error)
                stop.set()
                state.unfinished += 1
                return None
            except _NotReached:
                # The endpoint has never answered: not this row's fault, so not one of its
                # attempts. The pool paces the next try (the endpoint is benched meanwhile).
                attempt -= 1
                continue
            except RequestError as error:
                if _overload(error):
                    limit.on_overload()
                if settings.policy.should_retry(error, attempt) and not stop.is_set():
                    delay = settings.policy.delay(error, attempt, rng)
                    state.retries += 1
                    log.info("row %s attempt %d failed (%s: %s); retrying in %.1f s",
                             row.id, attempt, error.error_type, error, delay)
                    await asyncio.sleep(delay)
                    continue
                return Failure(row.id, row.position, error.error_type, str(error), attempt,
                               row=row, trace=trace, sample=sample, retryable=error.retryable)
            except Exception as error:  # a bug must not sink the other rows
                log.exception("row %s: unexpected error", row.id)
                return Failure(row.id, row.position, InternalError.error_type,
                               f"{type(error).__name__}: {error}",
                               attempt, row=row, trace=trace, sample=sample)
            return Success(row, completion.text, completion.trace, attempt, settings.model, sample)

    def note(result: Result) -> None:
        if isinstance(result, Success):
            state.succeeded += 1
            state.consecutive_failures = 0
        elif result.row is not None:  # a request failure, not bad input
            state.failed += 1
            if result.error_type != ResponseTooLargeError.error_type:
                state.consecutive_failures += 1
            if state.consecutive_failures >= settings.max_consecutive_failures:
                state.down_reason = (
                    f"{state.consecutive_failures} rows failed in a row; last: {result.error}"
                )
                stop.set()

    grace_timer: asyncio.TimerHandle | None = None

    def on_deadline() -> None:
        nonlocal grace_timer
        state.deadline_hit = True
        drain.set()
        log.warning("deadline reached: no new requests; %d in flight get %.0f s to finish",
                    state.in_flight, settings.grace)
        grace_timer = loop.call_later(settings.grace, stop.set)

    timer = loop.call_later(settings.deadline, on_deadline) if settings.deadline is not None else None
    stopper: asyncio.Task[Any] = asyncio.ensure_future(stop.wait())
    stopper.add_done_callback(lambda _: ended.put_nowait(None))
    try:
        while True:
            while not stop.is_set() and not drain.is_set() and len(pending) < window:
                if queued:
                    row, sample = queued.popleft()
                    task = asyncio.create_task(job(row, sample))
                    task.add_done_callback(ended.put_nowait)
                    pending.add(task)
                    continue
                if exhausted:
                    break
                try:
                    item = await source.__anext__()
                except StopAsyncIteration:
                    exhausted = True
                    break
                if isinstance(item, Failure):
                    yield item
                    continue
                queued.extend((item, sample) for sample in (item.samples or range(settings.samples)))
            if not pending:
                break
            if stop.is_set():
                # Stop: cancel what is in flight, but keep whatever finished meanwhile.
                for task in pending:
                    task.cancel()
                finished = await asyncio.gather(*pending, return_exceptions=True)
                pending.clear()
                for result in finished:
                    if isinstance(result, (Success, Failure)):
                        note(result)
                        yield result
                    elif isinstance(result, asyncio.CancelledError):
                        state.unfinished += 1
                break
            ended_task = await ended.get()
            if ended_task is None:
                continue  # stop was set: handled at the top of the loop
            pending.discard(ended_task)
            result = ended_task.result()
            if result is None:
                continue
            note(result)
            yield result
    finally:
        if timer is not None:
            timer.cancel()
        if grace_timer is not None:
            grace_timer.cancel()  # a run that ended within the grace must not set `stop` later
        state.unfinished += sum(1 for _ in queued)
        stopper.cancel()
        # Closed early by the consumer: leave no request running behind its back.
        for task in pending:
            task.cancel()
        # Await the stop watcher too: a cancelled task only ends at its next step, and
        # nothing of this run may outlive the generator.
        try:
            await asyncio.gather(*pending, stopper, return_exceptions=True)
        finally:
            await source.aclose()  # close the input now (e.g. a reader's file), not at GC
    if state.down_reason:
        raise EndpointDownError(state.down_reason)
