#!/usr/bin/env python3
"""What grows with the input: qwen-batch's pieces, each alone, in a fresh process.

    python bench/mem_probe.py INPUT.parquet --stage plan      # prints one JSON line

Stages (each includes the ones before it), all without any network:

* ``import``: import the CLI's modules (the floor of every run);
* ``read``: stream the Parquet file through ``read_records`` (pyarrow batches);
* ``plan``: also ``plan_rows`` (prompt rows, the duplicate-id set);
* ``done``: also add every key to the ``KeySet`` of done rows (a run adds only the keys
  of rows that failed before; this is the worst case: every row was in the errors file);
* ``records``: also build and JSON-encode a success record per row (answer = the
  fake Space's echo), written to /dev/null;
* ``parquet``: write those records to Parquet output instead (``ParquetOutput``: a
  journal, merged into the Parquet file on close), with ``VmHWM`` read before the
  merge and after it (``hwm_before_merge_mb``), so the merge's share is seen apart.

The parent (``run_all.py``) runs each stage as its own process and reads its
``ru_maxrss``; the stage also prints its own figures: ``VmRSS``/``VmHWM`` at the
end, pyarrow's pool (``total_allocated_bytes``, ``max_memory``) and the sizes of
the growing sets.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

STAGES = ("import", "read", "plan", "done", "records", "parquet")


def _status_mb(field: str) -> float:
    with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("input")
    p.add_argument("--stage", choices=STAGES, required=True)
    p.add_argument("--output", help="parquet stage: the output file (deleted after)")
    p.add_argument("--result", help="also write the JSON line to this file")
    args = p.parse_args(argv)
    start = time.perf_counter()

    import pyarrow as pa

    import pipeline.cli  # noqa: F401 - the same imports as a run
    from pipeline.alloc import pin_mmap_threshold
    from pipeline.jobs import KeySet, PlanCounters, plan_rows
    from pipeline.models import RequestTrace, Success, now_us
    from pipeline.readers import read_records
    from pipeline.records import encode_record, success_record
    from pipeline.rowspec import RowSpec

    pin_mmap_threshold()  # as the run command does before every run
    level = STAGES.index(args.stage)
    out: dict[str, object] = {"stage": args.stage, "rows": 0}
    done = KeySet()
    if level >= STAGES.index("read"):
        records = read_records(args.input, "parquet")
        rows = plan_rows(records, RowSpec(), done=done, counters=PlanCounters()) \
            if level >= STAGES.index("plan") else records
        sink = open(os.devnull, "wb") if args.stage == "records" else None  # noqa: SIM115
        output = None
        if args.stage == "parquet":
            from pipeline.writers import open_output

            if not args.output:
                p.error("the parquet stage needs --output")
            output = open_output(args.output, "parquet")
        count = 0
        for row in rows:
            count += 1
            if level >= STAGES.index("done"):
                done.add(row.id, 0)  # type: ignore[union-attr]
            if sink is not None or output is not None:
                now = now_us()
                trace = RequestTrace("0123456789ab", "http://127.0.0.1:1", "e" * 32, now, now,
                                     1.0, 1.0, 1.0, 10)
                answer = f"Echo: {row.prompt}\nSystem: x\nno no no"  # type: ignore[union-attr]
                record = success_record(
                    Success(row, answer, trace, 1, "qwen", 0))  # type: ignore[arg-type]
                if sink is not None:
                    sink.write(encode_record(record))
                else:
                    output.write(record)
        if sink is not None:
            sink.close()
        if output is not None:
            out["hwm_before_merge_mb"] = round(_status_mb("VmHWM"), 1)
            merge_start = time.perf_counter()
            output.close()
            out["merge_seconds"] = round(time.perf_counter() - merge_start, 2)
            os.remove(args.output)
        out["rows"] = count
    out.update(
        seconds=round(time.perf_counter() - start, 2),
        vm_rss_mb=round(_status_mb("VmRSS"), 1),
        vm_hwm_mb=round(_status_mb("VmHWM"), 1),
        arrow_allocated_mb=round(pa.total_allocated_bytes() / 2**20, 1),
        arrow_pool_peak_mb=round(pa.default_memory_pool().max_memory() / 2**20, 1),
        arrow_pool=pa.default_memory_pool().backend_name,
        done_keys=len(done),
    )
    print(json.dumps(out))
    if args.result:
        with open(args.result, "w", encoding="utf-8") as handle:
            handle.write(json.dumps(out) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
