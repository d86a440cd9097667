#!/usr/bin/env python3
"""CI regression check: is ``qwen-batch run`` still about as fast and as frugal as the reference client?

    .venv/bin/python bench/check_regression.py            # ~1.5 min; exit 1 on a regression

Two legs, each against its own fake Space process, each running the minimal reference
client and ``qwen-batch run`` on its default path (the adaptive limit: no
``--fixed-concurrency``) over the same prompts, ``--reps`` rounds, alternating which
goes first:

* the latency leg: 1,000 prompts, 0.3 s per answer in 10 chunks, concurrency 64 (the
  overhead benchmark's setting: what a batch job sees);
* the zero leg: 2,000 prompts answered at once, concurrency 64 (the client's own hot path).

Per round, from ``os.wait4`` of each client process (bench/common.py):

    wall ratio = reference wall / our wall     (1.0 = as fast; higher is better)
    CPU ratio  = our CPU / reference CPU       (user + system of the whole process)

and the check fails (exit 1) when a median over the rounds is past its limit (the
defaults sit below today's level, so they catch a regression, not the distance to the
target, which is printed beside them), or when any output is wrong: every record is read
back and each input id must appear exactly once, with the prompt sent and, as completion,
exactly the fake Space's answer to it (``pipeline.fake_space.model.fake_answer``, a
deterministic function of prompt and system prompt). Exit 2: the benchmark itself could
not run. ``--json`` writes the figures.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS_DIR, ClientRun, FakeSpaceProc, log, make_jsonl, median, run_client

from pipeline.fake_space.model import fake_answer
from pipeline.prompts import DEFAULT_SYSTEM_PROMPT

# Issue #12's targets, printed beside the limits: wall within 5 % of the reference,
# CPU within 1.15x of it (not met yet at the time of writing: the CPU limit is a
# regression gate, not the target).
TARGETS = {"latency": {"wall": 1 / 1.05, "cpu": 1.15}, "zero": {"wall": 0.8, "cpu": 1.2}}


@dataclass(frozen=True)
class Leg:
    name: str
    n: int
    latency: float
    chunks: int
    wall_min: float
    cpu_max: float


def verdict(pairs: list[tuple[float, float]], threshold: float) -> tuple[float, bool]:
    """``pairs`` of (reference wall, our wall) per round -> (median ratio, passed)."""
    if not pairs:
        return float("nan"), False
    ratio = median([ref / ours for ref, ours in pairs if ours > 0])
    return ratio, ratio >= threshold


def cpu_verdict(pairs: list[tuple[float, float]], limit: float) -> tuple[float, bool]:
    """``pairs`` of (reference CPU, our CPU) per round -> (median of ours/reference, passed)."""
    if not pairs:
        return float("nan"), False
    ratio = median([ours / ref for ref, ours in pairs if ref > 0])
    return ratio, ratio <= limit


def read_prompts(path: Path) -> dict[str, str]:
    """id -> prompt of a JSONL input."""
    rows = (json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line)
    return {str(row["id"]): row["prompt"] for row in rows}


def output_checker(prompts: dict[str, str], system: str = DEFAULT_SYSTEM_PROMPT,
                   keep: int = 5) -> Callable[[Path], list[str]]:
    """A check of a JSONL output: every id once, its prompt, the fake Space's exact answer.

    Returns up to ``keep`` problems and a count of the rest (empty: the output is right).
    """
    def check(output: Path) -> list[str]:
        problems: list[str] = []
        seen: set[str] = set()
        if not output.exists():
            return [f"no output file {output.name}"]
        with open(output, encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, 1):
                try:
                    record = json.loads(line)
                    row_id = str(record["id"])
                except (ValueError, KeyError, TypeError):
                    problems.append(f"line {lineno}: not a record with an id")
                    continue
                if row_id not in prompts:
                    problems.append(f"line {lineno}: id {row_id!r} is not in the input")
                elif row_id in seen:
                    problems.append(f"line {lineno}: id {row_id!r} written twice")
                else:
                    seen.add(row_id)
                    prompt = prompts[row_id]
                    if record.get("prompt") != prompt:
                        problems.append(f"id {row_id!r}: the prompt differs from the input's")
                    if record.get("completion") != fake_answer(prompt, system):
                        problems.append(f"id {row_id!r}: the completion is not the fake "
                                        f"Space's answer: {str(record.get('completion'))[:80]!r}")
        if len(seen) < len(prompts):
            problems.append(f"{len(prompts) - len(seen)} ids missing from the output")
        if len(problems) > keep:
            problems[keep:] = [f"... and {len(problems) - keep} more"]
        return problems

    return check


def run_leg(leg: Leg, args: argparse.Namespace) -> dict[str, Any]:
    work = args.workdir / leg.name
    inp = make_jsonl(work / f"prompts-{leg.n}.jsonl", leg.n)
    check = output_checker(read_prompts(inp))
    timeout = max(30.0, 10 * leg.n / args.concurrency * max(leg.latency, 0.05))
    rounds: list[dict[str, ClientRun]] = []
    with FakeSpaceProc(leg.latency, leg.chunks) as space:
        for rep in range(args.reps):
            order = ("reference", "ours") if rep % 2 == 0 else ("ours", "reference")
            runs: dict[str, ClientRun] = {}
            for client in order:
                run = run_client(client, inp, leg.n, space.url, args.concurrency, workdir=work,
                                 timeout=timeout, server=space, adaptive=True, verify=check)
                runs[client] = run
                log(f"{leg.name:7s} {client:9s} round {rep}: wall {run.proc.wall_s:.2f} s, "
                    f"cpu {run.proc.cpu_s:.2f} s, {run.rows_out}/{leg.n} rows"
                    f"{'' if run.ok else ' << NOT OK: ' + '; '.join(run.problems) + ' '}"
                    f"{'' if run.ok else run.proc.stderr_tail[-300:]}")
            rounds.append(runs)
    walls = [(r["reference"].proc.wall_s, r["ours"].proc.wall_s) for r in rounds]
    cpus = [(r["reference"].proc.cpu_s, r["ours"].proc.cpu_s) for r in rounds]
    wall, wall_ok = verdict(walls, leg.wall_min)
    cpu, cpu_ok = cpu_verdict(cpus, leg.cpu_max)
    problems = {f"{client} round {i}": run.problems or [run.proc.stderr_tail[-300:]]
                for i, r in enumerate(rounds) for client, run in r.items() if not run.ok}
    return {"n": leg.n, "latency": leg.latency, "chunks": leg.chunks,
            "wall_ratio_ref_over_ours": wall, "wall_min": leg.wall_min, "wall_ok": wall_ok,
            "cpu_ratio_ours_over_ref": cpu, "cpu_max": leg.cpu_max, "cpu_ok": cpu_ok,
            "targets": TARGETS[leg.name], "walls": walls, "cpus": cpus,
            "clean": not problems, "problems": problems}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1000, help="prompts per run, latency leg")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--latency", type=float, default=0.3, help="fake Space seconds per answer")
    p.add_argument("--chunks", type=int, default=10)
    # Five rounds: with three, one noisy round on a busy CI machine moved the zero leg's
    # median to within a few percent of its limits.
    p.add_argument("--reps", type=int, default=5, help="rounds per leg (each: reference + ours)")
    p.add_argument("--threshold", type=float, default=0.9,
                   help="minimum reference/ours wall ratio, latency leg")
    p.add_argument("--cpu-max", type=float, default=1.5,
                   help="maximum ours/reference CPU ratio, latency leg")
    p.add_argument("--zero-n", type=int, default=2000,
                   help="prompts per run, zero leg (0: no zero leg)")
    p.add_argument("--zero-threshold", type=float, default=0.5,
                   help="minimum reference/ours wall ratio, zero leg")
    # On the CI machine, after the test suite, this leg's median sat at 1.68-1.77 against
    # 1.39-1.46 on a quiet one: 2.0 still catches a regression of a fifth.
    p.add_argument("--zero-cpu-max", type=float, default=2.0,
                   help="maximum ours/reference CPU ratio, zero leg")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.add_argument("--workdir", type=Path, default=RESULTS_DIR / "tmp" / "regression",
                   help="inputs and outputs go here")
    args = p.parse_args(argv)
    started = time.monotonic()
    legs = [Leg("latency", args.n, args.latency, args.chunks, args.threshold, args.cpu_max)]
    if args.zero_n > 0:
        legs.append(Leg("zero", args.zero_n, 0.0, args.chunks, args.zero_threshold,
                        args.zero_cpu_max))
    results: dict[str, dict[str, Any]] = {}
    try:
        for leg in legs:
            results[leg.name] = run_leg(leg, args)
    except (OSError, RuntimeError) as exc:
        log(f"cannot run the benchmark: {exc}")
        return 2
    clean = all(r["clean"] for r in results.values())
    passed = clean and all(r["wall_ok"] and r["cpu_ok"] for r in results.values())
    figures = {"concurrency": args.concurrency, "reps": args.reps, "adaptive": True,
               "legs": results, "clean": clean, "passed": passed,
               "seconds": round(time.monotonic() - started, 1)}
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n")
    failures = []
    for name, r in results.items():
        target = r["targets"]
        print(f"{name:7s} leg ({r['n']} prompts, {r['latency']} s answers): "
              f"wall reference/ours {r['wall_ratio_ref_over_ours']:.3f} (limit ≥ {r['wall_min']}, "
              f"target ≥ {target['wall']:.2f}); CPU ours/reference "
              f"{r['cpu_ratio_ours_over_ref']:.3f} (limit ≤ {r['cpu_max']}, target ≤ "
              f"{target['cpu']}); outputs exact: {r['clean']}")
        if not r["clean"]:
            failures.append(f"{name}: a run lost rows, reported errors, timed out or wrote a "
                            f"wrong record: {r['problems']}")
        if not r["wall_ok"]:
            failures.append(f"{name}: qwen-batch is slower than the reference client beyond "
                            f"the limit ({r['wall_ratio_ref_over_ours']:.3f} < {r['wall_min']})")
        if not r["cpu_ok"]:
            failures.append(f"{name}: qwen-batch uses more CPU than the limit allows "
                            f"({r['cpu_ratio_ours_over_ref']:.3f} > {r['cpu_max']})")
    print(f"{figures['seconds']:.0f} s")
    for failure in failures:
        print(f"FAIL: {failure}")
    if failures:
        return 1
    print("OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
