"""Local engine vs Ray engine: fixed start-up cost against throughput, on this machine.

    .venv/bin/python bench/ray_vs_local.py                # the default grid, ~5 minutes
    .venv/bin/python bench/ray_vs_local.py --rows 200 --latency 0.5 --inflight 16

Each case runs ``qwen-batch run`` as a child process against the fake Space (another
child process on 127.0.0.1), once with ``--engine local --concurrency N`` and once with
``--engine ray --actors A --per-actor-concurrency N/A`` (the same global in-flight bound),
and measures from outside the process:

* ``wall_s``: the whole command, start-up and shutdown included;
* ``first_row_s``: until the first record is in the output (the start-up cost);
* ``rows_per_s_steady``: rows / (time of the last record - time of the first record);
* ``peak_rss_mib``: peak of the summed RSS of the process tree (for Ray: the driver, GCS,
  raylet, workers...), sampled every 0.2 s.

The results go to ``bench/results/ray_vs_local.json`` (``--out``) and a table on stdout.
Needs ``pip install -e '.[ray]'``. Every run is killed past ``--timeout`` seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
READY = "fake Space listening on "
PAGE = os.sysconf("SC_PAGE_SIZE")


def python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items()
           if not k.startswith(("QWEN_BATCH_", "RAY_")) and "proxy" not in k.lower()}
    out["NO_PROXY"] = out["no_proxy"] = "127.0.0.1,localhost"
    return out


def start_space(latency: float, chunks: int) -> tuple[subprocess.Popen[bytes], str]:
    proc = subprocess.Popen([python(), "-m", "pipeline.fake_space", "--port", "0",
                             "--latency", str(latency), "--chunks", str(chunks),
                             "--no-track-prompts"], cwd=REPO, env=env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    for raw in proc.stderr:
        line = raw.decode(errors="replace")
        if line.startswith(READY):
            threading.Thread(target=proc.stderr.read, daemon=True).start()  # keep draining
            return proc, line[len(READY):].strip()
    raise RuntimeError("the fake Space did not start")


def tree_rss(root: int) -> int:
    """Summed RSS (bytes) of ``root`` and all its descendants."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as handle:
                fields = handle.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(entry), int(fields[1])
        children.setdefault(ppid, []).append(pid)
        rss[pid] = int(fields[21]) * PAGE
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack.extend(children.get(pid, ()))
    return total


def write_input(path: Path, rows: int) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(rows):
            handle.write(json.dumps({"id": f"r{i:06d}", "prompt": f"Question {i}: why?"}) + "\n")


def run_case(engine: str, url: str, rows: int, inflight: int, actors: int,
             timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="qwen-batch-bench-") as tmp:
        source, out = Path(tmp) / "in.jsonl", Path(tmp) / "out.jsonl"
        write_input(source, rows)
        cmd = [python(), "-m", "pipeline", "run", str(source), "-o", str(out), "--url", url,
               "--no-progress", "--fixed-concurrency", "--summary", str(Path(tmp) / "s.json")]
        if engine == "ray":
            cmd += ["--engine", "ray", "--actors", str(actors),
                    "--per-actor-concurrency", str(max(1, inflight // actors))]
        else:
            cmd += ["--concurrency", str(inflight)]
        started = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env(), stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                start_new_session=True)
        errors: list[bytes] = []
        drain = threading.Thread(target=lambda: errors.append(proc.stderr.read()  # type: ignore[union-attr]
                                                              ), daemon=True)
        drain.start()
        peak, first, last, seen = 0, None, None, 0
        while proc.poll() is None:
            now = time.monotonic()
            if now - started > timeout:
                os.killpg(proc.pid, 9)
                proc.wait()
                raise RuntimeError(f"{engine} run past {timeout} s")
            peak = max(peak, tree_rss(proc.pid))
            lines = out.read_bytes().count(b"\n") if out.exists() else 0
            if lines and first is None:
                first = now - started
            if lines != seen:
                seen, last = lines, now - started
            time.sleep(0.2)
        wall = time.monotonic() - started
        drain.join(5)
        lines = out.read_bytes().count(b"\n") if out.exists() else 0
        if proc.returncode != 0 or lines != rows:
            raise RuntimeError(f"{engine} run failed ({proc.returncode}, {lines}/{rows} rows): "
                               + b"".join(errors).decode(errors="replace")[-2000:])
        first = first if first is not None else wall
        last = last if last is not None else wall
        steady = rows / (last - first) if last > first else None
        return {"engine": engine, "rows": rows, "inflight": inflight,
                "actors": actors if engine == "ray" else None, "wall_s": round(wall, 2),
                "first_row_s": round(first, 2),
                "rows_per_s": round(rows / wall, 2),
                "rows_per_s_steady": round(steady, 2) if steady else None,
                "peak_rss_mib": round(peak / 2**20)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, nargs="*", default=[100, 1000])
    parser.add_argument("--latency", type=float, default=0.5, help="fake Space seconds/answer")
    parser.add_argument("--inflight", type=int, nargs="*", default=[16, 64])
    parser.add_argument("--actors", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--out", default=str(BENCH / "results" / "ray_vs_local.json"))
    args = parser.parse_args(argv)
    space, url = start_space(args.latency, chunks=5)
    results: list[dict[str, Any]] = []
    try:
        for inflight in args.inflight:
            for rows in args.rows:
                for engine in ("local", "ray"):
                    result = run_case(engine, url, rows, inflight, args.actors, args.timeout)
                    results.append(result)
                    print(json.dumps(result), flush=True)
    finally:
        space.terminate()
        space.wait(10)
    meta = {"machine": f"{os.cpu_count()} CPUs, {platform.platform()}",
            "python": platform.python_version(), "latency_s": args.latency,
            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    git = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO,
                         capture_output=True, text=True, timeout=30)
    if git.returncode == 0:  # docs/ray.md names the code the figures are for
        meta["commit"] = git.stdout.strip()
    try:
        import ray

        meta["ray"] = ray.__version__
    except ImportError:
        pass
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(f"\n{'engine':6} {'rows':>6} {'inflight':>8} {'wall s':>8} {'1st row s':>9} "
          f"{'rows/s':>7} {'steady':>7} {'peak MiB':>8}")
    for r in results:
        print(f"{r['engine']:6} {r['rows']:>6} {r['inflight']:>8} {r['wall_s']:>8} "
              f"{r['first_row_s']:>9} {r['rows_per_s']:>7} {r['rows_per_s_steady'] or '-':>7} "
              f"{r['peak_rss_mib']:>8}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
