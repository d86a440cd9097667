"""Shared pieces of the benchmark suite: the fake Space process, inputs, process measurement.

Everything talks to 127.0.0.1 only. Every client run is a separate process whose wall
time, CPU time (user + system) and peak RSS (``ru_maxrss``) come from ``os.wait4`` on
that very process, so our CLI and the reference client are measured the same way.
Every run has a hard time limit (the process is killed past it).

Standard library only (plus pyarrow for Parquet inputs), so a gradio virtualenv
without ``pipeline`` can import it as well.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import random
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"
READY_PREFIX = "fake Space listening on "
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_TICK = os.sysconf("SC_CLK_TCK")


def python_exe() -> str:
    """The interpreter that runs the clients: this one when it runs in a venv (its own
    packages are the ones under test), else the project's .venv if present, else this one."""
    if sys.prefix != sys.base_prefix:
        return sys.executable
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of client/server processes: no proxies for loopback, no stray config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("QWEN_BATCH_")}
    env.update(NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost",
               PYTHONDONTWRITEBYTECODE="1")
    for key in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(key, None)
    if extra:
        env.update(extra)
    return env


# --------------------------------------------------------------------------- fake Space process
class FakeSpaceProc:
    """``python -m pipeline.fake_space`` on a free loopback port, in its own process.

    Use as a context manager; :meth:`cpu_s` is the server's CPU time so far (to see
    when the server, not the client, is the bottleneck).
    """

    def __init__(self, latency: float, chunks: int = 10, *, gradio: int = 4,
                 python: str | None = None, startup_timeout: float = 20.0) -> None:
        self.latency, self.chunks = latency, chunks
        cmd = [python or python_exe(), "-m", "pipeline.fake_space", "--host", "127.0.0.1",
               "--port", "0", "--latency", str(latency), "--chunks", str(chunks),
               "--gradio", str(gradio), "--no-track-prompts", "--heartbeat", "15"]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, cwd=str(REPO), env=child_env())
        self.url = ""
        self._lines: list[str] = []
        ready = threading.Event()

        def drain() -> None:  # a full stderr pipe would block the server
            assert self.proc.stderr is not None
            for raw in self.proc.stderr:
                line = raw.decode("utf-8", "replace").rstrip()
                self._lines.append(line)
                if line.startswith(READY_PREFIX) and not self.url:
                    self.url = line[len(READY_PREFIX):].strip()
                    ready.set()
            ready.set()

        threading.Thread(target=drain, daemon=True).start()
        if not ready.wait(startup_timeout) or not self.url:
            self.stop()
            raise RuntimeError("fake Space did not start:\n" + "\n".join(self._lines[-20:]))
        if not self.url.startswith("http://127.0.0.1:"):
            self.stop()
            raise RuntimeError(f"fake Space is not on loopback: {self.url}")

    def cpu_s(self) -> float:
        """User + system CPU seconds of the server process so far."""
        try:
            with open(f"/proc/{self.proc.pid}/stat", encoding="ascii") as handle:
                fields = handle.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / _TICK
        except (OSError, IndexError, ValueError):
            return float("nan")

    def stats(self) -> dict[str, Any]:
        with _NO_PROXY.open(self.url + "/_fake/stats", timeout=5) as resp:
            data: dict[str, Any] = json.load(resp)
        return data

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def __enter__(self) -> FakeSpaceProc:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


# ---------------------------------------------------------------------------------- inputs
_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel", "india",
          "juliet", "kilo", "lima", "mike", "november", "oscar", "papa", "quebec", "romeo",
          "sierra", "tango", "uniform", "victor", "whiskey", "xray", "yankee", "zulu",
          "café", "naïve", "日本語", "señor", "✓", "Ωmega", "straße", "smörgåsbord")


def make_prompt(i: int, size: int, rng: random.Random) -> str:
    """A unique prompt of about ``size`` characters (words, some of them non-ASCII)."""
    head = f"Prompt {i}: "
    parts = [head]
    length = len(head)
    while length < size:
        word = rng.choice(_WORDS)
        parts.append(word)
        length += len(word) + 1
    return " ".join(parts)[:size] if size > len(head) else head


def make_jsonl(path: Path, n: int, prompt_chars: int = 200, seed: int = 1) -> Path:
    """Write ``n`` rows ``{"id", "prompt"}`` as JSONL (skipped if the same file exists)."""
    if _cached(path, n, prompt_chars):
        return path
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(n):
            row = {"id": f"r{i}", "prompt": make_prompt(i, prompt_chars, rng)}
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
    _mark(path, n, prompt_chars)
    return path


