"""A Ray cluster started the way operators do (``ray start``), for tests and benchmarks.

Every node is a ``ray start --block`` child in a session of its own, with its own
``--temp-dir`` and ports, so several clusters (and other people's Ray) can run on one
machine. Stopping never uses ``ray stop``, which ends *every* Ray process on the
machine: it signals our own process groups, then ends what is left of ours, found by
the temp dir in their command lines.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def distinct_ports(count: int) -> list[int]:
    """``count`` different free ports: all bound at once, so none is handed out twice
    (one :func:`free_port` after another may return the same port; ``ray start`` then
    fails: "trying to use a port number … that is used by other components")."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def _ports(exclude: int | None = None) -> list[str]:
    names = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--metrics-export-port", "--runtime-env-agent-port",
             "--dashboard-port"]
    ports = [p for p in distinct_ports(len(names) + 1) if p != exclude][:len(names)]
    return [arg for name, port in zip(names, ports, strict=True) for arg in (name, str(port))]


def _wait_listening(port: int, timeout: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"ray start exited {proc.returncode}: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return
        time.sleep(0.2)
    raise RuntimeError(f"the Ray head did not listen on {port} in {timeout} s")


class RayCluster:
    """A head (and optionally more nodes) on 127.0.0.1; :meth:`stop` ends all of it."""

    def __init__(self, root: Path | None = None, env: dict[str, str] | None = None) -> None:
        # Short paths: Ray's socket paths must stay under 107 bytes.
        self.root = Path(tempfile.mkdtemp(prefix="qbray-", dir=root or "/tmp"))
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        self.env["RAY_USAGE_STATS_ENABLED"] = "0"
        self.env.update(env or {})
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        self.nodes: list[subprocess.Popen[bytes]] = []

    @property
    def head_temp_dir(self) -> Path:
        return self.root / "h"

    def start_head(self, num_cpus: float, timeout: float = 90) -> None:
        self._start("h", ["--head", "--port", str(self.port), "--include-dashboard", "false",
                          "--num-cpus", str(num_cpus)], timeout, wait_port=self.port)

    def add_node(self, num_cpus: float, timeout: float = 90) -> None:
        name = f"n{len(self.nodes)}"
        self._start(name, ["--address", self.address, "--num-cpus", str(num_cpus)], timeout)

    def _start(self, name: str, args: list[str], timeout: float, wait_port: int | None = None
               ) -> None:
        log = self.root / f"{name}.log"
        cmd = [RAY, "start", "--block", "--disable-usage-stats", "--node-ip-address", "127.0.0.1",
               "--temp-dir", str(self.root / name), *_ports(exclude=self.port), *args]
        with open(log, "wb") as out:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=self.env,
                                    start_new_session=True)
        self.nodes.append(proc)
        if wait_port is not None:
            _wait_listening(wait_port, timeout, proc, log)
        else:
            self._wait_nodes(len(self.nodes), timeout)

    def _wait_nodes(self, count: int, timeout: float) -> None:
        """Wait until the cluster lists ``count`` live nodes (asked in a child process)."""
        probe = ("import ray,sys,time\n"
                 f"ray.init(address={self.address!r}, logging_level='ERROR')\n"
                 f"end = time.monotonic() + {timeout}\n"
                 f"while sum(n['Alive'] for n in ray.nodes()) < {count}:\n"
                 "    if time.monotonic() > end: sys.exit(1)\n"
                 "    time.sleep(0.5)\n")
        code = subprocess.run([sys.executable, "-c", probe], env=self.env, timeout=timeout + 60,
                              capture_output=True).returncode
        if code != 0:
            raise RuntimeError(f"the cluster did not reach {count} nodes in {timeout} s")

    def pids(self) -> list[int]:
        """Our processes still running: our nodes, any process whose command line names
        our temp dir, and their descendants (workers renamed ``ray::…`` included)."""
        parents: dict[int, int] = {}
        mine: set[int] = {p.pid for p in self.nodes if p.poll() is None}
        needle = str(self.root).encode()
        for entry in os.listdir("/proc"):
            if not entry.isdigit() or int(entry) == os.getpid():
                continue
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = Path(f"/proc/{entry}/stat").read_text()
                if stat[stat.rindex(")") + 2] == "Z":
                    continue  # a zombie: nothing left to stop
                parents[int(entry)] = int(stat[stat.rindex(")") + 2:].split()[1])
                if needle in Path(f"/proc/{entry}/cmdline").read_bytes():
                    mine.add(int(entry))
        grew = True
        while grew:
            children = {pid for pid, ppid in parents.items() if ppid in mine} - mine
            grew = bool(children)
            mine |= children
        return sorted(mine)

    def stop(self, timeout: float = 10) -> None:
        """SIGTERM our nodes' groups, then SIGKILL whatever of ours is left."""
        ours = self.pids()
        for proc in self.nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
        end = time.monotonic() + timeout
        for proc in self.nodes:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(max(0.1, end - time.monotonic()))
        for _ in range(5):
            left = sorted(set(self.pids()) | {p for p in ours if _running(p)})
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for proc in self.nodes:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(5)
            if not left:
                break
            time.sleep(0.5)
        if not self.pids():
            shutil.rmtree(self.root, ignore_errors=True)


HOLD_WORKERS = """\
import os, sys, time
_flag = os.environ.get("QWEN_BATCH_TEST_HOLD_WORKERS")
if _flag and sys.argv and sys.argv[0].endswith("default_worker.py"):
    _end = time.monotonic() + 120
    while os.path.exists(_flag) and time.monotonic() < _end:
        time.sleep(0.1)
"""


def held_workers_env(folder: Path, flag: Path) -> dict[str, str]:
    """Driver environment whose job's Ray workers do not start while ``flag`` exists.

    The job's runtime environment (``RAY_JOB_CONFIG_JSON_ENV_VAR``, read by
    ``ray.init`` as for a submitted job) puts a ``sitecustomize`` on the workers' path
    that waits for the flag to go (at most 120 s): the run's actors and read task stay
    pending, as on a cluster slow to start them, and nobody else's workers are held.
    """
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sitecustomize.py").write_text(HOLD_WORKERS, encoding="utf-8")
    runtime_env = {"env_vars": {"PYTHONPATH": str(folder),
                                "QWEN_BATCH_TEST_HOLD_WORKERS": str(flag)}}
    return {"RAY_JOB_CONFIG_JSON_ENV_VAR": json.dumps({"runtime_env": runtime_env})}


def _running(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2] != "Z"


@contextlib.contextmanager
def ray_cluster(num_cpus: float, extra_nodes: tuple[float, ...] = (),
                env: dict[str, str] | None = None) -> Iterator[RayCluster]:
    cluster = RayCluster(env=env)
    try:
        cluster.start_head(num_cpus)
        for cpus in extra_nodes:
            cluster.add_node(cpus)
        yield cluster
    finally:
        cluster.stop()
