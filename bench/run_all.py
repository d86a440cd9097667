#!/usr/bin/env python3
"""Run the whole benchmark suite; print a table; write bench/results/*.json.

    .venv/bin/python bench/run_all.py --size small              # ~2-3 min, CI-sized
    .venv/bin/python bench/run_all.py --size full --write-docs  # ~20-25 min, docs/benchmarks.md

Sections (``--only overhead,sweep,...`` to pick some):

* ``startup``   interpreter + imports of each client, no work (explains small-run gaps);
* ``overhead``  ours vs the reference client, fake Space at 0.3 s / 10 chunks, concurrency 64;
* ``sweep``     both clients at concurrency 16 -> 512, same latency (+ a py-spy profile of
                both at the highest concurrency, full size);
* ``zero``      both clients with the fake Space answering at once (the client's hot path),
                plus a py-spy profile of each and micro_hot_path.py (full size, or ``--profile``);
* ``memory``    peak RSS of ours (and the reference) for 2k / 20k / 200k Parquet rows of
                ~2 KB prompts, plus ``mem_probe.py`` stages to see what grows;
* ``parquet_memory`` peak RSS of ours with Parquet output (the journal merge included) for
                2k and 200k rows of ~2 KB prompts and 20k rows of ~20 KB prompts, against
                the 2k run, plus ``mem_probe.py --stage parquet`` (the merge's share);
* ``alternatives`` ours, the reference, the provider style (a session per prompt) and the
                official gradio_client against a real local gradio server (needs
                QWEN_BATCH_GRADIO4_PYTHON or QWEN_BATCH_GRADIO6_PYTHON; skipped without).

Every client run is a separate process measured by ``os.wait4`` (wall, CPU, ru_maxrss)
and killed past its time limit; ours and the reference alternate run by run, so a
noisy neighbour hits both alike. Only 127.0.0.1 is ever contacted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    BENCH_DIR,
    REPO,
    RESULTS_DIR,
    ClientRun,
    FakeSpaceProc,
    count_lines,
    log,
    machine_info,
    make_jsonl,
    make_parquet,
    median,
    ours_cmd,
    python_exe,
    reference_cmd,
    run_client,
    run_measured,
    vm_status_mb,
    write_json,
)

INPUTS = RESULTS_DIR / "inputs"
WORK = RESULTS_DIR / "tmp"


REUSE_MEMORY_RUNS = False  # --reuse-memory-runs: keep earlier client runs, redo the rest


@dataclass(frozen=True)
class Sizes:
    name: str
    reps: int
    overhead_n: int
    sweep: tuple[int, ...]
    sweep_reps: int
    sweep_min_n: int
    sweep_per_c: int
    zero_n: int
    zero_reps: int
    memory: tuple[int, ...]
    memory_ref_max: int
    parquet_memory: tuple[tuple[int, int, int], ...]
    """(rows, prompt characters, input page rows or 0 for pyarrow's default) of the Parquet
    output runs; the first is the baseline."""
    alt_n: int
    alt_reps: int
    profile: bool


SIZES = {
    "small": Sizes(name="small", reps=3, overhead_n=1000, sweep=(16, 64, 256), sweep_reps=1, sweep_min_n=320,
                   sweep_per_c=8, zero_n=2000, zero_reps=1, memory=(1000, 10_000),
                   memory_ref_max=10_000,
                   parquet_memory=((1000, 2000, 0), (10_000, 2000, 0), (1000, 20_000, 0)),
                   alt_n=64, alt_reps=1, profile=False),
    "full": Sizes(name="full", reps=5, overhead_n=2000, sweep=(16, 32, 64, 128, 256, 512), sweep_reps=3,
                  sweep_min_n=640, sweep_per_c=12, zero_n=10_000, zero_reps=7,
                  memory=(2000, 20_000, 200_000), memory_ref_max=20_000,
                  parquet_memory=((2000, 2000, 0), (200_000, 2000, 0), (20_000, 20_000, 0),
                                  (20_000, 20_000, 50)), alt_n=200, alt_reps=3,
                  profile=True),
}
LATENCY = 0.3
CHUNKS = 10


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def server_check(space: FakeSpaceProc) -> dict[str, Any]:
    """The fake Space's counters after a run: nothing may be left running or waiting."""
    time.sleep(0.2)  # let it notice closed streams
    try:
        st = space.stats()
    except OSError as exc:
        return {"error": str(exc)}
    return {k: st.get(k) for k in ("joins", "completed", "failed", "cancelled", "abandoned",
                                   "running", "waiting", "max_running")}


def pair_runs(input_path: Path, n: int, concurrency: int, reps: int, space: FakeSpaceProc,
              timeout: float, clients: tuple[str, ...] = ("reference", "ours"),
              workdir: Path | None = None) -> list[ClientRun]:
    """``reps`` rounds of every client, the order alternating round by round."""
    runs: list[ClientRun] = []
    for rep in range(reps):
        order = clients if rep % 2 == 0 else tuple(reversed(clients))
        for client in order:
            run = run_client(client, input_path, n, space.url, concurrency,
                             workdir=workdir or WORK / "runs", timeout=timeout, server=space)
            after = server_check(space)
            run.extra.update(rep=rep, server=after, loadavg=loadavg())
            if after.get("running") or after.get("waiting"):
                run.extra["stuck"] = True
            runs.append(run)
            log(f"  {client:9s} n={n} c={concurrency}: wall {run.proc.wall_s:6.2f} s, "
                f"cpu {run.proc.cpu_s:6.2f} s, rss {run.proc.maxrss_mb:6.1f} MB, "
                f"{run.rows_out}/{n} rows{'' if run.ok else '  << NOT OK'}")
    return runs


def agg(runs: list[ClientRun], client: str) -> dict[str, Any]:
    mine = [r for r in runs if r.client == client]
    if not mine:
        return {}
    in_proc = [r.extra.get("elapsed_s") for r in mine if r.extra.get("elapsed_s") is not None]
    return {
        "runs": len(mine),
        "all_ok": all(r.ok for r in mine),
        "wall_s": median([r.proc.wall_s for r in mine]),
        "cpu_s": median([r.proc.cpu_s for r in mine]),
        "maxrss_mb": median([r.proc.maxrss_mb for r in mine]),
        "throughput": median([r.throughput for r in mine]),
        "cpu_ms_per_prompt": median([r.cpu_ms_per_prompt for r in mine]),
        "server_cpu_s": median([r.proc.server_cpu_s for r in mine]),
        "in_process_s": median(in_proc) if in_proc else None,
        "errors": sum(r.errors for r in mine),
        "stuck": sum(1 for r in mine if r.extra.get("stuck") or r.proc.timed_out),
        "walls": [round(r.proc.wall_s, 3) for r in mine],
        "cpus": [round(r.proc.cpu_s, 3) for r in mine],
    }


def pair_ratios(runs: list[ClientRun], a: str = "ours", b: str = "reference") -> dict[str, float]:
    """Medians of per-round ratios (a/b within the same round: robust to drifting load)."""
    rounds: dict[int, dict[str, ClientRun]] = {}
    for r in runs:
        rounds.setdefault(int(r.extra.get("rep", 0)), {})[r.client] = r
    wall, cpu, tput = [], [], []
    for pair in rounds.values():
        if a in pair and b in pair:
            wall.append(pair[a].proc.wall_s / pair[b].proc.wall_s)
            cpu.append(pair[a].cpu_ms_per_prompt / pair[b].cpu_ms_per_prompt)
            tput.append(pair[a].throughput / pair[b].throughput)
    return {"wall_ratio": median(wall), "cpu_ratio": median(cpu), "throughput_ratio": median(tput),
            "wall_ratios": [round(x, 3) for x in wall], "cpu_ratios": [round(x, 3) for x in cpu]}


# ------------------------------------------------------------------------------------ sections
def section_startup(sz: Sizes) -> dict[str, Any]:
    """Bare interpreter start + imports of each client, no work."""
    cmds = {
        "ours": [python_exe(), "-c", "import pipeline.cli"],
        "reference": [python_exe(), "-c", "import aiohttp, asyncio, json, uuid"],
    }
    out: dict[str, Any] = {}
    for name, cmd in cmds.items():
        runs = [run_measured(cmd, timeout=60) for _ in range(sz.reps)]
        out[name] = {"wall_s": median([r.wall_s for r in runs]),
                     "cpu_s": median([r.cpu_s for r in runs]),
                     "maxrss_mb": median([r.maxrss_mb for r in runs])}
        log(f"startup {name}: {out[name]}")
    return out


def section_overhead(sz: Sizes) -> dict[str, Any]:
    n, c = sz.overhead_n, 64
    inp = make_jsonl(INPUTS / f"prompts-{n}.jsonl", n)
    expected = n / c * LATENCY
    with FakeSpaceProc(LATENCY, CHUNKS) as space:
        runs = pair_runs(inp, n, c, sz.reps, space, timeout=max(60.0, 10 * expected))
    result = {"n": n, "concurrency": c, "latency": LATENCY, "chunks": CHUNKS,
              "ideal_wall_s": expected, "ours": agg(runs, "ours"),
              "reference": agg(runs, "reference"), **pair_ratios(runs),
              "runs": [r.to_dict() for r in runs]}
    result["targets"] = {"wall_ratio_max": 1.05, "cpu_ratio_max": 1.2}
    return result


def section_sweep(sz: Sizes) -> dict[str, Any]:
    points = []
    with FakeSpaceProc(LATENCY, CHUNKS) as space:
        for c in sz.sweep:
            n = max(sz.sweep_min_n, sz.sweep_per_c * c)
            inp = make_jsonl(INPUTS / f"prompts-{n}.jsonl", n)
            expected = n / c * LATENCY
            runs = pair_runs(inp, n, c, sz.sweep_reps, space, timeout=max(60.0, 15 * expected))
            points.append({"concurrency": c, "n": n, "ideal_throughput": c / LATENCY,
                           "ours": agg(runs, "ours"), "reference": agg(runs, "reference"),
                           **pair_ratios(runs), "runs": [r.to_dict() for r in runs]})
    result: dict[str, Any] = {"latency": LATENCY, "chunks": CHUNKS, "points": points}
    if sz.profile and max(sz.sweep) >= 256:
        import subprocess

        c = max(sz.sweep)
        n = max(sz.sweep_min_n, sz.sweep_per_c * c)
        log(f"profiling both clients at concurrency {c} (py-spy)")
        proc = subprocess.run([python_exe(), str(BENCH_DIR / "profile_hot_path.py"), "--n", str(n),
                               "--concurrency", str(c), "--latency", str(LATENCY)],
                              cwd=str(REPO), timeout=900, capture_output=True, text=True)
        result["profile_ok"] = proc.returncode == 0
    return result


def section_zero(sz: Sizes, profile: bool) -> dict[str, Any]:
    n, c = sz.zero_n, 64
    inp = make_jsonl(INPUTS / f"prompts-{n}.jsonl", n)
    with FakeSpaceProc(0.0, CHUNKS) as space:
        runs = pair_runs(inp, n, c, sz.zero_reps, space, timeout=max(60.0, n / 50))
    result: dict[str, Any] = {
        "n": n, "concurrency": c, "latency": 0.0, "chunks": CHUNKS,
        "ours": agg(runs, "ours"), "reference": agg(runs, "reference"), **pair_ratios(runs),
        "targets": {"throughput_ratio_min": 0.8, "cpu_ratio_max": 1.2},
        "runs": [r.to_dict() for r in runs]}
    if profile:
        import subprocess

        log("profiling the zero-latency hot path (py-spy)")
        proc = subprocess.run([python_exe(), str(BENCH_DIR / "profile_hot_path.py"), "--n", str(n),
                               "--concurrency", str(c)], cwd=str(REPO), timeout=900,
                              capture_output=True, text=True)
        result["profile_ok"] = proc.returncode == 0
        if proc.returncode != 0:
            log(f"profile failed: {proc.stderr[-800:]}")
        log("micro-benchmarks of the per-prompt work")
        proc = subprocess.run([python_exe(), str(BENCH_DIR / "micro_hot_path.py")],
                              cwd=str(REPO), timeout=600, capture_output=True, text=True)
        result["micro_ok"] = proc.returncode == 0
    return result


def section_memory(sz: Sizes) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    files = {}
    for n in sz.memory:
        files[n] = make_parquet(INPUTS / f"prompts-{n}-2kb.parquet", n, 2000)
    previous = RESULTS_DIR / f"{sz.name}_memory.json"
    if REUSE_MEMORY_RUNS and previous.exists():
        rows = [r for r in json.loads(previous.read_text())["runs"]
                if r["client"] in ("ours", "reference")]
        log(f"  memory: reusing {len(rows)} client runs from {previous.name}")
    with FakeSpaceProc(0.0, CHUNKS) as space:
        for n in sz.memory:
            clients = ["ours"] + (["reference"] if n <= sz.memory_ref_max else [])
            for client in clients:
                if any(r["client"] == client and r["n"] == n for r in rows):
                    continue
                run = run_client(client, files[n], n, space.url, 64, workdir=WORK / "mem",
                                 timeout=max(120.0, n / 40), server=space)
                log(f"  memory {client:11s} n={n}: rss {run.proc.maxrss_mb:.1f} MB "
                    f"(VmHWM {run.proc.hwm_mb:.1f}), wall {run.proc.wall_s:.1f} s"
                    f"{'' if run.ok else '  << NOT OK'}")
                rows.append({**run.to_dict(), "server": server_check(space)})
    probes = []
    for stage in ("import", "read", "plan", "done", "records"):
        for n in sz.memory:
            if stage == "import" and n != sz.memory[0]:
                continue
            cmd = [python_exe(), str(BENCH_DIR / "mem_probe.py"), str(files[n]), "--stage", stage]
            res = run_measured(cmd, timeout=600)
            probes.append({"stage": stage, "n": n, "maxrss_mb": res.maxrss_mb,
                           "cpu_s": res.cpu_s, "ok": res.returncode == 0})
            log(f"  probe {stage:7s} n={n}: rss {res.maxrss_mb:.1f} MB")
    ours = {r["n"]: r["maxrss_mb"] for r in rows if r["client"] == "ours"}
    ratio = max(ours.values()) / min(ours.values()) if ours else float("nan")
    return {"sizes": list(sz.memory), "prompt_chars": 2000, "concurrency": 64, "latency": 0.0,
            "runs": rows, "probes": probes,
            "ours_ratio_largest_smallest": ratio,
            "target_ratio_max": 1.25}


def _input_file(n: int, chars: int, page_rows: int = 0) -> Path:
    if page_rows:
        return make_parquet(INPUTS / f"prompts-{n}-{chars // 1000}kb-pages{page_rows}.parquet", n,
                            chars, page_rows=page_rows)
    return make_parquet(INPUTS / f"prompts-{n}-{chars // 1000}kb.parquet", n, chars)


def check_parquet_output(path: Path, n: int) -> dict[str, Any]:
    """Rows of a Parquet output, and whether they are every row in input order with the
    echo of its prompt as completion (read by a child: this process never loads pyarrow)."""
    proc = subprocess.run([python_exe(), str(BENCH_DIR / "common.py"), "check-parquet", str(path),
                           str(n)], cwd=str(REPO), timeout=600, capture_output=True, text=True)
    if proc.returncode != 0:
        return {"rows": 0, "checked": False, "check_error": proc.stderr[-800:]}
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


class PhasePeaks:
    """Peak VmRSS of a Parquet-output run by phase, told apart by its journal: ``start``
    (no result yet: imports, the first reads), ``run`` (the journal grows), ``merge``
    (the journal has stopped growing or is gone: the merge into the Parquet file)."""

    def __init__(self, journal: Path) -> None:
        self.journal = journal
        self.peaks: dict[str, float] = {}
        self._seen = 0
        self._still = 0

    def poll(self, pid: int) -> None:
        rss = vm_status_mb(pid, "VmRSS")
        try:
            size = self.journal.stat().st_size
        except OSError:
            size = -1
        if size > self._seen:
            self._seen, self._still = size, 0
        elif self._seen:
            self._still += 1
        # Still for 1 s (50 polls) after it grew, or gone: the run has ended.
        phase = "start" if not self._seen else "merge" if size < 0 or self._still > 50 else "run"
        if rss == rss:
            self.peaks[phase] = max(self.peaks.get(phase, 0.0), round(rss, 1))


def section_parquet_memory(sz: Sizes) -> dict[str, Any]:
    """Peak RSS of whole ``qwen-batch run`` processes writing Parquet (the merge included)."""
    runs: list[dict[str, Any]] = []
    files = {case: _input_file(*case) for case in sz.parquet_memory}
    workdir = WORK / "pqmem"
    with FakeSpaceProc(0.0, CHUNKS) as space:
        for n, chars, page_rows in sz.parquet_memory:
            shutil.rmtree(workdir, ignore_errors=True)  # each run starts from nothing
            workdir.mkdir(parents=True)
            out = workdir / "ours.out.parquet"
            cmd = ours_cmd(files[(n, chars, page_rows)], out, space.url, 64,
                           workdir / "ours.summary.json")
            phases = PhasePeaks(Path(str(out) + ".journal.jsonl"))
            proc = run_measured(cmd, timeout=max(180.0, n / 20), server=space, poll=phases.poll)
            check = check_parquet_output(out, n)
            out.unlink(missing_ok=True)
            row = {"n": n, "prompt_chars": chars, "input_page_rows": page_rows or 1024,
                   **proc.to_dict(), **check,
                   "phase_rss_mb": phases.peaks,
                   "ok": proc.returncode == 0 and not proc.timed_out and check.get("checked")
                   and check.get("rows") == n, "server": server_check(space)}
            runs.append(row)
            log(f"  parquet memory n={n} chars={chars} pages={page_rows}: rss "
                f"{proc.maxrss_mb:.1f} MB (VmHWM {proc.hwm_mb:.1f}), wall {proc.wall_s:.1f} s, "
                f"rows {check.get('rows')}"
                f"{'' if row['ok'] else '  << NOT OK'}")
    probes = []
    for n, chars, page_rows in sz.parquet_memory:
        output = WORK / "pqmem" / "probe.parquet"
        figures = WORK / "pqmem" / "probe.json"
        figures.unlink(missing_ok=True)
        cmd = [python_exe(), str(BENCH_DIR / "mem_probe.py"), str(files[(n, chars, page_rows)]),
               "--stage", "parquet", "--output", str(output), "--result", str(figures)]
        res = run_measured(cmd, timeout=max(180.0, n / 20))
        probe: dict[str, Any] = {"n": n, "prompt_chars": chars,
                                 "input_page_rows": page_rows or 1024, "maxrss_mb": res.maxrss_mb,
                                 "cpu_s": res.cpu_s, "ok": res.returncode == 0}
        with contextlib.suppress(OSError, ValueError):
            probe["figures"] = json.loads(figures.read_text())
        probes.append(probe)
        log(f"  probe parquet n={n} chars={chars} pages={page_rows}: rss {res.maxrss_mb:.1f} MB, "
            f"before the merge {probe.get('figures', {}).get('hwm_before_merge_mb')} MB")
    base = runs[0]["maxrss_mb"]
    for row in runs:
        row["ratio_to_first"] = row["maxrss_mb"] / base
    return {"cases": [list(c) for c in sz.parquet_memory], "concurrency": 64, "latency": 0.0,
            "runs": runs, "probes": probes, "target_ratio_max": 1.25}


def section_alternatives(sz: Sizes) -> dict[str, Any]:
    gradio_py = None
    for var in ("QWEN_BATCH_GRADIO4_PYTHON", "QWEN_BATCH_GRADIO6_PYTHON"):
        if os.environ.get(var) and Path(os.environ[var]).exists():
            gradio_py = os.environ[var]
            break
    if gradio_py is None:
        log("alternatives: no gradio interpreter (QWEN_BATCH_GRADIO4_PYTHON/6): skipped")
        return {"skipped": "no gradio interpreter"}
    sys.path.insert(0, str(REPO / "tests"))
    from real_gradio import start_gradio_server

    n, c = sz.alt_n, 32  # the Space's (and the app's) concurrency_limit is 40
    inp = make_jsonl(INPUTS / f"prompts-{n}.jsonl", n)
    work = WORK / "alt"
    work.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict[str, Any]]] = {}
    with start_gradio_server(gradio_py, env_overrides={"GRADIO_FAKE_WORD_DELAY": "0.01"}) as srv:
        version = srv.version
        log(f"alternatives: gradio {version} at {srv.url}")

        def cmd(name: str, out: Path) -> list[str]:
            if name == "ours":
                return ours_cmd(inp, out, srv.url, c)
            if name == "reference":
                return reference_cmd(inp, out, srv.url, c)
            if name == "provider":
                return [python_exe(), str(BENCH_DIR / "alt_provider.py"), str(inp), "-o",
                        str(out), "--url", srv.url, "--concurrency", str(c)]
            return [gradio_py, str(BENCH_DIR / "alt_gradio_client.py"), str(inp), "-o", str(out),
                    "--url", srv.url, "--concurrency", str(c)]

        names = ["ours", "reference", "provider", "gradio_client"]
        for rep in range(sz.alt_reps):
            for name in (names if rep % 2 == 0 else list(reversed(names))):
                out = work / f"{name}.jsonl"
                out.unlink(missing_ok=True)
                res = run_measured(cmd(name, out), timeout=max(120.0, n * 0.6))
                rows = count_lines(out)
                out.unlink(missing_ok=True)
                results.setdefault(name, []).append(
                    {**res.to_dict(), "rows_out": rows, "ok": res.returncode == 0 and rows == n})
                log(f"  {name:13s} n={n}: wall {res.wall_s:6.2f} s, cpu {res.cpu_s:5.2f} s, "
                    f"{rows}/{n} rows{'' if rows == n else '  << NOT OK'}"
                    f"{' (timed out)' if res.timed_out else ''}")
    summary = {}
    for name, runs in results.items():
        good = [r for r in runs if r["ok"]] or runs
        summary[name] = {
            "runs": len(runs), "ok_runs": sum(r["ok"] for r in runs),
            "wall_s": median([r["wall_s"] for r in good]),
            "cpu_s": median([r["cpu_s"] for r in good]),
            "ms_per_prompt": 1000 * median([r["wall_s"] for r in good]) / n,
            "cpu_ms_per_prompt": 1000 * median([r["cpu_s"] for r in good]) / n,
            "maxrss_mb": median([r["maxrss_mb"] for r in good]),
            "timed_out": sum(r["timed_out"] for r in runs)}
    return {"gradio": version, "n": n, "concurrency": c, "word_delay": 0.01,
            "summary": summary, "runs": results}