def make_parquet(path: Path, n: int, prompt_chars: int = 2000, seed: int = 1,
                 row_group_rows: int | None = None, page_rows: int | None = None) -> Path:
    """Write ``n`` rows ``(id, prompt)`` as Parquet, in a child process.

    A child, so this (measuring) process never grows: a child's ``ru_maxrss`` starts
    from its parent's RSS at fork time on Linux, so the parent must stay small.
    ``row_group_rows=None`` writes like ``pq.write_table(table, path)`` with its
    defaults (one row group of up to 1Mi rows), which is what most users' files look like.
    ``page_rows`` is pyarrow's ``write_batch_size`` (1024 by default): it checks a page's
    size (and the dictionary's) only every that many rows, so wide rows make big pages.
    """
    extra = row_group_rows if page_rows is None else [row_group_rows, page_rows]
    if _cached(path, n, prompt_chars, extra):
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([python_exe(), str(Path(__file__).resolve()), "make-parquet", str(path), str(n),
                    str(prompt_chars), str(seed), str(row_group_rows or 0), str(page_rows or 0)],
                   check=True, env=child_env(), cwd=str(REPO), timeout=600)
    _mark(path, n, prompt_chars, extra)
    return path


def _write_parquet(path: Path, n: int, prompt_chars: int, seed: int, row_group_rows: int,
                   page_rows: int = 0) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = random.Random(seed)
    step = 10_000
    batches = []
    for start in range(0, n, step):
        stop = min(n, start + step)
        ids = [f"r{i}" for i in range(start, stop)]
        prompts = [make_prompt(i, prompt_chars, rng) for i in range(start, stop)]
        batches.append(pa.record_batch([pa.array(ids), pa.array(prompts)], names=["id", "prompt"]))
    kwargs: dict[str, int] = {"row_group_size": row_group_rows} if row_group_rows else {}
    if page_rows:
        kwargs["write_batch_size"] = page_rows
    pq.write_table(pa.Table.from_batches(batches), path, **kwargs)


def _stamp(n: int, chars: int, extra: Any = None) -> str:
    return json.dumps({"n": n, "chars": chars, "extra": extra, "v": 2})


def _cached(path: Path, n: int, chars: int, extra: Any = None) -> bool:
    stamp = path.with_name(path.name + ".stamp")
    return path.exists() and stamp.exists() and stamp.read_text() == _stamp(n, chars, extra)


def _mark(path: Path, n: int, chars: int, extra: Any = None) -> None:
    path.with_name(path.name + ".stamp").write_text(_stamp(n, chars, extra))


def count_lines(path: Path) -> int:
    """Lines in a file (0 if it does not exist)."""
    if not path.exists():
        return 0
    count = 0
    with open(path, "rb") as handle:
        while block := handle.read(1 << 20):
            count += block.count(b"\n")
    return count


