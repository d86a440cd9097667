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
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from .errors import EndpointDownError, RequestError, ResponseTooLargeError
from .models import Completion, Failure, PromptRow, RequestTrace, Result, Success
from .retry import RetryPolicy

log = logging.getLogger(__name__)

DEFAULT_MODEL = "qwen-qwen2-72b-instruct"


class Completer(Protocol):
    """Anything that answers one prompt; :class:`~pipeline.client.GradioQueueClient` does."""

    async def complete(
        self, prompt: str, system: str | None = None, *, trace: RequestTrace | None = None
    ) -> Completion: ...


def _fresh_trace() -> RequestTrace:
    from .client import new_session_hash  # the transport owns the hash format

    return RequestTrace(new_session_hash())


@dataclass(frozen=True, slots=True)
class BatchSettings:
    """Knobs of one batch run. ``rate`` caps request starts per second (retries included)."""

    concurrency: int = 4
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    samples: int = 1
    rate: float | None = None
    model: str = DEFAULT_MODEL
    max_consecutive_failures: int = 20
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if self.samples < 1:
            raise ValueError("samples must be at least 1")
        if self.rate is not None and self.rate <= 0:
            raise ValueError("rate must be positive")


class _RateLimiter:
    """Spaces request starts at least ``1/rate`` seconds apart."""

    def __init__(self, rate: float | None) -> None:
        self._interval = 1.0 / rate if rate else 0.0
        self._next = 0.0

    async def wait(self) -> None:
        if not self._interval:
            return
        loop = asyncio.get_running_loop()
        now = loop.time()
        start = max(now, self._next)
        self._next = start + self._interval
        if start > now:
            await asyncio.sleep(start - now)


class BatchState:
    """Live counters of a run, for progress bars and the endpoint-down check."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.succeeded = 0
        self.failed = 0
        self.retries = 0
        self.consecutive_failures = 0
        self.down_reason: str | None = None


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
    completer: Completer,
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
    :class:`EndpointDownError` is raised after the last result.
    """
    settings = settings or BatchSettings()
    state = state or BatchState()
    stop = stop or asyncio.Event()
    semaphore = asyncio.Semaphore(settings.concurrency)
    limiter = _RateLimiter(settings.rate)
    rng = random.Random(settings.seed)
    window = 2 * settings.concurrency
    queued: deque[tuple[PromptRow, int]] = deque()
    pending: set[asyncio.Task[Result]] = set()
    source = _aiter(rows)
    exhausted = False

    async def job(row: PromptRow, sample: int) -> Result:
        attempt = 0
        while True:
            attempt += 1
            trace = _fresh_trace()  # a new session hash for every attempt
            try:
                async with semaphore:
                    await limiter.wait()
                    state.in_flight += 1
                    try:
                        completion = await completer.complete(row.prompt, row.system, trace=trace)
                    finally:
                        state.in_flight -= 1
            except RequestError as error:
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
                return Failure(row.id, row.position, "internal", f"{type(error).__name__}: {error}",
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
            if result.error_type in ("discovery", "invalid_endpoint"):
                state.down_reason = result.error
            elif state.consecutive_failures >= settings.max_consecutive_failures:
                state.down_reason = (
                    f"{state.consecutive_failures} rows failed in a row; last: {result.error}"
                )
            if state.down_reason:
                stop.set()

    stopper: asyncio.Task[Any] = asyncio.ensure_future(stop.wait())
    try:
        while True:
            while not stop.is_set() and len(pending) < window:
                if queued:
                    row, sample = queued.popleft()
                    pending.add(asyncio.create_task(job(row, sample)))
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
                break
            done, _ = await asyncio.wait(pending | {stopper}, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task is stopper:
                    continue
                pending.discard(task)
                result = task.result()
                note(result)
                yield result
    finally:
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