# ------------------------------------------------------------------------------------ output
def print_table(results: dict[str, Any]) -> None:
    def f(x: Any, spec: str = ".2f") -> str:
        return "-" if x is None or x != x else format(x, spec)

    print()
    if "overhead" in results:
        o = results["overhead"]
        print(f"overhead  n={o['n']} c={o['concurrency']} latency={o['latency']}s")
        for who in ("reference", "ours"):
            a = o[who]
            print(f"  {who:9s} wall {f(a['wall_s'])} s  cpu {f(a['cpu_s'])} s  "
                  f"rss {f(a['maxrss_mb'], '.0f')} MB  ok={a['all_ok']}")
        print(f"  ours/ref wall {f(o['wall_ratio'], '.3f')} (<= 1.05)  "
              f"cpu {f(o['cpu_ratio'], '.3f')} (<= 1.2)")
    if "sweep" in results:
        print("sweep  c: ours/ref prompts/s, cpu ms/prompt ours/ref")
        for p in results["sweep"]["points"]:
            print(f"  c={p['concurrency']:4d} n={p['n']:5d} ideal {p['ideal_throughput']:6.0f}/s: "
                  f"{f(p['ours']['throughput'], '.0f')}/{f(p['reference']['throughput'], '.0f')} "
                  f"/s, {f(p['ours']['cpu_ms_per_prompt'])}/"
                  f"{f(p['reference']['cpu_ms_per_prompt'])} ms, "
                  f"errors {p['ours']['errors']}/{p['reference']['errors']}, "
                  f"stuck {p['ours']['stuck']}/{p['reference']['stuck']}")
    if "zero" in results:
        z = results["zero"]
        print(f"zero latency n={z['n']} c={z['concurrency']}: ours "
              f"{f(z['ours']['throughput'], '.0f')}/s {f(z['ours']['cpu_ms_per_prompt'], '.3f')} "
              f"ms/prompt; ref {f(z['reference']['throughput'], '.0f')}/s "
              f"{f(z['reference']['cpu_ms_per_prompt'], '.3f')} ms/prompt; throughput ratio "
              f"{f(z['throughput_ratio'], '.3f')} (>= 0.8), cpu ratio {f(z['cpu_ratio'], '.3f')}"
              " (<= 1.2)")
    if "memory" in results:
        m = results["memory"]
        for r in m["runs"]:
            print(f"memory {r['client']:9s} n={r['n']:6d}: ru_maxrss {r['maxrss_mb']:.1f} MB, "
                  f"ok={r['ok']}")
        print(f"  ours largest/smallest {f(m['ours_ratio_largest_smallest'], '.2f')} (<= 1.25)")
    if "parquet_memory" in results:
        for r in results["parquet_memory"]["runs"]:
            print(f"parquet memory n={r['n']:6d} x {r['prompt_chars']:5d} chars: ru_maxrss "
                  f"{r['maxrss_mb']:.1f} MB, {f(r['ratio_to_first'], '.2f')}x the first "
                  f"(<= 1.25), ok={r['ok']}")
    if "alternatives" in results and "summary" in results["alternatives"]:
        a = results["alternatives"]
        print(f"alternatives (gradio {a['gradio']}, n={a['n']}, c={a['concurrency']}):")
        for name, s in a["summary"].items():
            print(f"  {name:13s} {s['ms_per_prompt']:7.1f} ms/prompt wall, "
                  f"{s['cpu_ms_per_prompt']:6.2f} ms/prompt cpu, ok {s['ok_runs']}/{s['runs']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", choices=sorted(SIZES), default="small")
    p.add_argument("--only", default="", help="comma-separated sections (default: all)")
    p.add_argument("--profile", action="store_true", help="py-spy profile even at small size")
    p.add_argument("--reuse-memory-runs", action="store_true",
                   help="memory: keep the client runs of the last results, redo the probes")
    p.add_argument("--write-docs", action="store_true",
                   help="regenerate docs/benchmarks.md and the plot from the results")
    args = p.parse_args(argv)
    sz = SIZES[args.size]
    global REUSE_MEMORY_RUNS
    REUSE_MEMORY_RUNS = args.reuse_memory_runs
    wanted = [s for s in args.only.split(",") if s] or [
        "startup", "overhead", "sweep", "zero", "memory", "parquet_memory", "alternatives"]
    started = time.monotonic()
    results: dict[str, Any] = {}
    meta = {"size": args.size, "machine": machine_info(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "loadavg_start": loadavg()}
    for name in wanted:
        t0 = time.monotonic()
        log(f"== {name} ==")
        if name == "startup":
            results[name] = section_startup(sz)
        elif name == "overhead":
            results[name] = section_overhead(sz)
        elif name == "sweep":
            results[name] = section_sweep(sz)
        elif name == "zero":
            results[name] = section_zero(sz, sz.profile or args.profile)
        elif name == "memory":
            results[name] = section_memory(sz)
        elif name == "parquet_memory":
            results[name] = section_parquet_memory(sz)
        elif name == "alternatives":
            results[name] = section_alternatives(sz)
        else:
            p.error(f"unknown section {name!r}")
        results[name]["seconds"] = round(time.monotonic() - t0, 1)
        results[name]["loadavg_end"] = loadavg()
        write_json(f"{args.size}_{name}.json", {"meta": meta, **results[name]})
        log(f"== {name}: {results[name]['seconds']:.0f} s ==")
    meta["seconds"] = round(time.monotonic() - started, 1)
    print_table(results)
    print(f"\ntotal {meta['seconds']:.0f} s; results in {RESULTS_DIR}")
    if args.write_docs:
        import report

        report.main(["--size", args.size])
    bad = [name for name in ("overhead", "sweep", "zero") if name in results
           and json.dumps(results[name]).count('"all_ok": false')]
    if bad:
        log(f"some runs were not clean (missing rows, errors or timeouts): {bad}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
