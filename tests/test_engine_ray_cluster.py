"""The Ray engine on a cluster someone else runs (``--address``), started here with ``ray start``.

Needs ``pip install -e '.[test,ray]'``; skipped without Ray unless ``QWEN_BATCH_REQUIRE_RAY=1``.
One cluster for the module (a 2-CPU head with token authentication, as ``ray start``
makes by default when a token exists), stopped by the module's fixture; every run is a
real ``qwen-batch run`` process joining it:

* too many actors for the free CPUs: fitted to what is free, said so, and the run finishes;
* the wrong token settings: exit 4 within the connect timeout, naming authentication;
* Ctrl-C, SIGTERM and ``--max-outage`` on the cluster: the right exit code and a summary
  file, ``QWEN_BATCH_RAY_REPEATS`` times each (20 by default). Each repeat is one driver
  with one actor on the module's cluster and one prepared input; Ctrl-C and SIGTERM come
  at moments spread over the run's life (joining, starting the actors, running);
* Ctrl-C, SIGTERM and ``--engine-start-timeout`` while the actors start (their workers
  held back by the job's runtime environment);
* ``--deadline`` (exit 0, the rest remaining) and rows failing in a row (exit 4): a summary,
  no spool, no actor left.

The tests that need no cluster (nothing listening, a stale ``auto`` file, Ctrl-C while
connecting) are in ``tests/test_engine_ray_connect.py``.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fake_space_process import FakeSpaceProcess, fake_space_process
from ray_cluster import RayCluster, held_workers_env
from ray_testing import ray_or_skip, settle

from pipeline.writers import iter_jsonl_records

pytestmark = [pytest.mark.ray]

REPO = Path(__file__).resolve().parents[1]
REPEATS = int(os.environ.get("QWEN_BATCH_RAY_REPEATS", "20"))
HEAD_CPUS = 2
TOKEN = uuid.uuid4().hex


@pytest.fixture(scope="module", autouse=True)
def ray_available() -> None:
    """Skip without Ray; fail instead under QWEN_BATCH_REQUIRE_RAY=1 (CI)."""
    ray_or_skip()


@pytest.fixture(scope="module")
def cluster(ray_available: None) -> Iterator[RayCluster]:
    """One 2-CPU head for the module, with token authentication; stopped at its end."""
    cluster = RayCluster(env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN})
    try:
        cluster.start_head(HEAD_CPUS)
        yield cluster
    finally:
        cluster.stop()
        assert cluster.pids() == [], "a process of the test cluster outlived its stop"


@pytest.fixture(scope="module")
def space() -> Iterator[FakeSpaceProcess]:
    with fake_space_process(latency=0.2, chunks=2) as running:
        yield running


def driver_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("QWEN_BATCH_", "RAY_")) and k != "HF_TOKEN"}
    env.update({"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": TOKEN,
                "RAY_USAGE_STATS_ENABLED": "0"})
    env.update(extra)
    return env


def write_input(path: Path, rows: int) -> None:
    path.write_text("".join(json.dumps({"id": f"r{i:04d}", "prompt": f"Question {i}"}) + "\n"
                            for i in range(rows)), encoding="utf-8")


class Run:
    """One ``qwen-batch run --engine ray --address <cluster>`` process."""

    def __init__(self, tmp: Path, name: str, url: str, address: str, *args: str,
                 rows: int = 400, env: dict[str, str] | None = None,
                 source: Path | None = None) -> None:
        self.dir = tmp / name
        self.dir.mkdir()
        self.input = source or self.dir / "in.jsonl"
        if source is None:
            write_input(self.input, rows)
        self.out = self.dir / "out.jsonl"
        self.summary = self.dir / "summary.json"
        self.stderr_path = self.dir / "stderr"
        cmd = [sys.executable, "-m", "pipeline", "run", str(self.input),
               "-o", str(self.out), "--url", url, "--engine", "ray", "--address", address,
               "--no-progress", "--fixed-concurrency", "--retry-delay", "0.05",
               "--retry-max-delay", "0.2", "--summary", str(self.summary), *args]
        self.started = time.monotonic()
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err, cwd=REPO,
                                         env=env or driver_env(), start_new_session=True)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def saved(self) -> int:
        try:
            return self.out.read_bytes().count(b"\n")
        except FileNotFoundError:
            return 0

    def wait_saved(self, rows: int, timeout: float = 120) -> None:
        end = time.monotonic() + timeout
        while self.saved() < rows:
            if self.proc.poll() is not None or time.monotonic() > end:
                self.kill()
                pytest.fail(f"no {rows} rows saved (exit {self.proc.poll()}); "
                            f"stderr:\n{self.stderr}")
            time.sleep(0.05)

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"the run did not end in {timeout} s; stderr:\n{self.stderr}")

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def report(self) -> dict[str, Any]:
        assert self.summary.exists(), f"no summary file; stderr:\n{self.stderr}"
        data: dict[str, Any] = json.loads(self.summary.read_text())
        return data


def test_too_many_actors_are_fitted_to_the_free_cpus(tmp_path: Path, cluster: RayCluster,
                                                      space: FakeSpaceProcess) -> None:
    """8 actors (0.25 CPU each) and the read task (1 CPU) need 3 CPUs; the head has 2.

    Before: the read task was never scheduled and the run hung silently. Now the actors
    are fitted to the free CPUs (4), the run says so and finishes.
    """
    run = Run(tmp_path, "fit", space.url, cluster.address, "--actors", "8",
              "--per-actor-concurrency", "2", rows=40)
    code = run.wait(120)
    assert code == 0, run.stderr
    assert "8 actors do not fit" in run.stderr and "running 4 actors" in run.stderr, run.stderr
    assert "4 actors x 2 requests = at most 8 requests in flight" in run.stderr
    assert len(list(iter_jsonl_records(str(run.out)))) == 40
    assert not Path(str(run.out) + ".spool").exists()


WORKER_SWITCH = """
import os, sys, ray
from pipeline.engines.ray_engine import RayExecutor
executor = RayExecutor(address=sys.argv[1], actors=1, per_actor=1, connect_timeout=60)
executor.start()
read = ray.remote(num_cpus=0)(lambda: os.environ.get("RAY_DISABLE_FAILURE_SIGNAL_HANDLER"))
print("worker:", ray.get(read.remote(), timeout=60))
ray.shutdown()
"""


def test_the_jobs_workers_on_a_cluster_have_the_crash_handler_off(cluster: RayCluster) -> None:
    """A cluster's workers do not inherit the driver's environment: when the run ended,
    Ray's SIGTERM made their crash handler print a trace into the driver's stderr."""
    done = subprocess.run([sys.executable, "-c", WORKER_SWITCH, cluster.address],
                          env=driver_env(), cwd=REPO, capture_output=True, text=True,
                          timeout=180)
    assert done.returncode == 0, done.stderr
    assert "worker: 1" in done.stdout.splitlines(), done.stdout + done.stderr


def test_a_run_finding_no_free_cpu_stops_with_exit_2_at_once(
        tmp_path: Path, cluster: RayCluster, space: FakeSpaceProcess) -> None:
    """Two runs at once: the first holds the 2 CPUs (4 actors, 1 CPU, and its read
    operator's), so the second cannot place one actor and the read task (1.25 CPUs).
    Before: it waited forever, silently."""
    first = Run(tmp_path, "first", space.url, cluster.address, "--actors", "4",
                "--per-actor-concurrency", "1", rows=400)
    try:
        first.wait_saved(8)
        second = Run(tmp_path, "second", space.url, cluster.address, "--actors", "2", rows=10)
        code = second.wait(60)
        took = time.monotonic() - second.started
    finally:
        first.proc.send_signal(signal.SIGINT)
        first.wait(60)
    assert code == 2, second.stderr
    assert re.search(r"has [01](\.\d+)? free CPUs: not enough for one actor \(0\.25 CPU\) "
                     r"and the read task \(1 CPU\)", second.stderr), second.stderr
    assert "--actors 2 needs 1.5" in second.stderr
    assert took < 30, took
    print(f"\nno free CPU: exit {code} in {took:.1f} s")


def test_a_token_cluster_without_token_mode_exits_4_naming_authentication(
        tmp_path: Path, cluster: RayCluster, space: FakeSpaceProcess) -> None:
    """Before: 20 lines of InvalidAuthToken over 20 s, exit 1, never "authentication"."""
    env = driver_env()
    del env["RAY_AUTH_MODE"]
    run = Run(tmp_path, "auth", space.url, cluster.address, "--engine-connect-timeout", "5",
              rows=10, env=env)
    code = run.wait(60)
    took = time.monotonic() - run.started
    assert code == 4, run.stderr
    assert "RAY_AUTH_MODE=token" in run.stderr and cluster.address in run.stderr, run.stderr
    assert took < 5 + 15, took  # the connect timeout, plus starting Python and Ray's import
    assert "authentication" in run.report()["stalled"]


def map_workers(cluster: RayCluster) -> list[int]:
    """The cluster's Ray Data actor processes (``ray::MapWorker(...)``) still running."""
    found = []
    for pid in cluster.pids():
        try:
            if b"MapWorker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue
    return found




def test_a_killed_driver_leaves_no_actor_and_a_local_resume_no_spool(
        tmp_path: Path, cluster: RayCluster, space: FakeSpaceProcess) -> None:
    """kill -9 of the driver on a cluster node: its actors on that node stop at once
    (they watch its process, as on a private Ray) and Ray ends them; the local engine
    then finishes the job, sends only the missing rows and removes the spool."""
    rows, block = 200, 4 * 4  # 2 actors x 4 in flight; a block is 4 windows
    space.control(down=False)
    joins_before = settle(space, quiet=1.0)
    run = Run(tmp_path, "killed", space.url, cluster.address, "--actors", "2",
              "--per-actor-concurrency", "4", rows=rows)
    run.wait_saved(24)
    assert len(map_workers(cluster)) == 2
    run.proc.kill()
    run.proc.wait()
    killed = time.monotonic()
    while map_workers(cluster):
        assert time.monotonic() - killed < 30, "the actors outlived their driver by 30 s"
        time.sleep(0.05)
    actors_gone = time.monotonic() - killed
    joins_killed = settle(space) - joins_before
    saved = run.saved()
    assert Path(str(run.out) + ".spool").is_dir()  # what a killed run leaves
    lost = joins_killed - saved
    assert 0 <= lost <= block, (joins_killed, saved)

    resume = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(run.dir / "in.jsonl"), "-o",
         str(run.out), "--url", space.url, "--no-progress", "--concurrency", "8"],
        cwd=REPO, env=driver_env(), capture_output=True, text=True, timeout=120)
    assert resume.returncode == 0, resume.stderr
    joins_resumed = settle(space, quiet=1.0) - joins_before - joins_killed
    assert not Path(str(run.out) + ".spool").exists()
    ids = [r["id"] for r in iter_jsonl_records(str(run.out))]
    assert len(ids) == len(set(ids)) == rows
    assert joins_resumed == rows - saved
    print(f"\nkilled driver on a cluster: actors gone {actors_gone:.2f} s after the kill; "
          f"{saved} rows saved, {lost} requested but lost; local resume sent {joins_resumed}")