# ------------------------------------------------------------------------ process measurement
@dataclass
class ProcResult:
    """What one client process cost."""

    wall_s: float
    cpu_s: float
    user_s: float
    sys_s: float
    maxrss_mb: float
    """``ru_maxrss`` of the process (from ``wait4``)."""
    returncode: int
    timed_out: bool = False
    server_cpu_s: float = float("nan")
    stderr_tail: str = ""
    hwm_mb: float = float("nan")
    """``VmHWM`` of the process polled every 20 ms from /proc: a cross-check of ``maxrss_mb``."""
    parent_rss_mb: float = float("nan")
    """This process's own peak RSS when it spawned the client: ``ru_maxrss`` of a child
    cannot be lower (Linux carries the parent's high-water mark over fork + exec)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def run_measured(cmd: Sequence[str], *, timeout: float, server: FakeSpaceProc | None = None,
                 env: dict[str, str] | None = None, cwd: Path | None = None,
                 poll: Callable[[int], None] | None = None) -> ProcResult:
    """Run ``cmd`` to its end (killed after ``timeout`` s) and measure exactly that process.

    ``os.wait4`` gives the rusage of the child alone (its own children, none here,
    would not be counted), with ``ru_maxrss`` in KiB on Linux. ``poll(pid)`` is called
    every 20 ms while it runs (to sample more than VmHWM).
    """
    server_cpu0 = server.cpu_s() if server else float("nan")
    parent_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        proc = subprocess.Popen(list(cmd), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=err, env=env or child_env(), cwd=str(cwd or REPO))
        timed_out = threading.Event()
        finished = threading.Event()
        hwm = [float("nan")]

        def kill() -> None:
            timed_out.set()
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)

        def poll_hwm() -> None:
            while not finished.wait(0.02):
                value = _vm_hwm_mb(proc.pid)
                if value == value:
                    hwm[0] = value
                if poll is not None:
                    poll(proc.pid)

        timer = threading.Timer(timeout, kill)
        timer.start()
        poller = threading.Thread(target=poll_hwm, daemon=True)
        poller.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            finished.set()
            timer.cancel()
        wall = time.perf_counter() - start
        poller.join()
        proc.returncode = os.waitstatus_to_exitcode(status)
        err.seek(max(0, err.seek(0, os.SEEK_END) - 4000))
        # Results are committed: paths inside the repository are kept relative to it.
        tail = err.read().decode("utf-8", "replace")[-2000:].replace(f"{REPO}/", "")
    server_cpu = (server.cpu_s() - server_cpu0) if server else float("nan")
    return ProcResult(
        wall_s=wall, cpu_s=usage.ru_utime + usage.ru_stime, user_s=usage.ru_utime,
        sys_s=usage.ru_stime, maxrss_mb=usage.ru_maxrss / 1024.0, returncode=proc.returncode,
        timed_out=timed_out.is_set(), server_cpu_s=server_cpu, stderr_tail=tail,
        hwm_mb=hwm[0], parent_rss_mb=parent_rss,
    )


def _vm_hwm_mb(pid: int) -> float:
    return vm_status_mb(pid, "VmHWM")


def vm_status_mb(pid: int, field: str) -> float:
    """A memory figure (``VmRSS``, ``VmHWM``...) of a process from /proc, in MB."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError):
        pass
    return float("nan")


# --------------------------------------------------------------------------- the two clients
def ours_cmd(input_path: Path, output: Path, url: str, concurrency: int,
             summary: Path | None = None, extra: Sequence[str] = (), *,
             adaptive: bool = False) -> list[str]:
    """``qwen-batch run`` as a user would run it in a batch job (fixed concurrency, unless
    ``adaptive``: the default path, the limit following the Space's queue)."""
    cmd = [python_exe(), "-m", "pipeline", "run", str(input_path), "-o", str(output),
           "--url", url, "--concurrency", str(concurrency),
           *(() if adaptive else ("--fixed-concurrency",)),
           "--no-progress", "--overwrite", "--timeout", "120", "--read-timeout", "60"]
    if summary is not None:
        cmd += ["--summary", str(summary)]
    return cmd + list(extra)


def reference_cmd(input_path: Path, output: Path, url: str, concurrency: int) -> list[str]:
    """The minimal reference client (bench/reference_client.py)."""
    return [python_exe(), str(BENCH_DIR / "reference_client.py"), str(input_path),
            "-o", str(output), "--url", url, "--concurrency", str(concurrency)]


@dataclass
class ClientRun:
    """One measured client run and how many rows it wrote."""

    client: str
    n: int
    concurrency: int
    proc: ProcResult
    rows_out: int
    errors: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    """What ``run_client(verify=...)`` found wrong in the output (empty: all right)."""

    @property
    def ok(self) -> bool:
        return (self.proc.returncode == 0 and not self.proc.timed_out
                and self.rows_out == self.n and self.errors == 0 and not self.problems)

    @property
    def throughput(self) -> float:
        return self.rows_out / self.proc.wall_s if self.proc.wall_s else 0.0

    @property
    def cpu_ms_per_prompt(self) -> float:
        return 1000.0 * self.proc.cpu_s / max(1, self.rows_out)

    def to_dict(self) -> dict[str, Any]:
        return {"client": self.client, "n": self.n, "concurrency": self.concurrency,
                "rows_out": self.rows_out, "errors": self.errors, "ok": self.ok,
                "throughput": self.throughput, "cpu_ms_per_prompt": self.cpu_ms_per_prompt,
                **({"problems": self.problems} if self.problems else {}),
                **self.proc.to_dict(), **self.extra}


