#!/usr/bin/env python3
"""Regenerate the results part of docs/benchmarks.md (and the plot) from bench/results/*.json.

    .venv/bin/python bench/report.py --size full

Only the text between ``<!-- BEGIN GENERATED -->`` and ``<!-- END GENERATED -->`` is
replaced; the hand-written analysis around it stays. The plot needs matplotlib in some
interpreter: this one, ``$BENCH_PLOT_PYTHON``, or a gradio venv
(``$QWEN_BATCH_GRADIO4_PYTHON`` / ``$QWEN_BATCH_GRADIO6_PYTHON``); without one the
plot is skipped (and the doc says so).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import REPO, RESULTS_DIR

DOC = REPO / "docs" / "benchmarks.md"
PNG = REPO / "docs" / "benchmarks_throughput.png"
BEGIN, END = "<!-- BEGIN GENERATED -->", "<!-- END GENERATED -->"


def load(size: str, name: str) -> dict[str, Any] | None:
    path = RESULTS_DIR / f"{size}_{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def f(x: Any, spec: str = ".2f") -> str:
    if x is None or (isinstance(x, float) and x != x):
        return "–"
    return format(x, spec)


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**not met**"


def plot_python() -> str | None:
    candidates = [sys.executable, os.environ.get("BENCH_PLOT_PYTHON", ""),
                  os.environ.get("QWEN_BATCH_GRADIO4_PYTHON", ""),
                  os.environ.get("QWEN_BATCH_GRADIO6_PYTHON", "")]
    for py in candidates:
        if py and Path(py).exists() and subprocess.run(
                [py, "-c", "import matplotlib"], capture_output=True).returncode == 0:
            return py
    return None


def make_plot(size: str) -> str:
    sweep = RESULTS_DIR / f"{size}_sweep.json"
    if not sweep.exists():
        return "(no sweep results: no plot)"
    py = plot_python()
    if py is None:
        return ("(plot skipped: no interpreter with matplotlib; set BENCH_PLOT_PYTHON)")
    proc = subprocess.run([py, str(Path(__file__).with_name("plot.py")), str(sweep), str(PNG),
                           "--startup", str(RESULTS_DIR / f"{size}_startup.json")],
                          capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        return f"(plot failed: {proc.stderr[-300:]})"
    return f"![throughput and CPU per prompt against concurrency]({PNG.name})"


def startup_cpu(startup: dict[str, Any] | None, who: str) -> float:
    return float(startup.get(who, {}).get("cpu_s", 0.0)) if startup else 0.0


def net_cpu_ms(agg: dict[str, Any], n: int, start: float) -> float:
    return 1000.0 * (agg["cpu_s"] - start) / n


SECTIONS = ("startup", "overhead", "sweep", "zero", "memory", "parquet_memory", "alternatives")


def render(size: str) -> str:
    found = {name: load(size, name) for name in SECTIONS}
    found = {k: v for k, v in found.items() if v}
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
                f"| wall (median of per-round ratios) | {f(o['wall_ratio'], '.3f')} | ≤ 1.05 | "
                f"{verdict(o['wall_ratio'] <= 1.05)} |",
                f"| CPU, whole process | {f(o['cpu_ratio'], '.3f')} | ≤ 1.2 | "
                f"{verdict(o['cpu_ratio'] <= 1.2)} |",
                f"| CPU, net of start-up | {f(net_ratio, '.3f')} | (≤ 1.2) | |",
                f"| per-round wall ratios | {o['wall_ratios']} | | |", ""]

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
        out += ["", make_plot(size), ""]
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
                f"| throughput | {f(z['throughput_ratio'], '.3f')} | ≥ 0.8 | "
                f"{verdict(z['throughput_ratio'] >= 0.8)} |",
                f"| CPU per prompt | {f(z['cpu_ratio'], '.3f')} | ≤ 1.2 | "
                f"{verdict(z['cpu_ratio'] <= 1.2)} |",
                f"| CPU per prompt, net of start-up | {f(o_net / r_net, '.3f')} | (≤ 1.2) | |", ""]
        prof_path = RESULTS_DIR / "profile_zero.json"
        if prof_path.exists():
            prof = json.loads(prof_path.read_text())
            out += profile_section(prof)

    micro_path = RESULTS_DIR / "micro_hot_path.json"
    if micro_path.exists():
        micro = json.loads(micro_path.read_text())
        out += ["#### Micro-benchmarks of the per-prompt work (`bench/micro_hot_path.py`)", "",
                "One process, no network, best of 7 repeats (so background load mostly drops "
                "out): the SSE bytes of one answer as the fake Space sends them (10 chunks, one "
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
        out += ["", f"Ours, largest / smallest: **{f(ratio, '.2f')}** (target ≤ 1.25: "
                f"{verdict(ratio <= 1.25)}).", "",
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
                "shares the 2 cores and is the bottleneck, so wall times mostly measure how "
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
    return "\n".join(out)


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


SKELETON = f"""# Benchmarks

How fast `qwen-batch run` is next to a minimal hand-written client, how it scales with
concurrency, what it costs per prompt, what memory it needs, and how it compares with the
alternatives. The suite is in `bench/` (see `bench/README.md`); the tables below are
regenerated by `bench/run_all.py --size full --write-docs`.

{BEGIN}
{END}
"""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--size", default="full")
    args = p.parse_args(argv)
    text = DOC.read_text(encoding="utf-8") if DOC.exists() else SKELETON
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + "\n\n" + BEGIN + "\n" + END + "\n"
    head, rest = text.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(head + BEGIN + "\n" + render(args.size) + "\n" + END + tail, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