RAY_SIGTERM_TRACE = "*** SIGTERM received"
"""What Ray's C++ crash handler prints on SIGTERM, before it aborts the process 3 s later."""
STOP_MOMENTS: tuple[float | None, ...] = (0.0, 0.5, 1.0, 2.0, 3.0, None)
"""When a repeat sends its signal: seconds after the run's banner (joining the cluster,
fitting, starting the actor), or None: once a row is saved (running)."""


@pytest.fixture(scope="module")
def prepared_input(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("input") / "in.jsonl"
    write_input(path, 400)
    return path


def _stop_one(tmp: Path, cluster: RayCluster, space: FakeSpaceProcess, source: Path,
              how: str, i: int) -> tuple[int, float]:
    """One repeat: start a run, stop it ``how``, check its exit code, summary and spool."""
    space.control(down=False)
    args = ["--actors", "1", "--per-actor-concurrency", "4"]
    if how == "max-outage":
        args += ["--max-outage", "1", "--max-attempts", "50"]
    run = Run(tmp, f"{how}-{i}", space.url, cluster.address, *args, source=source)
    moment = None if how == "max-outage" else STOP_MOMENTS[i % len(STOP_MOMENTS)]
    if moment is None:
        run.wait_saved(1)
    else:
        end = time.monotonic() + 60
        while "ray engine on Ray cluster" not in run.stderr:  # the banner: joining now
            assert run.proc.poll() is None and time.monotonic() < end, run.stderr
            time.sleep(0.02)
        time.sleep(moment)
    if how == "max-outage":
        space.control(down=True)
    else:
        run.proc.send_signal(getattr(signal, how))
    code = run.wait(90)
    took = time.monotonic() - run.started
    expected = 4 if how == "max-outage" else 130
    where = f"repeat {i} (stop {'once running' if moment is None else f'{moment} s in'})"
    assert code == expected, f"{where}: exit {code}; stderr:\n{run.stderr}"
    assert RAY_SIGTERM_TRACE not in run.stderr, f"{where}: Ray's crash handler caught it"
    report = run.report()
    if how == "max-outage":
        assert report["endpoint_down"], report
    else:
        assert report["interrupted"] is True, report
    assert report["succeeded"] == run.saved(), (where, report)
    assert not Path(str(run.out) + ".spool").exists(), where
    return code, took


def _stop_runs(tmp_path: Path, cluster: RayCluster, space: FakeSpaceProcess, source: Path,
               how: str) -> None:
    started = time.monotonic()
    took = [_stop_one(tmp_path, cluster, space, source, how, i)[1] for i in range(REPEATS)]
    space.control(down=False)
    end = time.monotonic() + 30
    while map_workers(cluster):
        assert time.monotonic() < end, "an actor outlived its run by 30 s"
        time.sleep(0.2)
    took.sort()
    print(f"\n{how} on a cluster: {REPEATS} runs, each {took[0]:.1f}-{took[-1]:.1f} s "
          f"(median {took[len(took) // 2]:.1f} s), {time.monotonic() - started:.0f} s in all")


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "max-outage"])
def test_every_stop_on_a_cluster_ends_with_its_exit_code_and_a_summary(
        tmp_path: Path, cluster: RayCluster, space: FakeSpaceProcess, prepared_input: Path,
        how: str) -> None:
    """Before: exit 1 and no summary in 2/10 Ctrl-C, 1/10 SIGTERM, 2/4 --max-outage runs;
    then exit -6 (SIGABRT) for a SIGTERM while joining or while the actors started."""
    _stop_runs(tmp_path, cluster, space, prepared_input, how)


