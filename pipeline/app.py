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
import time
from collections.abc import AsyncGenerator, Iterator
from dataclasses import dataclass, field

from .alloc import pin_mmap_threshold
from .client import DEFAULT_URL, Timeouts
from .columns import Records, close_records, open_checked_input
from .engines import open_engine
from .errorlog import compact_errors
from .errors import EndpointDownError, EngineUnavailableError, InputError, OutputError
from .jobs import KeySet, PlanCounters, plan_rows
from .lock import OutputLock
from .models import Failure, PromptRow, RawRecord, Success, iso_utc, utc_now
from .partitioned import remove_parts
from .progress import Progress
from .provenance import note_path, verify_input
from .readers import count_rows, detect_format, read_records
from .records import failure_record, success_record
from .redaction import Redact, redacted_logs, run_redactor
from .retry import RetryPolicy
from .rowspec import RowSpec
from .runner import BatchSettings, BatchState
from .summary import RunSummary
from .watchdog import Watchdog
from .writers import JsonlAppender, open_output

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
_PROBE_COOLDOWN_CAP = 60.0  # EndpointPool's longest wait before it probes a benched endpoint


@dataclass(frozen=True)
class RunOptions:
    """Everything a run needs, already validated by the command line layer."""

    input: str
    output: str
    errors: str
    input_format: str | None = None
    output_format: str | None = None
    spec: RowSpec = field(default_factory=RowSpec)
    urls: tuple[str, ...] = (DEFAULT_URL,)
    model: str = "qwen-qwen2-72b-instruct"
    concurrency: int = 4
    max_attempts: int = 4
    timeouts: Timeouts = field(default_factory=Timeouts)
    rate: float | None = None
    limit: int | None = None
    samples: int = 1
    proxy: str | None = None
    hf_token: str | None = None
    overwrite: bool = False
    resume_any: bool = False
    """Resume even when the input is not the one the output was made from (see .provenance)."""
    require_id: bool = False
    """The id field was named (``--id-field`` or a config): an input without it is a usage error."""
    rows_per_file: int | None = None
    """Write ``output`` as a directory of parts of at most this many records each."""
    progress: bool = True
    summary_path: str | None = None
    max_consecutive_failures: int = 20
    max_record_bytes: int = 1_000_000
    csv_infer_types: bool = False
    """CSV/TSV input: let pyarrow infer column types instead of reading text."""
    retry_base_delay: float = 1.0
    retry_max_delay: float = 60.0
    adaptive: bool = True
    min_chars: int = 1
    deadline: float | None = None
    grace: float = 60.0
    max_outage: float = 600.0
    connect_grace: float = 60.0
    """Seconds to keep trying endpoints that were never reached before stopping (exit 4)."""
    ca_bundle: str | None = None
    """A PEM file of the certificates to trust instead of the system's."""
    max_response_chars: int | None = None
    engine: str = "local"
    """``local`` (this process) or ``ray`` (a Ray Data pipeline; see pipeline.engines)."""
    ray_address: str | None = None
    actors: int = 2
    per_actor_concurrency: int | None = None
    engine_connect_timeout: float = 30.0
    """Ray: seconds to join a cluster (``--address``) before stopping with exit 4."""
    engine_start_timeout: float = 120.0
    """Ray: seconds for the first actor to run before stopping with exit 4."""
    watchdog: float | None = None
    """Seconds in which no row moves before the run is stopped (exit 4); None: see
    :func:`watchdog_window`."""


@dataclass
class RunOutcome:
    exit_code: int
    summary: RunSummary


def watchdog_window(options: RunOptions) -> float:
    """Seconds without any progress after which a run is stuck, not waiting for something."""
    if options.watchdog is not None:
        return options.watchdog
    t = options.timeouts
    waits = [t.total, t.read, t.idle, t.request, t.connect, options.retry_max_delay,
             RetryPolicy().max_hint, _PROBE_COOLDOWN_CAP]
    if options.rate:
        waits.append(1.0 / options.rate)
    return WATCHDOG_FACTOR * max(waits)


def _remove_outputs(options: RunOptions) -> None:
    if options.rows_per_file is not None and os.path.isdir(options.output):
        remove_parts(options.output)
    for path in (options.output, options.output + ".journal.jsonl", options.errors,
                 note_path(options.output)):
        if path != "-" and not os.path.isdir(path):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)


def _count_rows(path: str, fmt: str) -> int | None:
    """Rows in the input, for the progress bar's ETA; None when unknown or too costly."""
    return count_rows(path, fmt)