def run_client(client: str, input_path: Path, n: int, url: str, concurrency: int, *,
               workdir: Path, timeout: float, server: FakeSpaceProc | None = None,
               output_suffix: str = ".jsonl", adaptive: bool = False,
               verify: Callable[[Path], list[str]] | None = None) -> ClientRun:
    """Run ``ours`` or ``reference`` once over ``input_path`` and check its output.

    ``verify(output)`` (if given) reads the output before it is deleted and returns what
    is wrong with it; anything makes the run not ``ok``.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    out = workdir / f"{client}.out{output_suffix}"
    errors_file = workdir / f"{client}.out.errors.jsonl"
    summary = workdir / f"{client}.summary.json"
    for stale in (out, errors_file, summary):
        stale.unlink(missing_ok=True)
    if client == "ours":
        cmd = ours_cmd(input_path, out, url, concurrency, summary, adaptive=adaptive)
    elif client == "reference":
        cmd = reference_cmd(input_path, out, url, concurrency)
    else:
        raise ValueError(client)
    proc = run_measured(cmd, timeout=timeout, server=server)
    rows = count_lines(out)
    errors = count_lines(errors_file) if client == "ours" else 0
    extra: dict[str, Any] = {}
    if client == "ours" and summary.exists():
        with contextlib.suppress(ValueError):
            data = json.loads(summary.read_text())
            extra = {"summary_failed": data.get("failed"), "summary_retries": data.get("retries"),
                     "elapsed_s": data.get("elapsed_s")}
            errors = max(errors, int(data.get("failed") or 0))
    if client == "reference":
        errors = max(0, n - rows) if proc.returncode != 0 else 0
    problems = verify(out) if verify is not None else []
    for f in (out, errors_file, summary):
        f.unlink(missing_ok=True)
    return ClientRun(client, n, concurrency, proc, rows, errors, extra, problems)


# ------------------------------------------------------------------------------- reporting
def median(values: Sequence[float]) -> float:
    values = [v for v in values if v == v]  # drop NaN
    return statistics.median(values) if values else float("nan")


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_gb = float("nan")
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_gb = int(line.split()[1]) / 1024 / 1024
    # Metadata only: importing pyarrow here would raise this process's RSS, and with it
    # the ru_maxrss floor of every child (see ProcResult.parent_rss_mb).
    from importlib import metadata

    versions: dict[str, str] = {}
    for dist in ("aiohttp", "pyarrow", "numpy", "py-spy"):
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return {"cpu": cpu, "cores": os.cpu_count(), "mem_gb": round(mem_gb, 1),
            "python": platform.python_version(), "os": f"{platform.system()} {platform.release()}",
            **versions}


def write_json(name: str, data: Any) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / name
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")
    return path


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def time_budget(seconds: float, what: str) -> Iterator[None]:
    """Log how long a block took against its budget (the runs themselves are bounded)."""
    start = time.monotonic()
    yield
    took = time.monotonic() - start
    log(f"{what}: {took:.0f} s (budget {seconds:.0f} s){' OVER' if took > seconds else ''}")


def _check_parquet(path: Path, n: int) -> dict[str, Any]:
    """Rows of a Parquet output; whether they are rows 0..n-1 in input order, each with the
    fake Space's echo of its prompt as completion. Streams the file: memory stays small."""
    import pyarrow.parquet as pq

    rows = 0
    in_order = echo_ok = True
    with pq.ParquetFile(path, buffer_size=1 << 20) as parquet:
        groups = parquet.metadata.num_row_groups
        largest = max((parquet.metadata.row_group(g).num_rows for g in range(groups)), default=0)
        for batch in parquet.iter_batches(batch_size=256, columns=["position", "prompt",
                                                                   "completion"]):
            positions = batch.column(0).to_pylist()
            in_order = in_order and positions == list(range(rows, rows + len(positions)))
            echo_ok = echo_ok and all(
                completion.startswith(f"Echo: {prompt}\n") for prompt, completion in
                zip(batch.column(1).to_pylist(), batch.column(2).to_pylist(), strict=True))
            rows += len(positions)
    return {"rows": rows, "checked": in_order and echo_ok and rows == n, "in_order": in_order,
            "echo_ok": echo_ok, "row_groups": groups, "largest_row_group": largest}


if __name__ == "__main__":  # helper entry point: python bench/common.py make-parquet ...
    if len(sys.argv) in (7, 8) and sys.argv[1] == "make-parquet":
        _write_parquet(Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]),
                       int(sys.argv[6]), int(sys.argv[7]) if len(sys.argv) == 8 else 0)
    elif len(sys.argv) == 4 and sys.argv[1] == "check-parquet":
        print(json.dumps(_check_parquet(Path(sys.argv[2]), int(sys.argv[3]))))
    else:
        sys.exit("usage: common.py make-parquet PATH N CHARS SEED ROW_GROUP_ROWS [PAGE_ROWS]\n"
                 "       common.py check-parquet PATH N")
