"""One ``qwen-batch run``: files, lock, signals and progress around the batch core.

Everything here is plain Python driven by resolved options; the Click layer only
parses and reports. Exit codes live here so that tests can check them directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import TypeVar

from .columns import Records, close_records, open_checked_input, output_types
from .endpoints import MAX_COOLDOWN
from .engines import Engine, EngineOptions, open_engine
from .errorlog import compact_errors
from .errors import EndpointDownError, EngineUnavailableError, InputError, OutputError
from .jobs import KeySet, Plan, PlanCounters, plan_rows
from .jsonl import JsonlAppender
from .lock import OutputLock
from .models import Failure, PromptRow, RawRecord, Success, iso_utc, now_us
from .partitioned import remove_parts
from .progress import Progress
from .provenance import note_path, verify_input
from .readers import count_rows, detect_format, read_records
from .records import failure_record, success_record
from .redaction import Redact, redacted_logs, run_redactor
from .rowspec import RowSpec
from .runner import BatchState
from .settings import MAX_RECORD_BYTES, BatchSettings, ClientSettings, EngineSettings
from .summary import RunSummary
from .watchdog import Watchdog
from .writers import check_output, open_output

T = TypeVar("T")

log = logging.getLogger(__name__)

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_ROWS_FAILED = 3
EXIT_ENDPOINT_DOWN = 4
EXIT_INTERRUPTED = 130

WATCHDOG_FACTOR = 3.0
"""No progress for this many times the longest single wait stops the run: a quiet stretch
may chain a backoff (or a server's Retry-After), a rate wait and a probe cooldown, and an
attempt is one wait of its own."""
WATCHDOG_GRACE = 60.0


@dataclass(frozen=True)
class RunOptions:
    """Everything a run needs, already validated by the command line layer.

    The endpoint, batch and engine settings are their own objects (:mod:`.settings`, where
    their defaults live), handed as they are to the engine and the batch core; the rest
    is what the driver itself reads: files, formats, resume and the progress bar.
    """

    input: str
    output: str
    errors: str
    client: ClientSettings = field(default_factory=ClientSettings)
    batch: BatchSettings = field(default_factory=BatchSettings)
    engine: EngineSettings = field(default_factory=EngineSettings)
    input_format: str | None = None
    output_format: str | None = None
    spec: RowSpec = field(default_factory=RowSpec)
    overwrite: bool = False
    resume_any: bool = False
    """Resume even when the input is not the one the output was made from (see .provenance)."""
    require_id: bool = False
    """The id field was named (``--id-field`` or a config): an input without it is a usage error."""
    rows_per_file: int | None = None
    """Write ``output`` as a directory of parts of at most this many records each."""
    progress: bool = True
    summary_path: str | None = None
    max_record_bytes: int = MAX_RECORD_BYTES
    csv_infer_types: bool = False
    """CSV/TSV input: let pyarrow infer column types instead of reading text."""
    watchdog: float | None = None
    """internal: seconds in which no row moves before the run is stopped (exit 4); None:
    see :func:`watchdog_window`."""


@dataclass
class RunOutcome:
    exit_code: int
    summary: RunSummary


def watchdog_window(options: RunOptions) -> float:
    """Seconds without any progress after which a run is stuck, not waiting for something."""
    if options.watchdog is not None:
        return options.watchdog
    t, batch = options.client.timeouts, options.batch
    waits = [t.total, t.read, t.idle, t.request, t.connect, batch.policy.max_delay,
             batch.policy.max_hint, MAX_COOLDOWN]
    if batch.rate:
        waits.append(1.0 / batch.rate)
    return WATCHDOG_FACTOR * max(waits)


def engine_options(options: RunOptions) -> EngineOptions:
    """The part of the run's options that its engine reads."""
    return EngineOptions(engine=options.engine, client=options.client, output=options.output)


def _remove_outputs(options: RunOptions) -> None:
    if options.rows_per_file is not None and os.path.isdir(options.output):
        remove_parts(options.output)
    for path in (options.output, options.output + ".journal.jsonl", options.errors,
                 note_path(options.output)):
        if path != "-" and not os.path.isdir(path):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def _count_rows(path: str, fmt: str) -> int | None:
    """Rows in the input, for the progress bar's total; None when unknown or too costly.

    A bounded pre-pass (see :func:`pipeline.readers.count_rows`): Parquet footers, the
    non-blank lines of a plain JSONL file; nothing for stdin, compressed or CSV input.
    """
    return count_rows(path, fmt)


async def _drive(options: RunOptions, fmt: str, records: Records, head: list[RawRecord | InputError],
                 summary: RunSummary, stop: asyncio.Event, redact: Redact, engine: Engine) -> None:
    run_started = iso_utc(now_us())
    output = open_output(options.output, options.output_format,
                         rows_per_file=options.rows_per_file,
                         column_types=output_types(options.input, fmt, options.spec,
                                                   infer_csv_types=options.csv_infer_types))
    errors_sink: JsonlAppender | None = None
    try:
        done = KeySet(output.iter_done_keys())
        if options.output != "-":  # nothing to resume from, and nowhere to note the input
            resuming = len(done) > 0 or (options.errors != "-" and os.path.exists(options.errors)
                                         and os.path.getsize(options.errors) > 0)
            source = iter(head) if options.input == "-" else read_records(
                options.input, fmt, max_record_bytes=options.max_record_bytes,
                infer_csv_types=options.csv_infer_types)
            verify_input(options.output, options.input, fmt, source, options.spec, done,
                         samples=options.batch.samples, check=resuming and not options.resume_any)
        # Only the rows failed in an earlier run need their success noted in ``done``
        # (to drop their error record at the end); adding every success would cost a key
        # per row of the whole run.
        failed_before = KeySet()
        compact_errors(options.errors, done, remaining=failed_before)
        errors_sink = JsonlAppender(options.errors)
        counters = PlanCounters()
        rows = plan_rows(records, options.spec, done=done, samples=options.batch.samples,
                         limit=options.batch.limit, counters=counters)
        settings = options.batch
        state = BatchState()
        # The bar's total is the jobs the plan will send: from a row count before the run
        # (only when the bar shows), corrected by the plan as it reads (PlanCounters).
        input_rows = _count_rows(options.input, fmt) if options.progress else None
        done_keys = len(done)

        def total() -> int | None:
            return counters.expected_jobs(input_rows, samples=options.batch.samples,
                                          done_keys=done_keys, limit=options.batch.limit)

        progress = Progress(options.progress, state, total)
        window = watchdog_window(options)

        def moved() -> tuple[int, ...]:
            return (summary.succeeded, summary.failed, summary.input_errors, state.retries,
                    state.attempts, counters.records)

        def stuck(message: str) -> None:
            summary.stalled = message

        async with Watchdog(window, moved, stop, stuck, grace=min(window, WATCHDOG_GRACE)), \
                engine(engine_options(options), rows, settings, stop, state) as results, \
                progress.ticking():
            try:
                async for result in results:
                    if isinstance(result, Success):
                        output.write(success_record(result))
                        key = (result.row.id, result.sample)
                        if failed_before and key in failed_before:
                            done.add(*key)
                    else:
                        assert isinstance(result, Failure)
                        record = failure_record(result)
                        record["error"] = redact(record["error"])
                        errors_sink.write(record)
                    summary.add(result)
                    progress.advance(result)
            except EndpointDownError as exc:
                summary.endpoint_down = redact(str(exc))
            except EngineUnavailableError as exc:  # the cluster: not joined, or not started
                summary.stalled = redact(str(exc))
            finally:
                if isinstance(results, AsyncGenerator):
                    # Leaving the loop on an error (a failed write, say) must cancel the
                    # requests in flight now, while the session is open, not at exit.
                    await results.aclose()
                summary.retries = state.retries
                summary.skipped_done = counters.skipped_done
                summary.rows_to_do, summary.jobs_to_do = counters.queued, counters.jobs
                summary.jobs_skipped = counters.done_jobs
                summary.note_state(state)
                progress.close()
        read_upto = counters.records
        await _count_remaining(rows, counters, summary, options, fmt, done_keys, stop,
                               input_rows=input_rows)
        errors_sink.close()
        errors_sink = None
        output.close()
        compact_errors(options.errors, done, reread_below=read_upto,
                       run_started=run_started)
    finally:
        if errors_sink is not None:
            errors_sink.close()
        output.close()  # safe twice; on an error the journal keeps every finished row


DRAIN_BUDGET = 1.0
"""Seconds spent planning the unread input to count what remains exactly (about 30,000
rows a second); past it, the rest is estimated from a row count (see _count_remaining)."""


async def _count_remaining(plan: Plan, counters: PlanCounters, summary: RunSummary,
                           options: RunOptions, fmt: str, done_keys: int,
                           stop: asyncio.Event, *, input_rows: int | None = None) -> None:
    """Set the rows and jobs left for the next run.

    Left are the planned jobs that did not end (a deadline, a stop) and the rows of the
    unread part of the input that still need work (a ``--limit``, a deadline, a stop).
    When the run ended by itself, that part is read and planned here without a request,
    for up to DRAIN_BUDGET seconds; a longer input, or any input of a stopped run (Ctrl-C,
    stalled, endpoint down: it should not linger), is estimated from its row count
    instead (``remaining_estimated``; ``input_rows`` when the bar counted it already),
    or left uncounted (None) when it has none (stdin, compressed, CSV).
    """
    stopped = bool(summary.interrupted or summary.stalled or summary.endpoint_down)
    samples = options.batch.samples
    rows = jobs = 0
    if not counters.exhausted and stopped:
        if input_rows is None:
            input_rows = await _in_daemon_thread(partial(_count_rows, options.input, fmt),
                                                 "qwen-batch-count-rows")
        if input_rows is None:
            return
        rows, jobs = counters.unread_estimate(input_rows, samples=samples, done_keys=done_keys)
        held_rows, held_jobs = plan.held_back()
        rows, jobs = rows + held_rows, jobs + held_jobs
        summary.remaining_estimated = True
    elif not counters.exhausted:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + DRAIN_BUDGET
        rest = plan.rest()
        for count, item in enumerate(rest, 1):
            if isinstance(item, PromptRow):
                rows += 1
                jobs += len(item.samples) if item.samples else samples
            if count % 1024 == 0:
                await asyncio.sleep(0)  # a Ctrl-C during a long count stops it
                if stop.is_set():
                    return
                if loop.time() > give_up:
                    break
        if not counters.exhausted:
            if input_rows is None:
                input_rows = _count_rows(options.input, fmt)
            if input_rows is None:
                return
            more_rows, more_jobs = counters.unread_estimate(input_rows, samples=samples,
                                                            done_keys=done_keys)
            rows, jobs = rows + more_rows, jobs + more_jobs
            summary.remaining_estimated = True
    summary.rows_remaining = summary.rows_to_do - summary.rows_done - summary.rows_failed + rows
    summary.remaining = summary.jobs_to_do - summary.succeeded - summary.failed + jobs


def _in_daemon_thread(fn: Callable[[], T], name: str) -> asyncio.Future[T]:
    """``fn()`` in a daemon thread, as a future: a second Ctrl-C cancels the wait and
    leaves the thread behind (``asyncio.to_thread``'s would hold the loop's end)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(value: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(value)  # type: ignore[arg-type]

    def work() -> None:
        try:
            value, error = fn(), None
        except Exception as exc:
            value, error = None, exc
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody waits
            loop.call_soon_threadsafe(settle, value, error)

    threading.Thread(target=work, name=name, daemon=True).start()
    return future


def _install_signals(stop: asyncio.Event, summary: RunSummary) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    installed = []

    def on_signal(signum: int) -> None:
        if not stop.is_set():
            summary.interrupted = True
            stop.set()
            name = signal.Signals(signum).name
            again = "press Ctrl-C again" if signum == signal.SIGINT else f"send {name} again"
            print(f"\n{name}: stopping; finishing up ({again} to quit at once)",
                  file=sys.stderr, flush=True)
        elif main is not None:
            main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, on_signal, sig)
            installed.append(sig)
    try:
        yield
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


async def run(options: RunOptions, *, engine: Engine | None = None) -> RunOutcome:
    """Run one batch job; the exit code says how it ended (see the README's table).

    ``engine`` runs the planned rows instead of the engine ``options.engine.kind`` names
    (see :mod:`pipeline.engines`); tests pass a double of the Ray engine this way.
    """
    summary = RunSummary(output=options.output, errors_file=options.errors,
                         samples=options.batch.samples)
    stop = asyncio.Event()
    started = time.monotonic()
    fmt = detect_format(options.input, options.input_format)
    check_output(options.output, options.output_format, rows_per_file=options.rows_per_file)
    # Before the lock and any file: a wrong column is one usage error, not one per row.
    records, head = open_checked_input(options.input, fmt, options.spec,
                                       require_id=options.require_id,
                                       max_record_bytes=options.max_record_bytes,
                                       infer_csv_types=options.csv_infer_types)
    redact = run_redactor(options.client.urls, options.client.proxy, options.client.hf_token)
    lock = OutputLock(options.output)  # removed again on every way out of the try below
    try:
        lock.acquire()  # LockedError propagates: another run owns this output
        if options.overwrite:
            _remove_outputs(options)
        with contextlib.contextmanager(_install_signals)(stop, summary), redacted_logs(redact):
            try:
                await _drive(options, fmt, records, head, summary, stop, redact,
                             engine or open_engine)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if summary.stalled is None:
                    summary.interrupted = True
                elif task is not None and hasattr(task, "uncancel"):
                    task.uncancel()  # the watchdog's own cancel, handled here
    finally:
        lock.release()
        close_records(records)
        summary.elapsed_s = time.monotonic() - started
    if options.summary_path:
        try:
            with open(options.summary_path, "w", encoding="utf-8") as handle:
                handle.write(summary.to_json())
        except OSError as exc:
            raise OutputError(f"cannot write the summary to {options.summary_path}: {exc}") from exc
    if summary.interrupted:
        code = EXIT_INTERRUPTED
    elif summary.endpoint_down or summary.stalled:
        code = EXIT_ENDPOINT_DOWN
    elif summary.failed or summary.input_errors:
        code = EXIT_ROWS_FAILED
    else:
        code = EXIT_OK
    return RunOutcome(code, summary)