async def _drive(options: RunOptions, fmt: str, records: Records, head: list[RawRecord | InputError],
                 summary: RunSummary, stop: asyncio.Event, redact: Redact) -> None:
    run_started = iso_utc(utc_now())
    output = open_output(options.output, options.output_format,
                         rows_per_file=options.rows_per_file)
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
                         samples=options.samples, check=resuming and not options.resume_any)
        # Only the rows failed in an earlier run need their success noted in ``done``
        # (to drop their error record at the end); adding every success would cost a key
        # per row of the whole run.
        failed_before = KeySet()
        compact_errors(options.errors, done, remaining=failed_before)
        errors_sink = JsonlAppender(options.errors)
        counters = PlanCounters()
        rows = plan_rows(records, options.spec, done=done, samples=options.samples,
                         limit=options.limit, counters=counters)
        settings = BatchSettings(
            concurrency=options.concurrency,
            policy=RetryPolicy(max_attempts=options.max_attempts,
                               base_delay=options.retry_base_delay,
                               max_delay=options.retry_max_delay),
            samples=options.samples,
            rate=options.rate,
            model=options.model,
            max_consecutive_failures=options.max_consecutive_failures,
            adaptive=options.adaptive,
            min_chars=options.min_chars,
            deadline=options.deadline,
            grace=options.grace,
            max_outage=options.max_outage,
            connect_grace=options.connect_grace,
        )
        state = BatchState()
        total = _count_rows(options.input, fmt) if options.progress else None
        progress = Progress(options.progress, total * options.samples if total else None,
                            state)
        window = watchdog_window(options)

        def moved() -> tuple[int, ...]:
            return (summary.succeeded, summary.failed, summary.input_errors, state.retries,
                    state.attempts, counters.records)

        def stuck(message: str) -> None:
            summary.stalled = message

        async with Watchdog(window, moved, stop, stuck, grace=min(window, WATCHDOG_GRACE)), \
                open_engine(options, rows, settings, stop, state) as results:
            try:
                skipped = 0
                async for result in results:
                    if counters.skipped_done != skipped:
                        progress.skip((counters.skipped_done - skipped) * options.samples)
                        skipped = counters.skipped_done
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
                summary.note_state(state)
                progress.close()
        read_upto = counters.records
        if state.deadline_hit:
            summary.remaining = state.unfinished + _count_remaining(rows, options.samples)
        errors_sink.close()
        errors_sink = None
        output.close()
        compact_errors(options.errors, done, reread_below=read_upto,
                       run_started=run_started)
    finally:
        if errors_sink is not None:
            errors_sink.close()
        output.close()  # safe twice; on an error the journal keeps every finished row


def _count_remaining(rows: Iterator[PromptRow | Failure], samples: int) -> int:
    """Jobs still to do in the unread part of the input (read, not run)."""
    count = 0
    for item in rows:
        if isinstance(item, PromptRow):
            count += len(item.samples) if item.samples else samples
    return count


def _install_signals(stop: asyncio.Event, summary: RunSummary) -> Iterator[None]:
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    installed = []

    def on_signal(signum: int) -> None:
        if not stop.is_set():
            summary.interrupted = True
            stop.set()
            print(f"\n{signal.Signals(signum).name}: stopping; finishing up "
                  "(press Ctrl-C again to quit at once)", file=sys.stderr, flush=True)
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


async def run(options: RunOptions) -> RunOutcome:
    """Run one batch job; the exit code says how it ended (see the README's table)."""
    summary = RunSummary(output=options.output, errors_file=options.errors)
    pin_mmap_threshold()  # before the run's big buffers: keeps a long run's RSS flat
    stop = asyncio.Event()
    started = time.monotonic()
    fmt = detect_format(options.input, options.input_format)
    # Before the lock and any file: a wrong column is one usage error, not one per row.
    records, head = open_checked_input(options.input, fmt, options.spec,
                                       require_id=options.require_id,
                                       max_record_bytes=options.max_record_bytes,
                                       infer_csv_types=options.csv_infer_types)
    redact = run_redactor(options.urls, options.proxy, options.hf_token)
    lock = OutputLock(options.output)
    try:
        lock.acquire()  # LockedError propagates: another run owns this output
        if options.overwrite:
            _remove_outputs(options)
        with contextlib.contextmanager(_install_signals)(stop, summary), redacted_logs(redact):
            try:
                await _drive(options, fmt, records, head, summary, stop, redact)
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
