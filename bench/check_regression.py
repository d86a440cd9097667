#!/usr/bin/env python3
"""CI regression check: is ``qwen-batch run`` still about as fast as the minimal reference client?

    .venv/bin/python bench/check_regression.py            # ~40 s; exit 1 on a regression

Starts the fake Space (0.3 s per answer in 10 chunks, like the overhead benchmark),
then runs the reference client and ``qwen-batch run --fixed-concurrency`` over the
same 1,000 prompts at concurrency 64, ``--reps`` rounds, alternating which goes
first. The score is the median over rounds of

    wall ratio = reference wall time / our wall time      (1.0 = as fast; higher is better)

and the check fails (exit 1) when it drops below ``--threshold`` (0.9: ours more than
~11 % slower), or when any run lost rows, reported errors or timed out. Exit 2:
the benchmark itself could not run. ``--json`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, ClientRun, FakeSpaceProc, log, make_jsonl, median, run_client


def verdict(pairs: list[tuple[float, float]], threshold: float) -> tuple[float, bool]:
    """``pairs`` of (reference wall, our wall) per round -> (median ratio, passed)."""
    if not pairs:
        return float("nan"), False
    ratio = median([ref / ours for ref, ours in pairs if ours > 0])
    return ratio, ratio >= threshold


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000, help="prompts per run")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--latency", type=float, default=0.3, help="fake Space seconds per answer")
    p.add_argument("--chunks", type=int, default=10)
    p.add_argument("--reps", type=int, default=3, help="rounds (each: reference + ours)")
    p.add_argument("--threshold", type=float, default=0.9,
                   help="minimum reference/ours wall ratio")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.add_argument("--workdir", type=Path, default=RESULTS_DIR / "tmp" / "regression",
                   help="inputs and outputs go here")
    args = p.parse_args(argv)
    started = time.monotonic()
    work = args.workdir
    inp = make_jsonl(work / f"prompts-{args.n}.jsonl", args.n)
    timeout = max(30.0, 10 * args.n / args.concurrency * max(args.latency, 0.05))
    runs: list[ClientRun] = []
    try:
        with FakeSpaceProc(args.latency, args.chunks) as space:
            for rep in range(args.reps):
                order = ("reference", "ours") if rep % 2 == 0 else ("ours", "reference")
                for client in order:
                    run = run_client(client, inp, args.n, space.url, args.concurrency,
                                     workdir=work, timeout=timeout, server=space)
                    run.extra["rep"] = rep
                    runs.append(run)
                    log(f"{client:9s} round {rep}: wall {run.proc.wall_s:.2f} s, "
                        f"cpu {run.proc.cpu_s:.2f} s, {run.rows_out}/{args.n} rows"
                        f"{'' if run.ok else ' << NOT OK: ' + run.proc.stderr_tail[-300:]}")
    except (OSError, RuntimeError) as exc:
        log(f"cannot run the benchmark: {exc}")
        return 2
    by_round: dict[int, dict[str, ClientRun]] = {}
    for run in runs:
        by_round.setdefault(run.extra["rep"], {})[run.client] = run
    pairs = [(r["reference"].proc.wall_s, r["ours"].proc.wall_s) for r in by_round.values()
             if "reference" in r and "ours" in r]
    ratio, passed = verdict(pairs, args.threshold)
    clean = all(run.ok for run in runs)
    cpu = median([r["ours"].proc.cpu_s / r["reference"].proc.cpu_s for r in by_round.values()])
    figures = {
        "n": args.n, "concurrency": args.concurrency, "latency": args.latency,
        "reps": args.reps, "threshold": args.threshold, "wall_ratio_ref_over_ours": ratio,
        "cpu_ratio_ours_over_ref": cpu, "pairs": pairs, "clean": clean, "passed": passed and clean,
        "seconds": round(time.monotonic() - started, 1),
    }
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    print(f"wall ratio reference/ours = {ratio:.3f} (threshold {args.threshold}); "
          f"cpu ours/reference = {cpu:.2f}; runs clean: {clean}; {figures['seconds']:.0f} s")
    if not clean:
        print("FAIL: a run lost rows, reported errors or timed out")
        return 1
    if not passed:
        print(f"FAIL: qwen-batch is slower than the reference client beyond the threshold "
              f"({ratio:.3f} < {args.threshold})")
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
