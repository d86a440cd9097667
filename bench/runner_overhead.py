#!/usr/bin/env python3
"""The batch runner's own CPU per job: run_batch over a completer that answers at once.

    .venv/bin/python bench/runner_overhead.py [--jobs 20000] [--concurrency 64]

No network and no client: each request is one event-loop turn (``sleep(0)``, where a
real one would wait on its socket), so what is measured is run_batch's work per job
(scheduling, limit, endpoint choice, trace, result) plus that turn. The figure is
process CPU microseconds per job, best of ``--repeats`` (background load mostly drops
out). Run it with another checkout first on ``PYTHONPATH`` to compare two versions.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time

from pipeline.models import Completion, PromptRow, RequestTrace
from pipeline.runner import BatchSettings, run_batch


class Instant:
    """Answers every prompt after one event-loop turn."""

    display_url = "http://instant"

    async def complete(self, prompt: str, system: str | None = None, *,
                       trace: RequestTrace | None = None) -> Completion:
        assert trace is not None
        await asyncio.sleep(0)
        trace.duration_ms = 1.0
        return Completion("answer", trace)


async def one_run(jobs: int, concurrency: int) -> float:
    rows = (PromptRow(id=str(i), position=i, prompt=f"prompt {i}") for i in range(jobs))
    settings = BatchSettings(concurrency=concurrency, adaptive=False)
    start = time.process_time()
    count = 0
    async for _ in run_batch(rows, Instant(), settings):
        count += 1
    spent = time.process_time() - start
    assert count == jobs, (count, jobs)
    return spent / jobs * 1e6


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=20000)
    p.add_argument("--concurrency", type=int, nargs="+", default=[64, 8])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    out: dict[str, float] = {}
    for concurrency in args.concurrency:
        best = min(asyncio.run(one_run(args.jobs, concurrency)) for _ in range(args.repeats))
        out[f"cpu_us_per_job_c{concurrency}"] = round(best, 2)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