@pytest.fixture(scope="module")
def warmed(cluster: RayCluster, space: FakeSpaceProcess, tmp_path_factory: pytest.TempPathFactory
           ) -> RayCluster:
    """The cluster once a run has finished on it: Ray Data's own detached actors (the
    actor-location tracker and others) exist, as on any cluster that has run a dataset."""
    run = Run(tmp_path_factory.mktemp("warm"), "warm", space.url, cluster.address,
              "--actors", "1", rows=4)
    assert run.wait(120) == 0, run.stderr
    return cluster


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "start-timeout"])
def test_a_stop_while_the_actors_start_ends_with_its_exit_code_and_a_summary(
        tmp_path: Path, warmed: RayCluster, space: FakeSpaceProcess, how: str) -> None:
    """The run's Ray workers are held (they do not start): the run waits for its actors,
    saying so, until a signal or --engine-start-timeout ends the wait.

    Before: SIGTERM ended in SIGABRT (exit -6) and no summary; Ctrl-C waited 15 s for a
    reader stuck in Ray Data's iterator, then shut Ray down under Ray Data's thread."""
    flag = tmp_path / "hold"
    flag.write_text("held", encoding="utf-8")
    env = driver_env(**held_workers_env(tmp_path / "held", flag))
    args = ["--actors", "2", "--per-actor-concurrency", "4"]
    if how == "start-timeout":
        args += ["--engine-start-timeout", "6"]
    run = Run(tmp_path, how, space.url, warmed.address, *args, rows=40, env=env)
    try:
        end = time.monotonic() + 60
        while "for the engine to start" not in run.stderr:  # the start-wait note
            assert run.proc.poll() is None and time.monotonic() < end, run.stderr
            time.sleep(0.05)
        sent = time.monotonic()
        if how != "start-timeout":
            run.proc.send_signal(getattr(signal, how))
        code = run.wait(60)
        took = time.monotonic() - sent
    finally:
        flag.unlink()
    assert code == (4 if how == "start-timeout" else 130), f"exit {code}; stderr:\n{run.stderr}"
    report = run.report()
    if how == "start-timeout":
        assert "did not start in 6 s (--engine-start-timeout)" in report["stalled"], report
        assert "2 actors (0.25 CPU each) and the read task" in report["stalled"]
    else:
        assert report["interrupted"] is True, report
        assert took < 15, took  # a bound against a hang, not a speed test
    assert RAY_SIGTERM_TRACE not in run.stderr, run.stderr
    assert report["succeeded"] == 0
    assert not Path(str(run.out) + ".spool").exists()
    end = time.monotonic() + 60
    while map_workers(warmed):  # the run's actors, once their workers were let go
        assert time.monotonic() < end, "the run's actors outlived it by 60 s"
        time.sleep(0.2)
    print(f"\n{how} while the actors start: exit {code} {took:.2f} s after the stop")


