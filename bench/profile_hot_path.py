#!/usr/bin/env python3
"""Profile ``qwen-batch run`` on its hot path with py-spy (zero-latency fake Space).

    python bench/profile_hot_path.py --n 10000 --concurrency 64

Starts the fake Space (latency 0, 10 chunks), runs our CLI under ``py-spy record
--format raw`` (sampling, non-idle stacks only, so the event loop's waits do not
count), and summarises the stacks three ways:

* **self**: the innermost frame of each sample, any module (where the CPU is);
* **ours, own**: each sample charged to the innermost frame of *our* package
  (``pipeline/``), i.e. that function plus the library code it calls directly;
  samples with no frame of ours (the event loop, aiohttp's protocol callbacks) are
  "outside our code";
* **ours, inclusive**: samples with the function anywhere on the stack.

The reference client is profiled the same way, for comparison. Writes
``bench/results/profile_<tag>.json`` and ``profile_<tag>.txt`` (tag: ``zero``, or ``c<N>`` with
``--latency``; the raw collapsed stacks stay in ``profile_<tag>_<client>.raw.txt``).
"""

from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (
    REPO,
    RESULTS_DIR,
    FakeSpaceProc,
    child_env,
    count_lines,
    log,
    make_jsonl,
    ours_cmd,
    python_exe,
    reference_cmd,
    write_json,
)

_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
OUR_DIR = str(REPO / "pipeline") + "/"


def py_spy() -> str | None:
    """The py-spy executable (beside the venv's python first), or None."""
    beside = Path(python_exe()).with_name("py-spy")
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


def parse_frame(frame: str) -> tuple[str, str]:
    match = _FRAME.match(frame.strip())
    if not match:
        return frame.strip(), ""
    return match.group("func"), match.group("file")


def short(file: str) -> str:
    """A readable file name: package-relative for libraries, repo-relative for ours."""
    for marker in ("site-packages/", "/lib/python3."):
        if marker in file:
            tail = file.split(marker, 1)[1]
            return tail.split("/", 1)[1] if marker.startswith("/lib") and "/" in tail else tail
    if file.startswith(str(REPO) + "/"):
        return file[len(str(REPO)) + 1:]
    return file


def _name(frame: tuple[str, str]) -> str:
    return f"{frame[0]} ({short(frame[1])})"


LOOP_IDLE = "(event loop itself: select, scheduling)"
CALLBACKS = "(loop callbacks outside our code: transports, aiohttp protocol)"


