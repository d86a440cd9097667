"""The report of a finished output: counts, latency percentiles, throughput over time, errors by type.

Reads a JSONL or Parquet output, or a ``--rows-per-file`` directory of parts, and
the errors file beside it, streaming: memory holds bounded samples and one count
per minute of the run, however many records there are.
"""

from __future__ import annotations

import os
import random
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from pipeline.digests import DigestSet, digest64
from pipeline.errors import OutputError
from pipeline.jsonl import iter_jsonl_records
from pipeline.summary import Reservoir
from pipeline.writers import PARQUET_SUFFIXES

JOURNAL_SUFFIX = ".journal.jsonl"
_PART = re.compile(r"part-\d{6,}\.(jsonl|parquet)(\.journal\.jsonl)?$")
_COLUMNS = ("id", "sample", "attempts", "started_at", "finished_at", "queue_ms", "ttft_ms",
            "duration_ms")
_BUCKETS = (1, 5, 15, 60, 360, 1440)  # minutes per throughput bucket, finest that fits
_MAX_BUCKETS = 30
_POINTS = 5_000  # (time, latency) points kept for the plot


@dataclass
class OutputReport:
    """What :func:`read_report` found; ``per_minute`` counts records by finishing minute."""

    output: str
    errors_file: str
    files: list[str] = field(default_factory=list)
    records: int = 0
    rows: int = 0
    samples: int = 0
    retried: int = 0
    extra_attempts: int = 0
    unmerged: int = 0
    latency: Reservoir = field(default_factory=Reservoir)
    ttft: Reservoir = field(default_factory=Reservoir)
    queue: Reservoir = field(default_factory=Reservoir)
    first_start: datetime | None = None
    last_finish: datetime | None = None
    per_minute: Counter[int] = field(default_factory=Counter)
    points: list[tuple[float, float]] = field(default_factory=list)
    failing: int = 0
    errors_by_type: dict[str, int] = field(default_factory=dict)
    _seen: int = 0

    def add(self, record: Mapping[str, Any], ids: DigestSet, rng: random.Random) -> None:
        """Count one output record."""
        self.records += 1
        row_id = record.get("id")
        if row_id is not None:
            digest = digest64(str(row_id))
            if digest not in ids:
                ids.add(digest)
                self.rows += 1
        self.samples = max(self.samples, int(record.get("sample") or 0) + 1)
        attempts = record.get("attempts")
        if isinstance(attempts, int) and attempts > 1:
            self.retried += 1
            self.extra_attempts += attempts - 1
        duration = _number(record.get("duration_ms"))
        self.latency.add(duration)
        self.ttft.add(_number(record.get("ttft_ms")))
        self.queue.add(_number(record.get("queue_ms")))
        started, finished = _moment(record.get("started_at")), _moment(record.get("finished_at"))
        if started is not None and (self.first_start is None or started < self.first_start):
            self.first_start = started
        if finished is None:
            return
        if self.last_finish is None or finished > self.last_finish:
            self.last_finish = finished
        self.per_minute[int(finished.timestamp() // 60)] += 1
        if duration is not None:  # a uniform sample of the points, as the reservoirs keep
            self._seen += 1
            point = (finished.timestamp(), duration)
            if len(self.points) < _POINTS:
                self.points.append(point)
            elif (slot := rng.randrange(self._seen)) < _POINTS:
                self.points[slot] = point

    def throughput(self) -> tuple[int, list[tuple[datetime, int]]]:
        """Records finished per bucket: (minutes per bucket, [(bucket start, count)])."""
        if not self.per_minute:
            return 1, []
        for width in _BUCKETS:
            buckets: Counter[int] = Counter()
            for minute, count in self.per_minute.items():
                buckets[minute - minute % width] += count
            if len(buckets) <= _MAX_BUCKETS or width == _BUCKETS[-1]:
                break
        return width, [(datetime.fromtimestamp(m * 60, timezone.utc), n)
                       for m, n in sorted(buckets.items())]

    def to_dict(self) -> dict[str, Any]:
        """The report as plain data (``qwen-batch report --json``)."""
        width, buckets = self.throughput()
        span = self.span_s()
        return {
            "output": self.output, "files": self.files, "records": self.records,
            "rows": self.rows, "samples": self.samples, "retried_records": self.retried,
            "extra_attempts": self.extra_attempts, "unmerged_journal_records": self.unmerged,
            "latency_ms": _percentiles(self.latency), "ttft_ms": _percentiles(self.ttft),
            "queue_ms": _percentiles(self.queue),
            "first_started_at": _iso(self.first_start), "last_finished_at": _iso(self.last_finish),
            "span_s": None if span is None else round(span, 3),
            "records_per_min": None if not span else round(self.records / span * 60, 2),
            "throughput": {"bucket_minutes": width,
                           "buckets": [{"start": _iso(t), "records": n} for t, n in buckets]},
            "errors_file": self.errors_file, "failing": self.failing,
            "errors_by_type": dict(sorted(self.errors_by_type.items())),
        }

    def span_s(self) -> float | None:
        """Seconds from the first start to the last finish (all runs that wrote the output)."""
        if self.first_start is None or self.last_finish is None:
            return None
        return max(0.0, (self.last_finish - self.first_start).total_seconds())


def read_report(output: str, errors_file: str) -> OutputReport:
    """Read ``output`` (file or directory of parts) and ``errors_file``; OutputError if unreadable."""
    report = OutputReport(output=output, errors_file=errors_file)
    report.files = output_files(output)
    ids, rng = DigestSet(), random.Random(0)
    for path in report.files:
        for record in _records(path):
            if path.endswith(JOURNAL_SUFFIX):
                report.unmerged += 1
            report.add(record, ids, rng)
    for failure in iter_jsonl_records(errors_file):
        report.failing += 1
        kind = str(failure.get("error_type") or "unknown")
        report.errors_by_type[kind] = report.errors_by_type.get(kind, 0) + 1
    return report


def output_files(output: str) -> list[str]:
    """The files holding an output's records: the file (and an unmerged journal), or the parts."""
    if os.path.isdir(output):
        names = sorted(n for n in os.listdir(output) if _PART.match(n))
        if not names:
            raise OutputError(f"{output}: no part files (part-000000.jsonl, ...) in this directory")
        return [os.path.join(output, n) for n in names]
    files = [p for p in (output, output + JOURNAL_SUFFIX) if os.path.exists(p)]
    if not files:
        raise OutputError(f"{output}: no such output")
    return files


def _records(path: str) -> Iterator[Mapping[str, Any]]:
    if not path.lower().endswith(PARQUET_SUFFIXES):
        yield from iter_jsonl_records(path)
        return
    import pyarrow as pa  # Parquet outputs only
    import pyarrow.parquet as pq

    try:
        with pq.ParquetFile(path) as parquet:
            columns = [c for c in _COLUMNS if c in parquet.schema_arrow.names]
            for batch in parquet.iter_batches(columns=columns):
                yield from batch.to_pylist()
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise OutputError(f"cannot read {path} as Parquet: {exc}") from exc


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def _moment(value: Any) -> datetime | None:
    """A timestamp from JSONL (ISO 8601 text) or Parquet (text, or a timestamp column)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return None
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)


def _iso(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def _percentiles(values: Reservoir) -> dict[str, float | None]:
    def at(q: float) -> float | None:
        value = values.percentile(q)
        return None if value is None else round(value, 1)

    return {"p50": at(50), "p90": at(90), "p99": at(99), "max": at(100), "count": values.count}


def render(report: OutputReport) -> str:
    """The report as text for a terminal."""
    d = report.to_dict()
    if not report.records:
        lines = [f"qwen-batch report: {report.output}", "  records     0 (no completions yet)"]
    else:
        lines = [
            f"qwen-batch report: {report.output}",
            f"  records     {report.records} ({report.rows} rows"
            + (f", up to {report.samples} samples each)" if report.samples > 1 else ")"),
            f"  retried     {report.retried} records needed more than one attempt "
            f"({report.extra_attempts} extra attempts)",
            f"  latency     {_ms(d['latency_ms'])}",
            f"  first token {_ms(d['ttft_ms'])}",
            f"  queue       {_ms(d['queue_ms'])}",
        ]
    if report.unmerged:
        lines.append(f"  unmerged    {report.unmerged} records still in a journal (a run is going "
                     "on or was cut short; the next run merges them)")
    span = report.span_s()
    if span is not None:
        lines.append(f"  span        {d['first_started_at']} -> {d['last_finished_at']} "
                     f"({span / 60:.1f} min), {d['records_per_min'] or 0:.1f} records/min overall")
    errors = ", ".join(f"{k} {v}" for k, v in d["errors_by_type"].items())
    lines.append(f"  failing     {report.failing} rows in {report.errors_file}"
                 + (f" ({errors})" if errors else ""))
    width, buckets = report.throughput()
    if buckets:
        lines.append(f"  throughput  records finished per {width} min:")
        top = max(n for _, n in buckets)
        days = len({t.date() for t, _ in buckets}) > 1
        for start, count in buckets:
            label = start.strftime("%Y-%m-%d %H:%M" if days else "%H:%M")
            bar = "#" * max(1, round(30 * count / top))
            lines.append(f"    {label}  {bar} {count}")
    return "\n".join(lines)


def _ms(block: dict[str, float | None]) -> str:
    if block["p50"] is None:
        return "n/a"
    return (f"p50 {block['p50']:.0f} ms, p90 {block['p90']:.0f} ms, p99 {block['p99']:.0f} ms, "
            f"max {block['max']:.0f} ms")
