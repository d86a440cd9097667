#!/usr/bin/env python3
"""Write every figure of docs/benchmarks.md and docs/ray.md from bench/results/*.json.

    .venv/bin/python bench/report.py              # rewrite the generated blocks (and the plot)
    .venv/bin/python bench/report.py --check      # exit 1 if a doc differs from its results

A doc marks each generated part with a named block::

    <!-- BEGIN GENERATED: name -->
    ...
    <!-- END GENERATED: name -->

and ``DOCS`` maps each doc to one renderer per block name: only the text between the
markers is rewritten, the hand-written prose around it stays, and it holds no measured
figure (``tests/test_bench_docs.py`` regenerates both docs in memory and compares them
byte for byte, and scans the prose outside the blocks for typed figures). A block in a doc
with no renderer, or a renderer whose block is missing, is an error. To add a block: write
``render_<name>(size) -> str`` and list it under its doc in ``DOCS``.

The plot needs matplotlib in some interpreter: this one, ``$BENCH_PLOT_PYTHON``, or a
gradio venv (``$QWEN_BATCH_GRADIO4_PYTHON`` / ``$QWEN_BATCH_GRADIO6_PYTHON``); without one
it is skipped with a warning (the docs' text does not depend on it).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, RESULTS_DIR
from ray_cluster_report import render as render_cluster_results

DOC = REPO / "docs" / "benchmarks.md"
RAY_DOC = REPO / "docs" / "ray.md"
PNG = REPO / "docs" / "benchmarks_throughput.png"
BLOCK_RE = re.compile(r"^<!-- BEGIN GENERATED: (?P<name>[a-z0-9_]+) -->\n"
                      r"(?P<body>.*?)"
                      r"^<!-- END GENERATED: (?P=name) -->\n", re.S | re.M)
MARKER_RE = re.compile(r"^<!-- (BEGIN|END) GENERATED\b", re.M)

# The targets the results are judged against (issue #12), in one place.
T = {"overhead_wall": 1.05, "overhead_cpu": 1.2, "zero_throughput": 0.8, "zero_cpu": 1.2,
     "memory": 1.25}


class DocError(Exception):
    """A doc's generated blocks and its renderers do not match."""


def load(size: str, name: str) -> dict[str, Any] | None:
    return load_file(f"{size}_{name}.json")


def load_file(name: str) -> dict[str, Any] | None:
    path = RESULTS_DIR / name
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else None


def f(x: Any, spec: str = ".2f") -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "–"
    return format(x, spec)


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def best_of(micro: dict[str, Any]) -> str:
    match = re.search(r"best of \d+", str(micro.get("unit", "")))
    return f"{match.group(0)} repeats" if match else "best of several repeats"


def cores(data: dict[str, Any]) -> Any:
    return data.get("meta", {}).get("machine", {}).get("cores", "?")


def plot_python() -> str | None:
    candidates = [sys.executable, os.environ.get("BENCH_PLOT_PYTHON", ""),
                  os.environ.get("QWEN_BATCH_GRADIO4_PYTHON", ""),
                  os.environ.get("QWEN_BATCH_GRADIO6_PYTHON", "")]
    for py in candidates:
        if py and Path(py).exists() and subprocess.run(
                [py, "-c", "import matplotlib"], capture_output=True).returncode == 0:
            return py
    return None


def make_plot(size: str) -> str | None:
    """Draw the PNG; None on success, else why not (the docs' text is the same either way)."""
    sweep = RESULTS_DIR / f"{size}_sweep.json"
    if not sweep.exists():
        return "no sweep results"
    py = plot_python()
    if py is None:
        return "no interpreter with matplotlib; set BENCH_PLOT_PYTHON"
    proc = subprocess.run([py, str(Path(__file__).with_name("plot.py")), str(sweep), str(PNG),
                           "--startup", str(RESULTS_DIR / f"{size}_startup.json")],
                          capture_output=True, text=True, timeout=120)
    return None if proc.returncode == 0 else f"plot failed: {proc.stderr[-300:]}"


def plot_line(size: str) -> str:
    if not (RESULTS_DIR / f"{size}_sweep.json").exists():
        return "(no sweep results: no plot)"
    return f"![throughput and CPU per prompt against concurrency]({PNG.name})"


def startup_cpu(startup: dict[str, Any] | None, who: str) -> float:
    return float(startup.get(who, {}).get("cpu_s", 0.0)) if startup else 0.0


def net_cpu_ms(agg: dict[str, Any], n: int, start: float) -> float:
    return 1000.0 * (float(agg["cpu_s"]) - start) / n


def missing(*names: str) -> str:
    return f"(no results: {', '.join(names)} missing from bench/results/)\n"


SECTIONS = ("startup", "overhead", "sweep", "zero", "memory", "parquet_memory", "alternatives")


