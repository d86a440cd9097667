"""Run statistics: counts, latency percentiles from a bounded sample, and the end-of-run report."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass, field
from typing import Any

from .errors import InputError
from .models import Failure, Result, Success

_RESERVOIR = 20_000  # samples kept per metric: percentiles stay accurate, memory stays flat


class Reservoir:
    """A uniform random sample of at most ``size`` values (Vitter's algorithm R)."""

    def __init__(self, size: int = _RESERVOIR, seed: int = 0) -> None:
        self.size = size
        self.count = 0
        self.values: list[float] = []
        self._rng = random.Random(seed)

    def add(self, value: float | None) -> None:
        if value is None:
            return
        self.count += 1
        if len(self.values) < self.size:
            self.values.append(value)
        else:
            slot = self._rng.randrange(self.count)
            if slot < self.size:
                self.values[slot] = value

    def percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100) by nearest rank, or None when empty."""
        if not self.values:
            return None
        ordered = sorted(self.values)
        # Nearest rank is ceil(q/100 * n). (round(x + 0.5) is not a ceiling: Python rounds
        # half to even, so it overshot by one whenever q*n/100 was an odd integer.)
        # The epsilon absorbs float noise such as 99.9 * 1000 / 100 = 999.0000000000001.
        rank = math.ceil(q * len(ordered) / 100 - 1e-9)
        return ordered[max(0, min(len(ordered) - 1, rank - 1))]


_ENDPOINT_STATES = {"closed": "in use", "open": "benched", "half_open": "being probed",
                    "gone": "gone"}
"""The circuit breaker's states in words (the JSON keeps the breaker's own: an "open"
circuit reads as healthy to anyone who has not met the pattern)."""


@dataclass
class RunSummary:
    """What a run did; filled in as results arrive."""

    succeeded: int = 0
    """Jobs done (a job is one row's one sample; rows × samples jobs in all)."""
    failed: int = 0
    """Jobs failed (requests, not bad input)."""
    input_errors: int = 0
    """Rows of bad input (never sent)."""
    skipped_done: int = 0
    """Rows already done in the output (every sample), skipped."""
    retries: int = 0
    remaining: int | None = None
    """Jobs left for the next run: counted when the run ended by itself (0 when it read
    the input to its end, more after ``--limit`` or ``--deadline``); None when stopped."""
    samples: int = 1
    rows_to_do: int = 0
    """Rows planned for requests in this run (partly done rows included)."""
    jobs_to_do: int = 0
    jobs_skipped: int = 0
    """Samples already in the output, of skipped and partly done rows."""
    rows_done: int = 0
    """Rows whose every job in this run succeeded."""
    rows_failed: int = 0
    """Rows with a failed job, once all their jobs ended."""
    rows_remaining: int | None = None
    remaining_estimated: bool = False
    """``remaining`` counts the unread input from a row count, not by planning it."""
    interrupted: bool = False
    endpoint_down: str | None = None
    stalled: str | None = None
    """Why the watchdog stopped the run (no row moved for too long), if it did."""
    elapsed_s: float = 0.0
    output: str = ""
    errors_file: str = ""
    errors_by_type: dict[str, int] = field(default_factory=dict)
    deadline_hit: bool = False
    concurrency: dict[str, Any] = field(default_factory=dict)
    endpoints: list[dict[str, Any]] = field(default_factory=list)
    latency: Reservoir = field(default_factory=Reservoir)
    ttft: Reservoir = field(default_factory=Reservoir)
    queue: Reservoir = field(default_factory=Reservoir)
    _open_rows: dict[int, tuple[int, bool]] = field(default_factory=dict, repr=False)
    """Rows with jobs still out: jobs left and whether one failed (bounded by the window)."""

    def add(self, result: Result) -> None:
        if isinstance(result, Success):
            self.succeeded += 1
            self.latency.add(result.trace.duration_ms)
            self.ttft.add(result.trace.ttft_ms)
            self.queue.add(result.trace.queue_ms)
            self._job_ended(result, ok=True)
            return
        assert isinstance(result, Failure)
        if result.row is None:
            self.input_errors += 1
        else:
            self.failed += 1
            self._job_ended(result, ok=False)
        self.errors_by_type[result.error_type] = self.errors_by_type.get(result.error_type, 0) + 1

    def _job_ended(self, result: Success | Failure, *, ok: bool) -> None:
        row = result.row
        assert row is not None
        jobs = len(row.samples) if row.samples else self.samples
        if jobs > 1:
            left, failed = self._open_rows.get(row.position, (jobs, False))
            left, failed = left - 1, failed or not ok
            if left > 0:
                self._open_rows[row.position] = (left, failed)
                return
            self._open_rows.pop(row.position, None)
            ok = not failed
        if ok:
            self.rows_done += 1
        else:
            self.rows_failed += 1

    @property
    def nothing_to_do(self) -> bool:
        """The run ended by itself with no row to send (all done before, or bad input)."""
        return (self.rows_to_do == 0 and self.succeeded == self.failed == 0
                and not self.remaining and not self.interrupted
                and not self.stalled and not self.endpoint_down)

    def note_state(self, state: Any) -> None:
        """Copy the run's concurrency trace and endpoint health from a BatchState."""
        self.deadline_hit = bool(state.deadline_hit)
        limit = state.limit
        if limit is not None:
            self.concurrency = {"ceiling": limit.ceiling, "final": limit.level,
                                "lowest": limit.lowest, "cuts": limit.cuts,
                                "adaptive": limit.adaptive, "trace": list(limit.history)}
        if state.pool is not None:
            self.endpoints = state.pool.report()

    def to_dict(self) -> dict[str, Any]:
        def pct(r: Reservoir) -> dict[str, float | None]:
            return {"p50": _round(r.percentile(50)), "p95": _round(r.percentile(95))}

        return {
            "succeeded": self.succeeded,
            "failed": self.failed,
            "input_errors": self.input_errors,
            "skipped_already_done": self.skipped_done,
            "retries": self.retries,
            "remaining": self.remaining,
            "remaining_estimated": self.remaining_estimated,
            "rows": {
                "read": self.input_errors + self.skipped_done + self.rows_to_do,
                "bad_input": self.input_errors,
                "already_done": self.skipped_done,
                "to_do": self.rows_to_do,
                "done": self.rows_done,
                "failed": self.rows_failed,
                "remaining": self.rows_remaining,
            },
            "jobs": {
                "samples_per_row": self.samples,
                "already_done": self.jobs_skipped,
                "to_do": self.jobs_to_do,
                "done": self.succeeded,
                "failed": self.failed,
                "retries": self.retries,
                "remaining": self.remaining,
            },
            "interrupted": self.interrupted,
            "endpoint_down": self.endpoint_down,
            "stalled": self.stalled,
            "elapsed_s": round(self.elapsed_s, 3),
            "throughput_per_s": round(self.succeeded / self.elapsed_s, 3) if self.elapsed_s else None,
            "latency_ms": pct(self.latency),
            "ttft_ms": pct(self.ttft),
            "queue_ms": pct(self.queue),
            "errors_by_type": dict(sorted(self.errors_by_type.items())),
            "deadline_hit": self.deadline_hit,
            "concurrency": self.concurrency,
            "endpoints": self.endpoints,
            "output": self.output,
            "errors_file": self.errors_file,
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"

    def render(self) -> str:
        """The one-screen report printed on stderr at the end of a run."""
        d = self.to_dict()

        def ms(block: dict[str, float | None]) -> str:
            if block["p50"] is None:
                return "n/a"
            return f"p50 {block['p50']:.0f} ms, p95 {block['p95']:.0f} ms"

        # Bad input has its own line; the breakdown of "failed" covers what it counts.
        failed_by_type = {k: v for k, v in d["errors_by_type"].items()
                          if k != InputError.error_type}
        count = self._counts
        lines = ["qwen-batch summary"]
        if self.nothing_to_do:
            if self.input_errors:
                done = f"{_n(self.skipped_done, 'row')} already done, " if self.skipped_done else ""
                lines.append(f"  nothing to send: {done}{_n(self.input_errors, 'row')} of bad "
                             "input (see the errors file)")
            else:
                lines.append(f"  nothing to do: all {_n(self.skipped_done, 'row')} already done")
        else:
            lines += [
                f"  to do       {count(self.rows_to_do, self.jobs_to_do)}",
                f"  done        {count(self.rows_done, self.succeeded)}",
                f"  failed      {count(self.rows_failed, self.failed)}" + (
                    " (" + ", ".join(f"{k} {v}" for k, v in failed_by_type.items()) + ")"
                    if failed_by_type else ""),
                f"  bad input   {_n(self.input_errors, 'row')}",
                f"  skipped     {count(self.skipped_done, self.jobs_skipped)} "
                "(already in the output)",
                f"  retries     {self.retries}",
            ]
            if self.remaining is not None:
                about = "~" if self.remaining_estimated else ""
                lines.append(f"  remaining   {about}{count(self.rows_remaining or 0, self.remaining)}"
                             + (" (left for the next run" if self.remaining else "")
                             + ("; estimated from a row count)" if self.remaining_estimated
                                else ")" if self.remaining else ""))
        if self.concurrency and not self.nothing_to_do:
            c = self.concurrency
            lines.append(f"  concurrency {c['final']} of {c['ceiling']} at the end, lowest "
                         f"{c['lowest']}, {c['cuts']} cuts" + ("" if c["adaptive"] else " (fixed)"))
        if len(self.endpoints) > 1:
            for ep in self.endpoints:
                state = _ENDPOINT_STATES.get(str(ep["state"]), ep["state"])
                lines.append(f"  endpoint    {ep['url']}: {ep['served']} served, "
                             f"{ep['failed']} failed, {state}")
        rate = d["throughput_per_s"]
        unit = "rows/s" if self.samples == 1 else "jobs/s"
        if not self.nothing_to_do:
            lines += [
                f"  latency     {ms(d['latency_ms'])}",
                f"  first token {ms(d['ttft_ms'])}",
                f"  throughput  {rate:.2f} {unit} over {self.elapsed_s:.1f} s" if rate is not None
                else f"  elapsed     {self.elapsed_s:.1f} s",
            ]
        lines += [
            f"  output      {self.output}",
            f"  errors      {self.errors_file}",
        ]
        if self.interrupted:
            lines.append("  INTERRUPTED: rows in flight were not saved; run again to finish")
        if self.stalled:
            lines.append(f"  STOPPED: {self.stalled}")
        if self.endpoint_down:
            lines.append(f"  STOPPED EARLY, endpoint failing: {self.endpoint_down}")
        return "\n".join(lines)


    def _counts(self, rows: int, jobs: int) -> str:
        """``N rows``, and ``, M jobs`` when a row has several samples."""
        text = _n(rows, "row")
        return text if self.samples == 1 else f"{text}, {_n(jobs, 'job')}"


def _n(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
