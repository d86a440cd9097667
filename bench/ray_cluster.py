"""The Ray engine on an existing cluster: a local two-node cluster, measured from outside.

    .venv/bin/python bench/ray_cluster.py            # ~3-4 minutes on 2 cores

Starts what an operator would (``tests/ray_cluster.py``): ``ray start --head
--num-cpus 2`` and a second ``ray start --address HEAD --num-cpus 2`` on 127.0.0.1, each
with its own ports and temp dir, token authentication on (``RAY_AUTH_MODE=token`` and a
token, in the nodes' and the driver's environment), and the fake Space answering in
``--latency`` seconds. Then, each a ``qwen-batch run --engine ray --address HEAD`` child
process:

* ``fits``: ``--actors 8`` (8 x 0.25 + 1 for the read task = 3 of the 4 free CPUs), a
  whole run: wall time, time to the first record, rows/s, actors per node;
* ``fitted``: ``--actors 16`` (5 CPUs needed): fitted to the free CPUs (12 + 1 = 4), with
  ``--engine-start-timeout 60``: whatever happens is recorded;
* ``sigint``: Ctrl-C after 20 records: exit code, seconds from the signal to the exit;
* ``killed``: ``kill -9`` of the driver after 20 records: seconds until no actor process
  is left, requests sent but not saved, and a local-engine resume (rows it asked for,
  the spool gone);
* ``nothing_listens``, ``no_token_mode``: the wrong port, and the cluster without
  ``RAY_AUTH_MODE=token`` in the driver's environment: exit code and seconds.

Results: ``bench/results/ray_cluster.json`` (``--out``); ``bench/ray_cluster_report.py``
puts them in docs/ray.md.
Stops every process it started (never ``ray stop``, which ends every Ray on the machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO / "tests"))

from fake_space_process import FakeSpaceProcess, fake_space_process  # noqa: E402
from ray_cluster import RayCluster, free_port  # noqa: E402

TOKEN = uuid.uuid4().hex


def driver_env(token_mode: bool = True) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("QWEN_BATCH_", "RAY_")) and k != "HF_TOKEN"}
    env.update({"RAY_AUTH_TOKEN": TOKEN, "RAY_USAGE_STATS_ENABLED": "0"})
    if token_mode:
        env["RAY_AUTH_MODE"] = "token"
    return env


def lines(path: Path) -> int:
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def map_workers(cluster: RayCluster) -> dict[int, int]:
    """Actor process -> the pid of the raylet (node) that started it."""
    found = {}
    for pid in cluster.pids():
        try:
            if b"MapWorker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            stat = Path(f"/proc/{pid}/stat").read_text()
            found[pid] = int(stat[stat.rindex(")") + 2:].split()[1])
        except (OSError, ValueError):
            continue
    return found


def settle(space: FakeSpaceProcess, quiet: float = 3.0) -> int:
    last, since = -1, time.monotonic()
    while True:
        stats = space.stats()
        if stats["joins"] != last or stats["running"] or stats["waiting"]:
            last, since = stats["joins"], time.monotonic()
        elif time.monotonic() - since >= quiet:
            return int(last)
        time.sleep(0.2)


class Case:
    def __init__(self, work: Path, name: str, rows: int, address: str, url: str,
                 *args: str, token_mode: bool = True, engine_args: bool = True) -> None:
        self.dir = work / name
        self.dir.mkdir(parents=True)
        (self.dir / "in.jsonl").write_text(
            "".join(json.dumps({"id": f"r{i:05d}", "prompt": f"Question {i}"}) + "\n"
                    for i in range(rows)), encoding="utf-8")
        self.out = self.dir / "out.jsonl"
        ray = ["--engine", "ray", "--address", address] if engine_args else []
        self.cmd = [sys.executable, "-m", "pipeline", "run", str(self.dir / "in.jsonl"),
                    "-o", str(self.out), "--url", url, "--no-progress", "--fixed-concurrency",
                    "--summary", str(self.dir / "summary.json"), *ray, *args]
        self.started = time.monotonic()
        self.first: float | None = None
        with open(self.dir / "stderr", "wb") as err:
            self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err, cwd=REPO,
                                         env=driver_env(token_mode), start_new_session=True)

    def until(self, rows: int, timeout: float = 300) -> None:
        end = time.monotonic() + timeout
        while lines(self.out) < rows:
            if self.first is None and lines(self.out):
                self.first = time.monotonic() - self.started
            if self.proc.poll() is not None or time.monotonic() > end:
                raise RuntimeError(f"{self.cmd}: no {rows} rows; {self.stderr()}")
            time.sleep(0.02)
        if self.first is None:
            self.first = time.monotonic() - self.started

    def wait(self, timeout: float = 600) -> tuple[int, float]:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"{self.cmd}: did not end in {timeout} s") from None
        return code, time.monotonic() - self.started

    def stderr(self) -> str:
        return (self.dir / "stderr").read_text(errors="replace")

    def summary(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads((self.dir / "summary.json").read_text())
        return data


def whole_run(work: Path, name: str, rows: int, actors: int, per_actor: int,
              cluster: RayCluster, space: FakeSpaceProcess, *more: str) -> dict[str, Any]:
    case = Case(work, name, rows, cluster.address, space.url, "--actors", str(actors),
                "--per-actor-concurrency", str(per_actor), *more)
    try:
        case.until(1)
    except RuntimeError:  # it ended without a record: record how
        code, wall = case.wait()
        fitted = [line for line in case.stderr().splitlines() if "do not fit" in line]
        return {"case": name, "rows": rows, "actors_asked": actors, "exit": code,
                "wall_s": round(wall, 2), "stalled": case.summary()["stalled"],
                "fitted_message": fitted[0] if fitted else None}
    nodes: dict[int, int] = {}
    while case.proc.poll() is None:
        nodes = map_workers(cluster) or nodes
        if len(nodes) >= min(actors, 16):
            break
        time.sleep(0.1)
    code, wall = case.wait()
    report = case.summary()
    steady = rows / (wall - (case.first or 0.0)) if wall > (case.first or 0.0) else None
    fitted = [line for line in case.stderr().splitlines() if "do not fit" in line]
    per_node = sorted(list(nodes.values()).count(r) for r in set(nodes.values()))
    return {"case": name, "rows": rows, "actors_asked": actors, "per_actor": per_actor,
            "exit": code, "wall_s": round(wall, 2), "first_record_s": round(case.first or 0, 2),
            "rows_per_s_whole": round(rows / wall, 1),
            "rows_per_s_after_first": round(steady, 1) if steady else None,
            "succeeded": report["succeeded"], "in_flight_ceiling": report["concurrency"]["ceiling"],
            "actors_per_node": per_node, "fitted_message": fitted[0] if fitted else None}


def stopped_run(work: Path, cluster: RayCluster, space: FakeSpaceProcess) -> dict[str, Any]:
    case = Case(work, "sigint", 2000, cluster.address, space.url, "--actors", "4",
                "--per-actor-concurrency", "4")
    case.until(20)
    sent = time.monotonic()
    case.proc.send_signal(signal.SIGINT)
    code, _ = case.wait()
    took = time.monotonic() - sent
    left = time.monotonic()
    while map_workers(cluster) and time.monotonic() - left < 60:
        time.sleep(0.05)
    report = case.summary()
    return {"case": "sigint", "exit": code, "exit_after_signal_s": round(took, 2),
            "actors_gone_after_exit_s": round(time.monotonic() - left, 2),
            "summary_interrupted": report["interrupted"], "saved": lines(case.out)}


def killed_run(work: Path, cluster: RayCluster, space: FakeSpaceProcess) -> dict[str, Any]:
    before = settle(space, 1.0)
    rows = 400
    case = Case(work, "killed", rows, cluster.address, space.url, "--actors", "4",
                "--per-actor-concurrency", "4")
    case.until(20)
    case.proc.kill()
    case.proc.wait()
    killed = time.monotonic()
    while map_workers(cluster) and time.monotonic() - killed < 60:
        time.sleep(0.05)
    gone = time.monotonic() - killed
    sent = settle(space) - before
    saved = lines(case.out)
    spool_left = Path(str(case.out) + ".spool").is_dir()
    resume = subprocess.run([sys.executable, "-m", "pipeline", "run", str(case.dir / "in.jsonl"),
                             "-o", str(case.out), "--url", space.url, "--no-progress",
                             "--concurrency", "16"], cwd=REPO, env=driver_env(),
                            capture_output=True, timeout=600)
    resumed = settle(space, 1.0) - before - sent
    ids = [json.loads(line)["id"] for line in case.out.read_text().splitlines()]
    return {"case": "killed", "actors_gone_after_kill_s": round(gone, 2), "saved": saved,
            "sent": sent, "lost": sent - saved, "spool_left_by_kill": spool_left,
            "local_resume_exit": resume.returncode, "local_resume_sent": resumed,
            "missing_before_resume": rows - saved,
            "spool_after_resume": Path(str(case.out) + ".spool").exists(),
            "ids_once": len(ids) == len(set(ids)) == rows}


def failed_join(work: Path, name: str, address: str, url: str, token_mode: bool) -> dict[str, Any]:
    case = Case(work, name, 1, address, url, "--engine-connect-timeout", "10",
                token_mode=token_mode)
    code, wall = case.wait(120)
    return {"case": name, "exit": code, "wall_s": round(wall, 2),
            "stalled": case.summary()["stalled"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--rows", type=int, default=1000)
    parser.add_argument("--out", default=str(BENCH / "results" / "ray_cluster.json"))
    args = parser.parse_args(argv)
    import ray

    work = Path(os.environ.get("TMPDIR", "/tmp")) / f"qb-bench-{uuid.uuid4().hex[:8]}"
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN}
    cluster = RayCluster(env=env)
    results: list[dict[str, Any]] = []
    try:
        started = time.monotonic()
        cluster.start_head(2)
        head_s = time.monotonic() - started
        cluster.add_node(2)
        both_s = time.monotonic() - started
        with fake_space_process(latency=args.latency, chunks=3) as space:
            results.append(whole_run(work, "fits", args.rows, 8, 4, cluster, space))
            results.append(whole_run(work, "fitted", args.rows, 16, 2, cluster, space,
                                     "--engine-start-timeout", "60"))
            results.append(stopped_run(work, cluster, space))
            results.append(killed_run(work, cluster, space))
            results.append(failed_join(work, "nothing_listens", f"127.0.0.1:{free_port()}",
                                       space.url, True))
            results.append(failed_join(work, "no_token_mode", cluster.address, space.url,
                                       False))
    finally:
        cluster.stop()
        left = cluster.pids()
    meta = {"ray": ray.__version__, "python": platform.python_version(),
            "cpus": os.cpu_count(), "load_avg_end": os.getloadavg()[0],
            "cluster": "2 nodes on 127.0.0.1 (ray start --num-cpus 2 each), token auth",
            "head_start_s": round(head_s, 2), "second_node_joined_s": round(both_s, 2),
            "latency_s": args.latency, "processes_left_after_stop": len(left)}
    Path(args.out).write_text(json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
    print(json.dumps({"meta": meta, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
