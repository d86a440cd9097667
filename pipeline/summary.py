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


@dataclass
class RunSummary:
    """What a run did; filled in as results arrive."""

    succeeded: int = 0
    failed: int = 0
    input_errors: int = 0
    skipped_done: int = 0
    retries: int = 0
    remaining: int | None = None
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

    def add(self, result: Result) -> None:
        if isinstance(result, Success):
            self.succeeded += 1
            self.latency.add(result.trace.duration_ms)
            self.ttft.add(result.trace.ttft_ms)
            self.queue.add(result.trace.queue_ms)
            return
        assert isinstance(result, Failure)
        if result.row is None:
            self.input_errors += 1
        else:
            self.failed += 1
        self.errors_by_type[result.error_type] = self.errors_by_type.get(result.error_type, 0) + 1

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
        lines = [
            "qwen-batch summary",
            f"  done        {self.succeeded}",
            f"  failed      {self.failed}" + (
                " (" + ", ".join(f"{k} {v}" for k, v in failed_by_type.items()) + ")"
                if failed_by_type else ""),
            f"  bad input   {self.input_errors}",
            f"  skipped     {self.skipped_done} (already in the output)",
            f"  retries     {self.retries}",
        ]
        if self.remaining is not None:
            lines.append(f"  remaining   {self.remaining} (left for the next run)")
        if self.concurrency:
            c = self.concurrency
            lines.append(f"  concurrency {c['final']} of {c['ceiling']} at the end, lowest "
                         f"{c['lowest']}, {c['cuts']} cuts" + ("" if c["adaptive"] else " (fixed)"))
        if len(self.endpoints) > 1:
            for ep in self.endpoints:
                lines.append(f"  endpoint    {ep['url']}: {ep['served']} served, "
                             f"{ep['failed']} failed, {ep['state']}")
        rate = d["throughput_per_s"]
        lines += [
            f"  latency     {ms(d['latency_ms'])}",
            f"  first token {ms(d['ttft_ms'])}",
            f"  throughput  {rate:.2f} rows/s over {self.elapsed_s:.1f} s" if rate is not None
            else f"  elapsed     {self.elapsed_s:.1f} s",
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


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