def render_results(size: str) -> str:
    """The ``results`` block: every section's tables."""
    loaded = {name: load(size, name) for name in SECTIONS}
    found = {k: v for k, v in loaded.items() if v}
    metas = [v["meta"] for v in found.values() if "meta" in v]
    meta = metas[0] if metas else {}
    starts = sorted({m.get("started", "?") for m in metas})
    total = sum(float(v.get("seconds", 0)) for v in found.values())
    startup = found.get("startup")
    out: list[str] = []
    m = meta.get("machine", {})
    took = ", ".join(f"{k} {float(v.get('seconds', 0)):.0f} s" for k, v in found.items())
    out += [f"Run: `bench/run_all.py --size {size}` started {', '.join(starts) or '?'}; "
            f"{total:.0f} s of measurement in all ({took}).",
            "",
            "| machine | |", "|---|---|",
            f"| CPU | {m.get('cpu', '?')}, {m.get('cores', '?')} cores (client and fake Space "
            "share them) |",
            f"| RAM | {m.get('mem_gb', '?')} GB |",
            f"| OS / Python | {m.get('os', '?')} / {m.get('python', '?')} |",
            f"| aiohttp / pyarrow / numpy | {m.get('aiohttp')} / {m.get('pyarrow')} / "
            f"{m.get('numpy')} |",
            f"| load average at start | {meta.get('loadavg_start')} (other jobs shared the "
            "machine; see each section's figure) |", ""]

    if startup:
        out += ["### Start-up (interpreter + imports, no work)", "",
                "| client | wall s | CPU s | peak RSS MB |", "|---|---:|---:|---:|"]
        for who in ("reference", "ours"):
            s = startup[who]
            out.append(f"| {who} | {f(s['wall_s'], '.3f')} | {f(s['cpu_s'], '.3f')} | "
                       f"{f(s['maxrss_mb'], '.1f')} |")
        out += ["", "Net CPU figures below subtract these start-up CPU times.", ""]

    o = load(size, "overhead")
    if o:
        out += ["### 1. Overhead against the reference client", "",
                f"{o['n']} prompts, concurrency {o['concurrency']}, fake Space {o['latency']} s "
                f"per answer in {o['chunks']} chunks (ideal wall {o['ideal_wall_s']:.2f} s); "
                f"medians of {o['ours']['runs']} runs each, alternating; load average at the end "
                f"{o.get('loadavg_end')}.", "",
                "| client | wall s | CPU s | net CPU ms/prompt | peak RSS MB | prompts/s | "
                "in-process s | errors |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for who in ("reference", "ours"):
            a = o[who]
            out.append(f"| {who} | {f(a['wall_s'])} | {f(a['cpu_s'])} | "
                       f"{f(net_cpu_ms(a, o['n'], startup_cpu(startup, who)), '.3f')} | "
                       f"{f(a['maxrss_mb'], '.1f')} | {f(a['throughput'], '.0f')} | "
                       f"{f(a.get('in_process_s'))} | {a['errors']} |")
        net_ratio = (net_cpu_ms(o["ours"], o["n"], startup_cpu(startup, "ours"))
                     / net_cpu_ms(o["reference"], o["n"], startup_cpu(startup, "reference")))
        out += ["", "| ratio ours / reference | value | target | |", "|---|---:|---:|---|",
                f"| wall (median of per-round ratios) | {f(o['wall_ratio'], '.3f')} | "
                f"≤ {T['overhead_wall']} | {verdict(o['wall_ratio'] <= T['overhead_wall'])} |",
                f"| CPU, whole process (median of per-round ratios) | "
                f"{f(o['cpu_ratio'], '.3f')} | ≤ {T['overhead_cpu']} | "
                f"{verdict(o['cpu_ratio'] <= T['overhead_cpu'])} |",
                f"| CPU, net of start-up (of the medians) | {f(net_ratio, '.3f')} | "
                f"(≤ {T['overhead_cpu']}) | |",
                f"| per-round wall ratios | {o['wall_ratios']} | | |",
                f"| per-round CPU ratios | {o.get('cpu_ratios', '–')} | | |", ""]

    s = load(size, "sweep")
    if s:
        out += ["### 2. Concurrency sweep", "",
                f"Fake Space {s['latency']} s per answer in {s['chunks']} chunks; n grows with "
                "concurrency so each run lasts a few seconds; medians of "
                f"{s['points'][0]['ours']['runs']} runs. Throughput is rows / process wall time "
                "(start-up included); server core = fake Space CPU s / wall s during our runs.",
                "", "| c | n | ideal /s | ours /s | ref /s | ours/ref | ours CPU ms/prompt (net) "
                "| ref CPU ms/prompt (net) | CPU ratio (net) | server core (ours) | errors o/r | "
                "stuck o/r |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for p in s["points"]:
            o_net = net_cpu_ms(p["ours"], p["n"], startup_cpu(startup, "ours"))
            r_net = net_cpu_ms(p["reference"], p["n"], startup_cpu(startup, "reference"))
            server_share = p["ours"]["server_cpu_s"] / p["ours"]["wall_s"]
            out.append(
                f"| {p['concurrency']} | {p['n']} | {p['ideal_throughput']:.0f} | "
                f"{f(p['ours']['throughput'], '.0f')} | {f(p['reference']['throughput'], '.0f')} | "
                f"{f(p['throughput_ratio'], '.2f')} | {f(o_net, '.3f')} | {f(r_net, '.3f')} | "
                f"{f(o_net / r_net, '.2f')} | {f(server_share, '.2f')} | "
                f"{p['ours']['errors']}/{p['reference']['errors']} | "
                f"{p['ours']['stuck']}/{p['reference']['stuck']} |")
        out += ["", plot_line(size), ""]
        top_c = max(p["concurrency"] for p in s["points"])
        prof_path = RESULTS_DIR / f"profile_c{top_c}.json"
        if prof_path.exists():
            prof = json.loads(prof_path.read_text())
            out += [f"Profile at concurrency {top_c} (py-spy, {prof['meta']['n']} prompts, "
                    f"{prof['meta'].get('latency')} s answers): ours "
                    f"{prof['ours']['total_samples']} samples, the reference "
                    f"{prof.get('reference', {}).get('total_samples', '–')}. Our functions by "
                    "own time:", "", "| % of samples | function | top callees |",
                    "|---:|---|---|"]
            for row in prof["ours"]["ours_own"][:8]:
                callees = "; ".join(f"{c['function'].split(' (')[0]} {c['pct']}%"
                                    for c in row.get("callees", [])[:3])
                out.append(f"| {row['pct']} | `{row['function']}` | {callees} |")
            out.append("")

    z = load(size, "zero")
    if z:
        o_net = net_cpu_ms(z["ours"], z["n"], startup_cpu(startup, "ours"))
        r_net = net_cpu_ms(z["reference"], z["n"], startup_cpu(startup, "reference"))
        out += ["### 3. Zero latency (the client's own hot path)", "",
                f"{z['n']} prompts, concurrency {z['concurrency']}, fake Space answering at once "
                f"({z['chunks']} chunks); medians of {z['ours']['runs']} runs; load average at the "
                f"end {z.get('loadavg_end')}.", "",
                "| client | wall s | prompts/s | CPU s | CPU ms/prompt | net CPU ms/prompt | "
                "server CPU s |", "|---|---:|---:|---:|---:|---:|---:|"]
        for who, net in (("reference", r_net), ("ours", o_net)):
            a = z[who]
            out.append(f"| {who} | {f(a['wall_s'])} | {f(a['throughput'], '.0f')} | "
                       f"{f(a['cpu_s'])} | {f(a['cpu_ms_per_prompt'], '.3f')} | {f(net, '.3f')} | "
                       f"{f(a['server_cpu_s'])} |")
        out += ["", "| ratio ours / reference | value | target | |", "|---|---:|---:|---|",
                f"| throughput | {f(z['throughput_ratio'], '.3f')} | ≥ {T['zero_throughput']} | "
                f"{verdict(z['throughput_ratio'] >= T['zero_throughput'])} |",
                f"| CPU per prompt | {f(z['cpu_ratio'], '.3f')} | ≤ {T['zero_cpu']} | "
                f"{verdict(z['cpu_ratio'] <= T['zero_cpu'])} |",
                f"| CPU per prompt, net of start-up | {f(o_net / r_net, '.3f')} | "
                f"(≤ {T['zero_cpu']}) | |", ""]
        prof_path = RESULTS_DIR / "profile_zero.json"
        if prof_path.exists():
            prof = json.loads(prof_path.read_text())
            out += profile_section(prof)

    micro_path = RESULTS_DIR / "micro_hot_path.json"
    if micro_path.exists():
        micro = json.loads(micro_path.read_text())
        out += ["#### Micro-benchmarks of the per-prompt work (`bench/micro_hot_path.py`)", "",
                f"One process, no network, {best_of(micro)} (so background load mostly drops "
                f"out): the SSE bytes of one answer as the fake Space sends them "
                f"({micro.get('chunks', '?')} chunks, one "
                "network chunk per frame) decoded the way each client does it; aiohttp's own "
                "costs are not included. µs per prompt.", "",
                "| work | prompt ~200 chars | prompt ~2,000 chars |", "|---|---:|---:|"]
        s200, s2000 = micro.get("stream_200", {}), micro.get("stream_2000", {})
        labels = [("reference", "reference: split lines, json.loads, stop at process_completed"),
                  ("ours", "ours: SSEDecoder + parse_message + EventTracker following the text "
                   "(the streaming path)"),
                  ("ours+tracker", "ours, the batch path (`complete()`: text not followed)")]
        for key, label in labels:
            out.append(f"| {label} | {f(s200.get(key), '.1f')} | {f(s2000.get(key), '.1f')} |")
        rec = micro.get("records_200", {})
        out += ["", "| other per-prompt work | µs |", "|---|---:|",
                f"| ours: success_record + encode_record (16 fields) | {f(rec.get('ours'), '.1f')} |",
                f"| reference: json.dumps of 3 fields | {f(rec.get('reference'), '.1f')} |"]
        for key, value in micro.get("wait", {}).items():
            out.append(f"| run_batch loop turn: {key} | {f(value, '.1f')} |")
        out.append("")

    mem = load(size, "memory")
    if mem:
        out += ["### 4. Memory: peak RSS against input size", "",
                f"Parquet input of ~{mem['prompt_chars']}-character prompts (written by "
                "`pq.write_table` with its defaults: one row group), answers echo them, fake Space "
                f"at zero latency, concurrency {mem['concurrency']}, JSONL output. One run per "
                "size. `ru_maxrss` from `wait4` of the client process; VmHWM polled from /proc "
                "as a cross-check.", "",
                "| client | rows | ru_maxrss MB | VmHWM MB | wall s | rows out |",
                "|---|---:|---:|---:|---:|---:|"]
        for r in [r for r in mem["runs"] if r["client"] in ("ours", "reference")]:
            out.append(f"| {r['client']} | {r['n']:,} | {f(r['maxrss_mb'], '.1f')} | "
                       f"{f(r['hwm_mb'], '.1f')} | {f(r['wall_s'], '.1f')} | {r['rows_out']:,} |")
        ratio = mem["ours_ratio_largest_smallest"]
        out += ["", f"Ours, largest / smallest: **{f(ratio, '.2f')}** (target ≤ {T['memory']}: "
                f"{verdict(ratio <= T['memory'])}).", "",
                "What grows: `bench/mem_probe.py` runs qwen-batch's own pieces over the same files "
                "with no network, one process per cell (ru_maxrss, MB; the `done` stage adds every "
                "row to the done set, the worst case).", ""]
        sizes = mem["sizes"]
        out += ["| stage (cumulative) | " + " | ".join(f"{n:,}" for n in sizes) + " |",
                "|---|" + "---:|" * len(sizes)]
        for stage in ("import", "read", "plan", "done", "records"):
            cells = []
            for n in sizes:
                hit = [p for p in mem["probes"] if p["stage"] == stage and not p.get("patched")
                       and (p["n"] == n or stage == "import")]
                cells.append(f(hit[0]["maxrss_mb"], ".1f") if hit else "–")
            out.append(f"| {stage} | " + " | ".join(cells) + " |")
        out.append("")
    out += parquet_memory(size)

    alt = load(size, "alternatives")
    if alt and "summary" in alt:
        out += [f"### 5. Against the alternatives (real gradio {alt['gradio']} server)", "",
                f"`tests/gradio_space_app.py` (the Space's layout; the fake `model_chat` streams "
                f"word by word, {alt['word_delay']} s a word) on 127.0.0.1; the same {alt['n']} "
                f"prompts for every client, concurrency {alt['concurrency']} (the app's "
                "concurrency_limit is 40); medians of "
                f"{max(s['runs'] for s in alt['summary'].values())} runs. The gradio server "
                f"shares the {cores(alt)} cores and is the bottleneck, so wall times mostly "
                "measure how "
                "much CPU each client leaves it.", "",
                "| client | wall ms/prompt | CPU ms/prompt | CPU vs ours | peak RSS MB | "
                "clean runs |", "|---|---:|---:|---:|---:|---:|"]
        alt_labels = {"ours": "qwen-batch run", "reference": "reference client (bench/)",
                  "provider": "provider style (a ClientSession per prompt)",
                  "gradio_client": "gradio_client `Client.submit`"}
        base = alt["summary"].get("ours", {}).get("cpu_ms_per_prompt")
        for name in ("ours", "reference", "provider", "gradio_client"):
            if name not in alt["summary"]:
                continue
            a = alt["summary"][name]
            rel = a["cpu_ms_per_prompt"] / base if base else float("nan")
            out.append(f"| {alt_labels[name]} | {f(a['ms_per_prompt'], '.1f')} | "
                       f"{f(a['cpu_ms_per_prompt'], '.2f')} | {f(rel, '.2f')}x | "
                       f"{f(a['maxrss_mb'], '.0f')} | {a['ok_runs']}/{a['runs']}"
                       f"{' (' + str(a['timed_out']) + ' timed out)' if a['timed_out'] else ''} |")
        out.append("")
    return "\n".join(out).rstrip("\n") + "\n"


def profile_section(prof: dict[str, Any]) -> list[str]:
    meta = prof["meta"]
    out = ["#### Profile of the zero-latency hot path (py-spy)", "",
           f"`bench/profile_hot_path.py`: {meta['n']} prompts, concurrency {meta['concurrency']}, "
           f"py-spy at {meta['rate']} Hz, non-idle samples only. Ours: "
           f"{prof['ours']['total_samples']} samples; the reference client: "
           f"{prof.get('reference', {}).get('total_samples', '–')} samples for the same work "
           "(samples ∝ CPU time).", "",
           "**Our functions by own time** (each sample charged to the innermost `pipeline/` "
           "frame of the running event-loop callback, i.e. the function plus the library code it "
           "calls directly; the arrows show where that time goes):", "",
           "| % of samples | function | top callees |", "|---:|---|---|"]
    for row in prof["ours"]["ours_own"][:12]:
        callees = "; ".join(f"{c['function'].split(' (')[0]} {c['pct']}%"
                            for c in row.get("callees", [])[:3])
        out.append(f"| {row['pct']} | `{row['function']}` | {callees} |")
    out += ["", "**Self time, any module** (innermost frame):", "",
            "| % ours | function | | % reference | function |", "|---:|---|---|---:|---|"]
    ref_self = prof.get("reference", {}).get("self", [])
    for i, row in enumerate(prof["ours"]["self"][:12]):
        ref = ref_self[i] if i < len(ref_self) else {"pct": "", "function": ""}
        out.append(f"| {row['pct']} | `{row['function']}` | | {ref['pct']} | "
                   f"`{ref['function']}` |" if ref["function"] else
                   f"| {row['pct']} | `{row['function']}` | | | |")
    out += ["", "**By area** (innermost frame), samples:", "",
            "| area | ours | reference |", "|---|---:|---:|"]
    ours_area = {r["function"]: r["samples"] for r in prof["ours"]["by_area"]}
    ref_area = {r["function"]: r["samples"] for r in prof.get("reference", {}).get("by_area", [])}
    for area in sorted(set(ours_area) | set(ref_area),
                       key=lambda a: -(ours_area.get(a, 0) + ref_area.get(a, 0)))[:10]:
        out.append(f"| {area} | {ours_area.get(area, 0)} | {ref_area.get(area, 0)} |")
    out += [f"| **total** | {prof['ours']['total_samples']} | "
            f"{prof.get('reference', {}).get('total_samples', 0)} |", ""]
    return out


def parquet_memory(size: str) -> list[str]:
    pqm = load(size, "parquet_memory")
    if not pqm:
        return []
    runs = pqm["runs"]
    base = runs[0]
    out = ["#### Parquet output, the journal merge included", "",
           f"`qwen-batch run` writing Parquet output: the whole process, from start to the end "
           "of the merge of its journal into the Parquet file. Parquet input written by "
           "`pq.write_table` with its defaults, fake Space at zero latency, concurrency "
           f"{pqm['concurrency']}, one run per case; every output checked (every row, in input "
           "order, each completion the echo of its prompt). The ratio is to the first run. "
           "Peak VmRSS by phase, sampled every 20 ms and told apart by the journal: *start* "
           "before the first result, *run* while the journal grows, *merge* after.", "",
           "*Input page rows* is the `write_batch_size` the input was written with (pyarrow's "
           "default 1,024; it checks a page's size only that often, so 20 KB rows make 20 MB "
           "pages that a reader must decompress whole).", "",
           "| rows | prompt chars | input page rows | ru_maxrss MB | ratio | start | run | "
           "merge | wall s | rows out | row groups | checked |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in runs:
        phase = r.get("phase_rss_mb", {})
        out.append(f"| {r['n']:,} | {r['prompt_chars']:,} | {r.get('input_page_rows', 1024):,} | "
                   f"{f(r['maxrss_mb'], '.1f')} | "
                   f"{f(r['ratio_to_first'], '.2f')} | {f(phase.get('start'), '.0f')} | "
                   f"{f(phase.get('run'), '.0f')} | {f(phase.get('merge'), '.0f')} | "
                   f"{f(r['wall_s'], '.1f')} | {r['rows']:,} | {r.get('row_groups', '–')} | "
                   f"{'yes' if r['ok'] else 'NO'} |")
    default = [r for r in runs if r.get("input_page_rows", 1024) == 1024]
    worst = max(r["ratio_to_first"] for r in default)
    target = pqm["target_ratio_max"]
    out += ["", f"Largest / first ({base['n']:,} rows of {base['prompt_chars']:,} characters), "
            f"inputs as pyarrow writes them by default: **{f(worst, '.2f')}** "
            f"(target ≤ {target}: {verdict(worst <= target)})."]
    for r in runs:
        if r not in default:
            ratio = r["ratio_to_first"]
            out.append(f"With the input written in pages of {r['input_page_rows']:,} rows: "
                       f"{r['n']:,} rows of {r['prompt_chars']:,} characters at "
                       f"**{f(ratio, '.2f')}** ({verdict(ratio <= target)}).")
    out += ["",
            "The merge's share: `bench/mem_probe.py --stage parquet` reads the same input and "
            "writes the records the fake Space would answer through the Parquet output, with no "
            "network; VmHWM (MB) before the merge and at the end.", "",
            "| rows | prompt chars | input page rows | before the merge | at the end | merge s |",
            "|---:|---:|---:|---:|---:|---:|"]
    for probe in pqm["probes"]:
        fig = probe.get("figures", {})
        out.append(f"| {probe['n']:,} | {probe['prompt_chars']:,} | "
                   f"{probe.get('input_page_rows', 1024):,} | "
                   f"{f(fig.get('hwm_before_merge_mb'), '.1f')} | "
                   f"{f(fig.get('vm_hwm_mb'), '.1f')} | {f(fig.get('merge_seconds'), '.1f')} |")
    out.append("")
    return out




def span(values: list[float], spec: str, sep: str = "–") -> str:
    """``a–b`` of the smallest and largest value (one value when they print the same)."""
    lo, hi = f(min(values), spec), f(max(values), spec)
    return lo if lo == hi else f"{lo}{sep}{hi}"


def render_summary(size: str) -> str:
    """The ``summary`` block: one row per target, from the same files as the results."""
    startup, o, s, z = (load(size, name) for name in ("startup", "overhead", "sweep", "zero"))
    mem, pqm, alt = (load(size, name) for name in ("memory", "parquet_memory", "alternatives"))
    found = {name: data for name, data in (("overhead", o), ("sweep", s), ("zero", z),
                                             ("memory", mem), ("parquet_memory", pqm),
                                             ("alternatives", alt)) if data}
    runs = ", ".join(f"`{size}_{name}.json` {data.get('meta', {}).get('started', '?')} "
                     f"(load average {data.get('meta', {}).get('loadavg_start', '?')})"
                     for name, data in found.items())
    out = [f"Result files (`bench/results/`) and when their run started: {runs}.", "",
           "| # | target | result | |", "|---|---|---|---|"]
    if o:
        out += [f"| 1 | wall within {T['overhead_wall'] - 1:.0%} of the reference ({o['n']:,} "
                f"prompts, {o['latency']} s answers, c = {o['concurrency']}) | ours / reference "
                f"**{f(o['wall_ratio'], '.3f')}** (median of {len(o['wall_ratios'])} rounds) | "
                f"{verdict(o['wall_ratio'] <= T['overhead_wall'])} |",
                f"| 1 | CPU within {T['overhead_cpu']}x | **{f(o['cpu_ratio'], '.3f')}** for the "
                f"whole process, the median of the per-round ratios "
                f"({span(o.get('cpu_ratios') or [o['cpu_ratio']], '.2f')}); the median CPU "
                f"times are {f(o['ours']['cpu_s'])} s (ours) and {f(o['reference']['cpu_s'])} s "
                f"| {verdict(o['cpu_ratio'] <= T['overhead_cpu'])} |"]
    if s:
        pts = sorted(s["points"], key=lambda p: p["concurrency"])
        top, rest = pts[-1], pts[:-1]
        errors = sum(p["ours"]["errors"] + p["reference"]["errors"] for p in pts)
        stuck = sum(p["ours"]["stuck"] + p["reference"]["stuck"] for p in pts)
        n_runs = sum(p["ours"]["runs"] + p["reference"]["runs"] for p in pts)
        share = top["ours"]["server_cpu_s"] / top["ours"]["wall_s"]
        out.append(
            f"| 2 | throughput tracks concurrency {pts[0]['concurrency']} → "
            f"{top['concurrency']}, no errors, no stuck streams | "
            f"{span([p['throughput_ratio'] for p in rest], '.2f')} of the reference up to "
            f"c = {rest[-1]['concurrency']}, {f(top['throughput_ratio'])} at "
            f"c = {top['concurrency']} (the fake Space takes {f(share)} of a core there, on "
            f"{cores(s)} shared cores); {errors} errors and {stuck} jobs left running in "
            f"{n_runs} runs | {verdict(errors == 0 and stuck == 0)} |")
        nets = [net_cpu_ms(p["ours"], p["n"], startup_cpu(startup, "ours")) for p in pts]
        refs = [net_cpu_ms(p["reference"], p["n"], startup_cpu(startup, "reference"))
                for p in pts]
        out.append(
            f"| 2 | client CPU per prompt does not grow with concurrency | ours "
            f"{f(nets[0], '.2f')} → {f(nets[-1], '.2f')} ms net from c = {pts[0]['concurrency']} "
            f"to {top['concurrency']} (the reference {f(refs[0], '.2f')} → {f(refs[-1], '.2f')}) "
            f"| {verdict(nets[-1] <= nets[0])} |")
    if z:
        out += [f"| 3 | zero latency: ≥ {T['zero_throughput']} of the reference's throughput | "
                f"**{f(z['throughput_ratio'])}** ({f(z['ours']['throughput'], ',.0f')} vs "
                f"{f(z['reference']['throughput'], ',.0f')} prompts/s) | "
                f"{verdict(z['throughput_ratio'] >= T['zero_throughput'])} |",
                f"| 3 | zero latency: CPU per prompt within {T['zero_cpu']}x | "
                f"**{f(z['cpu_ratio'])}** ({f(z['ours']['cpu_ms_per_prompt'], '.3f')} vs "
                f"{f(z['reference']['cpu_ms_per_prompt'], '.3f')} ms) | "
                f"{verdict(z['cpu_ratio'] <= T['zero_cpu'])} |"]
    if mem:
        ours = sorted((r for r in mem["runs"] if r["client"] == "ours"), key=lambda r: r["n"])
        ratio = mem["ours_ratio_largest_smallest"]
        out.append(f"| 4 | peak RSS flat: {ours[-1]['n']:,} rows within {T['memory']}x of "
                   f"{ours[0]['n']:,} (JSONL output) | **{f(ratio)}x** ("
                   + " → ".join(f(r["maxrss_mb"], ".0f") for r in ours)
                   + f" MB) | {verdict(ratio <= T['memory'])} |")
    if pqm:
        default = [r for r in pqm["runs"] if r.get("input_page_rows", 1024) == 1024]
        worst = max(r["ratio_to_first"] for r in default)
        out.append(f"| 4 | the same with Parquet output, its merge included | "
                   f"**{f(worst)}x** at worst ({len(default)} cases) | "
                   f"{verdict(worst <= pqm['target_ratio_max'])} |")
    if alt and "summary" in alt:
        a = alt["summary"]
        base = a.get("ours", {}).get("cpu_ms_per_prompt")
        parts = [f"{label} {f(a[key]['cpu_ms_per_prompt'])}"
                 + (f" ({f(a[key]['cpu_ms_per_prompt'] / base)}x ours)" if key != "ours" and base
                    else "")
                 for key, label in (("ours", "ours"), ("reference", "reference"),
                                    ("provider", "provider style"),
                                    ("gradio_client", "gradio_client")) if key in a]
        out.append(f"| 5 | against the alternatives | CPU ms per prompt on a real gradio "
                   f"{alt['gradio']} server: " + ", ".join(parts) + " | reported |")
    if o and s and z:
        out += ["", f"Medians of {o['ours']['runs']} (overhead) and "
                f"{s['points'][0]['ours']['runs']} (sweep), {z['ours']['runs']} (zero latency) "
                "runs, one run per memory size; ratios are medians of per-round ratios, so they "
                "need not equal the ratio of the medians."]
    return "\n".join(out) + "\n"


def render_zero_gap(size: str) -> str:
    """The ``zero_gap`` block: the zero-latency gap in figures, with the parts measured alone."""
    z, micro, prof = load(size, "zero"), load_file("micro_hot_path.json"), \
        load_file("profile_zero.json")
    if not z or not micro:
        return missing(f"{size}_zero.json", "micro_hot_path.json")
    gap_us = 1000.0 * (z["ours"]["cpu_ms_per_prompt"] - z["reference"]["cpu_ms_per_prompt"])
    rec, stream = micro["records_200"], micro["stream_200"]
    parts = (rec["ours"] - rec["reference"]) + (stream["ours+tracker"] - stream["reference"])
    out = [f"**Zero latency, what is left ({f(z['cpu_ratio'])}x CPU per prompt: "
           f"{f(z['ours']['cpu_ms_per_prompt'], '.3f')} against "
           f"{f(z['reference']['cpu_ms_per_prompt'], '.3f')} ms, {f(gap_us, '.0f')} µs a "
           "prompt).**"]
    if prof:
        ours_self = [r for r in prof["ours"]["self"] if "(pipeline/" in r["function"]]
        if ours_self:
            top = max(ours_self, key=lambda r: r["pct"])
            out.append(f"By self time no function of ours has more than {top['pct']} % of the "
                       f"samples (`{top['function'].split(' (')[0]}`; section 3's profile).")
    out.append(f"Of the pieces measured alone (micro-benchmarks, ~200-character prompts), our "
               f"record costs {f(rec['ours'], '.1f')} µs against {f(rec['reference'], '.1f')} µs "
               f"for the reference's, and our SSE decoding on the batch path "
               f"{f(stream['ours+tracker'], '.1f')} µs against {f(stream['reference'], '.1f')} "
               f"µs for its line splitting: {f(parts, '.0f')} µs of the {f(gap_us, '.0f')}.")
    return " ".join(out) + "\n"


def render_memory_left(size: str) -> str:
    """The ``memory_left`` block: how the JSONL-output peak grows with the rows."""
    mem = load(size, "memory")
    if not mem:
        return missing(f"{size}_memory.json")
    def series(client: str) -> str:
        runs = sorted((r for r in mem["runs"] if r["client"] == client), key=lambda r: r["n"])
        return " → ".join(f"{f(r['maxrss_mb'], '.0f')} MB ({r['n']:,} rows)" for r in runs)
    return (f"**Memory, what is left ({f(mem['ours_ratio_largest_smallest'])}x).** Ours: "
            f"{series('ours')}; the reference client: {series('reference')}.\n")


def render_alternatives(size: str) -> str:
    """The ``alternatives`` block: section 5 in a few sentences."""
    alt, z = load(size, "alternatives"), load(size, "zero")
    if not alt or "summary" not in alt or not z:
        return missing(f"{size}_alternatives.json", f"{size}_zero.json")
    a = alt["summary"]
    cpu = {k: v["cpu_ms_per_prompt"] for k, v in a.items()}
    wall = {k: v["ms_per_prompt"] for k, v in a.items()}
    out = [f"On a real gradio {alt['gradio']} server every client spends "
           f"{span(list(cpu.values()), '.1f')} ms of CPU per prompt, against "
           f"{f(z['ours']['cpu_ms_per_prompt'], '.2f')} ms (ours) at zero latency against the "
           "fake Space (section 5 has the numbers)."]
    if "reference" in cpu:
        out.append(f"Ours costs {f(cpu['ours'] / cpu['reference'])}x the reference's CPU per "
                   f"prompt at {f(wall['ours'] / wall['reference'])}x its wall time;")
    if "provider" in cpu:
        out.append(f"the provider style costs {f(cpu['provider'] / cpu['ours'])}x ours;")
    if "gradio_client" in cpu:
        out.append(f"`gradio_client`'s `Client.submit` costs "
                   f"{f(cpu['gradio_client'] / cpu['ours'], '.1f')}x ours and takes "
                   f"{f(wall['gradio_client'] / wall['ours'], '.1f')}x the wall time.")
    names = {"ours": "qwen-batch run", "reference": "the reference client",
             "provider": "the provider style", "gradio_client": "`gradio_client`"}
    for client, runs in alt.get("runs", {}).items():
        bad = [r for r in runs if not r.get("ok")]
        if not bad:
            continue
        what = [("timed out" if r.get("timed_out") else
                 f"wrote {r.get('rows_out')} of {alt['n']} rows"
                 + (f" (`{r['stderr_tail'].strip().splitlines()[-1]}`)"
                    if r.get("stderr_tail", "").strip() else "")) for r in bad]
        out.append(f"{names.get(client, client)} failed {len(bad)} of its {len(runs)} runs "
                   f"(its figures are the clean runs'): {'; '.join(what)}.")
    return " ".join(out) + "\n"


FIRST_RUN = "first_run"  # bench/results/first_run/: the first full run's files, kept as they were


def own_pct(prof: dict[str, Any], prefix: str | tuple[str, ...]) -> str:
    """The own-time share of the functions of ours named ``prefix...``, with their names."""
    rows = [r for r in prof["ours"]["ours_own"] if r["function"].startswith(prefix)]
    names = (prefix,) if isinstance(prefix, str) else prefix
    return " + ".join(f"`{r['function'].split(' (')[0]}` {r['pct']} %" for r in rows) or \
        " and ".join(f"`{name.strip()}`" for name in names) + " under the table's cut"


def callee_pct(prof: dict[str, Any], caller: str, prefix: str) -> str:
    """The shares of ``caller``'s callees named ``prefix...``, with their names."""
    rows = [c for r in prof["ours"]["ours_own"] if r["function"].startswith(caller)
            for c in r.get("callees", []) if c["function"].startswith(prefix)]
    return " + ".join(f"`{c['function'].split(' (')[0]}` {c['pct']} %" for c in rows) or \
        f"no `{prefix}` among its listed callees"


def shares(prof: dict[str, Any], caller: str | None, prefix: str | tuple[str, ...]) -> float:
    """The summed share behind :func:`own_pct` (``caller`` None) or :func:`callee_pct`."""
    if caller is None:
        return float(sum(r["pct"] for r in prof["ours"]["ours_own"]
                         if r["function"].startswith(prefix)))
    return float(sum(c["pct"] for r in prof["ours"]["ours_own"] if r["function"].startswith(caller)
               for c in r.get("callees", []) if c["function"].startswith(prefix)))


def trend(before: float, after: float) -> str:
    return "lower now" if after < before else "**higher now**" if after > before else "unchanged"


def probe_mb(mem: dict[str, Any], stage: str) -> str:
    n = max(p["n"] for p in mem["probes"])
    hit = [p for p in mem["probes"] if p["stage"] == stage and p["n"] == n and not p.get("patched")]
    return f(hit[0]["maxrss_mb"], ".0f") if hit else "–"


def loop_turns(wait: dict[str, float]) -> str:
    """``asyncio.wait`` against ``queue.get`` per window, from the micro-benchmark's keys."""
    by_window: dict[str, dict[str, float]] = {}
    for key, value in wait.items():
        match = re.fullmatch(r"(\S+).*, window (\d+)", key)
        if match:
            by_window.setdefault(match.group(2), {})[match.group(1)] = value
    return ", ".join(f"`asyncio.wait` {f(w.get('asyncio.wait'), '.1f')} µs against `queue.get` "
                     f"{f(w.get('queue.get'), '.1f')} µs at window {window}"
                     for window, w in by_window.items())


def render_changes(size: str) -> str:
    """The ``changes`` block: the first run's files against the current ones, change by change."""
    names = ("full_startup", "profile_c512", "profile_zero", "full_memory")
    first = {name: load_file(f"{FIRST_RUN}/{name}.json") for name in names}
    current = {"full_startup": load(size, "startup"), "profile_c512": load_file("profile_c512.json"),
               "profile_zero": load_file("profile_zero.json"), "full_memory": load(size, "memory")}
    micro = load_file("micro_hot_path.json")
    old = {k: v for k, v in first.items() if v}
    now = {k: v for k, v in current.items() if v}
    if len(old) < len(names) or len(now) < len(names) or not micro:
        return missing(f"{FIRST_RUN}/*.json", "the current startup, memory, profile files")
    meta = old["full_startup"]["meta"]
    before, after = old["full_startup"]["ours"], now["full_startup"]["ours"]
    stream = micro["stream_200"]
    read_stream = "GradioQueueClient._read_stream"
    batch_core = ("run_batch ", "_Batch.")

    def moved(profile: str, caller: str | None, prefix: str | tuple[str, ...]) -> str:
        return trend(shares(old[profile], caller, prefix), shares(now[profile], caller, prefix))

    out = [f"Before → now, from the first run's files (`bench/results/{FIRST_RUN}/`, started "
           f"{meta.get('started')}, load average {meta.get('loadavg_start')}) and the current "
           "ones; profile shares are % of py-spy samples:", "",
           f"- start-up of ours: {f(before['wall_s'])} s wall, {f(before['cpu_s'])} s CPU, "
           f"{f(before['maxrss_mb'], '.0f')} MB → {f(after['wall_s'])} s, {f(after['cpu_s'])} s, "
           f"{f(after['maxrss_mb'], '.0f')} MB;",
           f"- stream handling per prompt (micro-benchmark, current file, ~200-character "
           f"prompts): following the text {f(stream['ours'], '.1f')} µs, the batch path "
           f"{f(stream['ours+tracker'], '.1f')} µs;",
           f"- timeouts in `_read_stream` at concurrency 512: "
           f"{callee_pct(old['profile_c512'], read_stream, 'Timeout.')} → "
           f"{callee_pct(now['profile_c512'], read_stream, 'Timeout.')} "
           f"({moved('profile_c512', read_stream, 'Timeout.')});",
           f"- the batch core at concurrency 512 (`run_batch`, and its worker pool `_Batch`): "
           f"{own_pct(old['profile_c512'], batch_core)} → {own_pct(now['profile_c512'], batch_core)} "
           f"({moved('profile_c512', None, batch_core)}); "
           f"its loop turn (micro-benchmark, "
           f"current file): {loop_turns(micro['wait'])};",
           f"- the SSE decoder at zero latency: {own_pct(old['profile_zero'], 'SSEDecoder')} → "
           f"{own_pct(now['profile_zero'], 'SSEDecoder')} "
           f"({moved('profile_zero', None, 'SSEDecoder')});",
           f"- `mem_probe` at the largest input, ru_maxrss: the `read` stage "
           f"{probe_mb(old['full_memory'], 'read')} → {probe_mb(now['full_memory'], 'read')} MB, "
           f"the `done` stage {probe_mb(old['full_memory'], 'done')} → "
           f"{probe_mb(now['full_memory'], 'done')} MB."]
    return "\n".join(out) + "\n"


# ------------------------------------------------------------------------------ docs/ray.md
RAY_RESULTS = "ray_vs_local.json"
NO_COMMIT = "(the file records no commit: it may predate the latest changes to either engine)"


def ray_rows() -> tuple[dict[str, Any], list[dict[str, Any]]] | None:
    data = load_file(RAY_RESULTS)
    return (data["meta"], data["results"]) if data else None


def render_ray_vs_local(size: str) -> str:
    """The ``ray_vs_local`` block of docs/ray.md: how the run was made, and its table."""
    got = ray_rows()
    if got is None:
        return missing(RAY_RESULTS)
    meta, rows = got
    actors = sorted({r["actors"] for r in rows if r["actors"]})
    rows_opt = " ".join(str(n) for n in sorted({r["rows"] for r in rows}))
    inflight_opt = " ".join(str(n) for n in sorted({r["inflight"] for r in rows}))
    commit = meta.get("commit")
    out = [f"`bench/results/{RAY_RESULTS}`: `bench/ray_vs_local.py --rows {rows_opt} "
           f"--inflight {inflight_opt}`, run {meta.get('when', '?')} "
           f"{'at commit `' + commit + '`' if commit else NO_COMMIT} on "
           f"{meta.get('machine', '?')}, Python {meta.get('python', '?')}, Ray "
           f"{meta.get('ray', '?')}; the fake Space answering in {meta.get('latency_s')} s; the "
           f"same global in-flight bound on both engines, Ray with "
           f"{', '.join(str(a) for a in actors)} actors. *Ideal* is in-flight / latency, what "
           "any engine reaches once started.", "",
           "| rows | in flight | engine | wall | first record | rows/s (whole run) | "
           "rows/s (steady) | ideal rows/s | peak memory (process tree) |",
           "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    short = False
    for r in rows:
        steady = r.get("rows_per_s_steady")
        short = short or steady is None
        ideal = r["inflight"] / meta["latency_s"] if meta.get("latency_s") else None
        out.append(f"| {r['rows']:,} | {r['inflight']} | {r['engine']} | {f(r['wall_s'], '.1f')} s "
                   f"| {f(r['first_row_s'], '.1f')} s | {f(r['rows_per_s'], '.1f')} | "
                   f"{f(steady, '.1f') if steady is not None else '– ¹'} | {f(ideal, '.0f')} | "
                   f"{r['peak_rss_mib']:,} MiB |")
    if short:
        out += ["", "¹ Too short a run to say (the records came in one burst)."]
    return "\n".join(out) + "\n"


def render_ray_costs(size: str) -> str:
    """The ``ray_costs`` block: the fixed cost and the throughput, from the same files."""
    got, sweep, startup = ray_rows(), load(size, "sweep"), load(size, "startup")
    if got is None:
        return missing(RAY_RESULTS)
    _, rows = got
    local = [r for r in rows if r["engine"] == "local"]
    ray = [r for r in rows if r["engine"] == "ray"]
    out = [f"* **Fixed cost.** The first record came after "
           f"{span([r['first_row_s'] for r in ray], '.1f')} s on Ray against "
           f"{span([r['first_row_s'] for r in local], '.1f')} s locally, and the process tree "
           f"peaked at {span([r['peak_rss_mib'] for r in ray], ',.0f')} MiB against "
           f"{span([r['peak_rss_mib'] for r in local], ',.0f')} MiB."]
    pairs = [(lo, ra) for lo in local for ra in ray
             if (lo["rows"], lo["inflight"]) == (ra["rows"], ra["inflight"])
             and lo["rows"] == max(r["rows"] for r in rows)]
    if pairs:
        out.append("* **Throughput.** Over the longest runs, rows/s from the first record to "
                   "the last (steady) and over the whole run: "
                   + "; ".join(f"at {lo['inflight']} in flight, Ray {f(ra['rows_per_s_steady'], '.1f')} "
                               f"and {f(ra['rows_per_s'], '.1f')}, local "
                               f"{f(lo['rows_per_s_steady'], '.1f')} and {f(lo['rows_per_s'], '.1f')}"
                               for lo, ra in pairs) + ".")
    if sweep:
        top = max(sweep["points"], key=lambda p: p["ours"]["throughput"])
        net = net_cpu_ms(top["ours"], top["n"], startup_cpu(startup, "ours"))
        out.append(f"  A single local process is far from its own limit: in the concurrency "
                   f"sweep of docs/benchmarks.md it wrote {f(top['ours']['throughput'], ',.0f')} "
                   f"rows/s with {top['concurrency']} requests in flight, at "
                   f"{f(net, '.2f')} ms of CPU per row (net of start-up), the fake Space on the "
                   f"same {cores(sweep)} cores.")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------- the docs
Renderer = Callable[[str], str]
RAY_CLUSTER_RESULTS = "ray_cluster.json"


def render_ray_cluster(size: str) -> str:
    """The ``ray_cluster`` block: a run on a local two-node cluster (bench/ray_cluster.py)."""
    path = RESULTS_DIR / RAY_CLUSTER_RESULTS
    if not path.exists():
        return missing(RAY_CLUSTER_RESULTS)
    return render_cluster_results(json.loads(path.read_text(encoding="utf-8"))) + "\n"


DOCS: dict[Path, dict[str, Renderer]] = {
    DOC: {"summary": render_summary, "changes": render_changes, "zero_gap": render_zero_gap,
          "memory_left": render_memory_left, "alternatives": render_alternatives,
          "results": render_results},
    RAY_DOC: {"ray_vs_local": render_ray_vs_local, "ray_costs": render_ray_costs,
              "ray_cluster": render_ray_cluster},
}


def regenerate(text: str, renderers: dict[str, Renderer], size: str) -> str:
    """``text`` with every generated block rewritten by its renderer."""
    seen: list[str] = []

    def fill(match: re.Match[str]) -> str:
        name = match.group("name")
        if name not in renderers:
            raise DocError(f"no renderer for the block {name!r}")
        if name in seen:
            raise DocError(f"the block {name!r} appears twice")
        seen.append(name)
        return (f"<!-- BEGIN GENERATED: {name} -->\n{renderers[name](size)}"
                f"<!-- END GENERATED: {name} -->\n")

    out = BLOCK_RE.sub(fill, text)
    stray = len(MARKER_RE.findall(text)) - 2 * len(seen)
    if stray:
        raise DocError(f"{stray} marker(s) not in a well-formed block")
    if set(renderers) - set(seen):
        raise DocError(f"blocks missing from the doc: {sorted(set(renderers) - set(seen))}")
    return out


# A figure with a unit, single or a range: "2.3 %", "325 µs", "1.80 s", "10-20 s", "1.28x";
# and any bold text with a digit in it.
FIGURE_RE = re.compile(
    r"(?<![\w.])[~±]?\d[\d,]*(?:\.\d+)?(?:\s?[-–]\s?\d[\d,]*(?:\.\d+)?)?"
    r"(?:\s?(?:%|ms|µs|us|s|sec|min|[KkMG]i?B|rows/s|prompts/s|×)(?![\w/])|x(?![\w-]))")
BOLD_FIGURE_RE = re.compile(r"\*\*[^*\n]*\d[^*\n]*\*\*")  # "**1.187**", "**0.77**"
FENCE_RE = re.compile(r"^```.*?^```[^\n]*$", re.S | re.M)
CODE_SPAN_RE = re.compile(r"`[^`\n]+`")
# Figures allowed in the prose because they are settings in the code, not measurements;
# tests/test_bench_docs.py checks each against the constant it names.
ALLOWED: dict[str, dict[str, str]] = {
    "docs/benchmarks.md": {"1 MiB": "pipeline.readers_arrow._PARQUET_BUFFER",
                           "128 KiB": "pipeline.alloc.MMAP_THRESHOLD"},
    "docs/ray.md": {"0.5 s": "pipeline.engines.actor.ActorConfig.flush_interval",
                    "5 s": "pipeline.engines.distributed.WAIT_NOTE_EVERY",
                    "120 s": "pipeline.settings.EngineSettings.start_timeout",
                    "10 s": "pipeline.engines.distributed.DEADLINE_SLACK",
                    "0.1 s": "pipeline.engines.stream.DRIVER_POLL_SECONDS"},
}


def prose(text: str) -> str:
    """``text`` without its generated blocks, code fences and inline code."""
    text = BLOCK_RE.sub("", text)
    return CODE_SPAN_RE.sub("", FENCE_RE.sub("", text))


def typed_figures(text: str, allowed: dict[str, str] | None = None) -> list[str]:
    """The figures with a unit in ``text``'s prose (outside generated blocks and code)."""
    text = prose(text)
    found = [m.group(0) for m in FIGURE_RE.finditer(text) if m.group(0) not in (allowed or {})]
    return found + BOLD_FIGURE_RE.findall(text)


def generated_docs(size: str = "full") -> dict[Path, str]:
    """Every doc as ``bench/report.py`` would write it (nothing is written)."""
    out: dict[Path, str] = {}
    for path, renderers in DOCS.items():
        try:
            out[path] = regenerate(path.read_text(encoding="utf-8"), renderers, size)
        except DocError as exc:
            raise DocError(f"{path.relative_to(REPO)}: {exc}") from None
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="full")
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if a doc differs from what its results give")
    p.add_argument("--no-plot", action="store_true", help="leave the PNG as it is")
    args = p.parse_args(argv)
    docs = generated_docs(args.size)
    stale = [path for path, text in docs.items() if path.read_text(encoding="utf-8") != text]
    if args.check:
        for path in stale:
            print(f"{path.relative_to(REPO)} differs from its results: run bench/report.py")
        typed = {path: typed_figures(text, ALLOWED.get(str(path.relative_to(REPO))))
                 for path, text in docs.items()}
        for path, figures in typed.items():
            if figures:
                print(f"{path.relative_to(REPO)}: figures typed outside the generated blocks: "
                      f"{figures}")
        return 1 if stale or any(typed.values()) else 0
    for path in stale:
        path.write_text(docs[path], encoding="utf-8")
        print(f"wrote {path.relative_to(REPO)}")
    if not args.no_plot:
        why = make_plot(args.size)
        print(f"plot skipped: {why}" if why else f"wrote {PNG.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
