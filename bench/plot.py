#!/usr/bin/env python3
"""Plot throughput (and CPU per prompt) against concurrency from a sweep result.

    python bench/plot.py bench/results/full_sweep.json docs/benchmarks_throughput.png \
        [--startup bench/results/full_startup.json]

Needs only matplotlib (any interpreter that has it: ``report.py`` looks for one, so the
project's venv need not carry matplotlib and numpy, which would change what pyarrow
imports at start-up and so what is measured).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("sweep_json", type=Path)
    p.add_argument("png", type=Path)
    p.add_argument("--startup", type=Path, default=None)
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = json.loads(args.sweep_json.read_text())
    startup = json.loads(args.startup.read_text()) if args.startup and args.startup.exists() else {}
    points = data["points"]
    cs = [pt["concurrency"] for pt in points]
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(11, 4.2))
    ax.plot(cs, [pt["ideal_throughput"] for pt in points], "k:", label="ideal (c / latency)")
    for who, style in (("ours", "o-"), ("reference", "s--")):
        ax.plot(cs, [pt[who]["throughput"] for pt in points], style,
                label="qwen-batch run" if who == "ours" else "reference client")
        start_cpu = startup.get(who, {}).get("cpu_s", 0.0)
        net = [1000 * (pt[who]["cpu_s"] - start_cpu) / pt["n"] for pt in points]
        ax2.plot(cs, net, style, label="qwen-batch run" if who == "ours" else "reference client")
    for a in (ax, ax2):
        a.set_xscale("log", base=2)
        a.set_xticks(cs)
        a.set_xticklabels([str(c) for c in cs])
        a.set_xlabel("concurrency")
        a.grid(True, alpha=0.3)
        a.legend()
    ax.set_yscale("log", base=2)
    ticks = [25, 50, 100, 200, 400, 800, 1600]
    ax.set_yticks(ticks)
    ax.set_yticklabels([str(t) for t in ticks])
    ax.set_ylabel("prompts / s (process wall time)")
    ax.set_title(f"Throughput, fake Space {data['latency']} s / {data['chunks']} chunks")
    ax2.set_ylabel("client CPU ms / prompt (start-up excluded)")
    ax2.set_ylim(bottom=0)
    ax2.set_title("Client CPU per prompt")
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=110)
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