def _no_actor_left(cluster: RayCluster, what: str) -> None:
    end = time.monotonic() + 30
    while map_workers(cluster):
        assert time.monotonic() < end, f"an actor outlived the run by 30 s ({what})"
        time.sleep(0.2)


def test_a_deadline_on_a_cluster_ends_with_exit_0_a_summary_and_the_rest_remaining(
        tmp_path: Path, cluster: RayCluster, space: FakeSpaceProcess,
        prepared_input: Path) -> None:
    # Whether the deadline comes while the actor starts or once it runs, the run ends
    # the same way: no new request, the rest counted as remaining, nothing left behind.
    space.control(down=False)
    run = Run(tmp_path, "deadline", space.url, cluster.address, "--actors", "1",
              "--per-actor-concurrency", "4", "--deadline", "20s", "--grace", "5",
              source=prepared_input)
    code = run.wait(180)
    report = run.report()
    assert code == 0, f"exit {code}; stderr:\n{run.stderr}"
    assert report["deadline_hit"] is True, report
    assert report["succeeded"] == run.saved() < 400, report
    assert report["remaining"] == 400 - run.saved(), report
    assert not Path(str(run.out) + ".spool").exists()
    _no_actor_left(cluster, "deadline")


def test_rows_failing_in_a_row_on_a_cluster_stop_with_exit_4_and_a_summary(
        tmp_path: Path, cluster: RayCluster, space: FakeSpaceProcess) -> None:
    # The error stop: every answer is an app error, so the actor's run of consecutive
    # failures ends the run (exit 4) with what failed written and a summary.
    space.control(down=False)
    source = tmp_path / "failing.jsonl"
    source.write_text("".join(json.dumps({"id": f"f{i:03d}",
                                          "prompt": f"fails [fault:app_error:99] {i}"}) + "\n"
                              for i in range(200)), encoding="utf-8")
    run = Run(tmp_path, "failing", space.url, cluster.address, "--actors", "1",
              "--per-actor-concurrency", "2", "--max-attempts", "1",
              "--max-consecutive-failures", "5", source=source)
    code = run.wait(180)
    report = run.report()
    assert code == 4, f"exit {code}; stderr:\n{run.stderr}"
    assert report["endpoint_down"], report
    assert report["succeeded"] == 0 and 5 <= report["failed"] < 200, report
    errors = list(iter_jsonl_records(str(run.out).replace(".jsonl", ".errors.jsonl")))
    assert len(errors) == report["failed"]
    assert all(e["error_type"] == "app_error" for e in errors)
    assert not Path(str(run.out) + ".spool").exists()
    _no_actor_left(cluster, "failures")