def summarise(raw_path: Path, top: int = 15) -> dict[str, Any]:
    """Self / ours-own / ours-inclusive tables from py-spy's collapsed stacks."""
    self_counts: collections.Counter[str] = collections.Counter()
    own: collections.Counter[str] = collections.Counter()
    callees: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    inclusive: collections.Counter[str] = collections.Counter()
    by_area: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw_path.read_text(encoding="utf-8", errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [parse_frame(f) for f in stack.split(";")]
        frames = [f for f in frames if f[1]]  # drop the thread/process labels
        if not frames:
            continue
        total += count
        self_counts[_name(frames[-1])] += count
        by_area[_area(frames[-1][1])] += count
        for name in {_name(f) for f in frames if f[1].startswith(OUR_DIR)}:
            inclusive[name] += count
        # Own time: what runs inside one event-loop callback (a task step or a
        # protocol callback), charged to its innermost frame of ours.
        runs = [i for i, f in enumerate(frames) if f[0] == "Handle._run"]
        if runs:
            inner = frames[runs[-1] + 1:]
        elif any(f[0] in ("BaseEventLoop._run_once", "BaseEventLoop.run_forever") for f in frames):
            inner = []
        else:
            inner = frames  # before/after the loop: imports, reading, writing the summary
        if not inner:
            own[LOOP_IDLE] += count
            continue
        ours = [i for i, f in enumerate(inner) if f[1].startswith(OUR_DIR)]
        if not ours:
            own[CALLBACKS] += count
            callees[CALLBACKS][_name(inner[0])] += count
            continue
        name = _name(inner[ours[-1]])
        own[name] += count
        below = inner[ours[-1] + 1:]
        callees[name][_name(below[0]) if below else "(itself)"] += count

    def table(counter: collections.Counter[str], n: int = top) -> list[dict[str, Any]]:
        return [{"function": name, "samples": k, "pct": round(100.0 * k / total, 1)}
                for name, k in counter.most_common(n)]

    own_table = table(own)
    for row in own_table[:8]:
        row["callees"] = table(callees[row["function"]], 5)
    return {"total_samples": total, "ours_own": own_table, "self": table(self_counts),
            "ours_inclusive": table(inclusive), "by_area": table(by_area)}


def _area(file: str) -> str:
    if file.startswith(OUR_DIR):
        return "pipeline (ours)"
    s = short(file)
    if s.startswith(("aiohttp/", "multidict/", "yarl/")):
        return "aiohttp"
    if s.startswith("asyncio/"):
        return "asyncio"
    if s.startswith(("json/",)):
        return "json"
    if s.startswith(("pyarrow/",)):
        return "pyarrow"
    if s.startswith("<frozen importlib"):
        return "imports"
    head = s.split("/", 1)[0]
    return f"stdlib/other: {head}"


def render(summary: dict[str, Any], meta: dict[str, Any]) -> str:
    who = "`qwen-batch run`" if meta.get("client", "ours") == "ours" else "the reference client"
    lines = [f"py-spy profile of {who} at latency {meta.get('latency', 0.0)} s: {meta['n']} prompts, "
             f"concurrency {meta['concurrency']}, {summary['total_samples']} non-idle samples "
             f"at {meta['rate']} Hz", ""]
    for key, title in (("ours_own", "Our functions, own time (innermost pipeline/ frame)"),
                       ("self", "Self time, any module (innermost frame)"),
                       ("ours_inclusive", "Our functions, inclusive"),
                       ("by_area", "By area (innermost frame)")):
        lines.append(f"{title}:")
        for row in summary[key]:
            lines.append(f"  {row['pct']:5.1f}%  {row['function']}")
            for sub in row.get("callees", []):
                lines.append(f"           {sub['pct']:5.1f}%  -> {sub['function']}")
        lines.append("")
    return "\n".join(lines)


def profile(client: str, n: int, concurrency: int, rate: int, timeout: float,
            spy: str, latency: float = 0.0, tag: str = "zero") -> dict[str, Any] | None:
    """Record one client's run under py-spy; the summary, or None if it failed."""
    work = RESULTS_DIR / "tmp" / "profile"
    work.mkdir(parents=True, exist_ok=True)
    inp = make_jsonl(RESULTS_DIR / "inputs" / f"prompts-{n}.jsonl", n)
    raw = RESULTS_DIR / f"profile_{tag}_{client}.raw.txt"
    out = work / f"{client}.jsonl"
    with FakeSpaceProc(latency, 10) as space:
        client_cmd = (ours_cmd(inp, out, space.url, concurrency) if client == "ours"
                      else reference_cmd(inp, out, space.url, concurrency))
        cmd = [spy, "record", "--rate", str(rate), "--format", "raw", "--function",
               "--full-filenames", "-o", str(raw), "--", *client_cmd]
        log(f"profiling {client} over {n} prompts with py-spy")
        proc = subprocess.run(cmd, env=child_env(), cwd=str(REPO), timeout=timeout,
                              capture_output=True, text=True)
    rows = count_lines(out)
    out.unlink(missing_ok=True)
    if proc.returncode != 0 or not raw.exists() or rows != n:
        log(f"py-spy run of {client} failed ({proc.returncode}, {rows}/{n} rows): "
            f"{proc.stderr[-1500:]}")
        return None
    return summarise(raw)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--rate", type=int, default=250, help="samples per second")
    p.add_argument("--timeout", type=float, default=300)
    p.add_argument("--clients", default="ours,reference")
    p.add_argument("--latency", type=float, default=0.0, help="fake Space seconds per answer")
    p.add_argument("--tag", default=None, help="output name: profile_<tag>.json (default: zero, "
                   "or c<concurrency> with a latency)")
    args = p.parse_args(argv)
    tag = args.tag or ("zero" if args.latency == 0 else f"c{args.concurrency}")
    spy = py_spy()
    if spy is None:
        log("py-spy not found: pip install py-spy (into the venv); profile skipped")
        return 2
    meta = {"n": args.n, "concurrency": args.concurrency, "rate": args.rate,
            "latency": args.latency}
    result: dict[str, Any] = {"meta": meta}
    texts = []
    for client in args.clients.split(","):
        summary = profile(client, args.n, args.concurrency, args.rate, args.timeout, spy,
                          args.latency, tag)
        if summary is None:
            return 1
        result[client] = summary
        texts.append(render(summary, {**meta, "client": client}))
    write_json(f"profile_{tag}.json", result)
    text = "\n".join(texts)
    (RESULTS_DIR / f"profile_{tag}.txt").write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
