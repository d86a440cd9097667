"""Joining a Ray cluster that is not there: bounded, interruptible, and saying why.

Real ``qwen-batch run --engine ray --address …`` processes, no Ray cluster at all (so
they are cheap: Ray is imported, never started). Needs ``pip install -e '.[test,ray]'``;
skipped without Ray unless ``QWEN_BATCH_REQUIRE_RAY=1``. Before: ``ray.init`` retried
for about 14 minutes (20 tries), ignoring Ctrl-C and SIGTERM, then exit 1.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from ray_cluster import free_port
from ray_testing import ray_or_skip

pytestmark = [pytest.mark.ray]

REPO = Path(__file__).resolve().parents[1]
STARTUP = 15.0
"""Seconds a driver may take beyond its own bounds: Python, Ray's import, 2 busy cores."""


@pytest.fixture(autouse=True)
def ray_available() -> None:
    """Skip without Ray; fail instead under QWEN_BATCH_REQUIRE_RAY=1 (CI)."""
    ray_or_skip()


@pytest.fixture
def silent_gcs() -> Iterator[str]:
    """A port that accepts connections and never answers: a GCS that hangs."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    held: list[socket.socket] = []
    done = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not done.is_set():
            with contextlib.suppress(OSError):
                held.append(server.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        done.set()
        thread.join(5)
        for conn in held:
            conn.close()
        server.close()


class Driver:
    def __init__(self, tmp: Path, address: str, *args: str,
                 env: dict[str, str] | None = None) -> None:
        (tmp / "in.jsonl").write_text('{"id": "a", "prompt": "hi"}\n', encoding="utf-8")
        self.summary = tmp / "summary.json"
        self.stderr_path = tmp / "stderr"
        base = {k: v for k, v in os.environ.items() if not k.startswith(("QWEN_BATCH_", "RAY_"))}
        base.update(env or {})
        # The URL is never asked: the run stops before any actor starts.
        cmd = [sys.executable, "-m", "pipeline", "run", str(tmp / "in.jsonl"), "-o",
               str(tmp / "out.jsonl"), "--url", f"http://127.0.0.1:{free_port()}",
               "--engine", "ray", "--address", address, "--no-progress",
               "--summary", str(self.summary), *args]
        self.started = time.monotonic()
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                         stdout=subprocess.DEVNULL, stderr=err, cwd=REPO,
                                         env=base, start_new_session=True)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def wait(self, timeout: float) -> tuple[int, float]:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            pytest.fail(f"the run did not end in {timeout} s; stderr:\n{self.stderr}")
        return code, time.monotonic() - self.started

    def stalled(self) -> str:
        assert self.summary.exists(), self.stderr
        return str(json.loads(self.summary.read_text())["stalled"])


def test_an_address_where_nothing_listens_exits_4_at_once(tmp_path: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    driver = Driver(tmp_path, address, "--engine-connect-timeout", "5")
    code, took = driver.wait(120)
    assert code == 4, driver.stderr
    assert f"cannot join the Ray cluster at {address} (--address)" in driver.stderr
    assert "nothing listens there" in driver.stderr
    assert "nothing listens there" in driver.stalled()
    assert took < 5 + STARTUP, took


def test_a_stale_auto_file_exits_4_naming_the_file(tmp_path: Path) -> None:
    ray_tmp = tmp_path / "raytmp"
    (ray_tmp / "ray").mkdir(parents=True)
    stale = ray_tmp / "ray" / "ray_current_cluster"
    stale.write_text(f"127.0.0.1:{free_port()}", encoding="utf-8")
    driver = Driver(tmp_path, "auto", "--engine-connect-timeout", "5",
                    env={"RAY_TMPDIR": str(ray_tmp)})
    code, took = driver.wait(120)
    assert code == 4, driver.stderr
    assert f"read from {stale}" in driver.stderr and "stale" in driver.stderr, driver.stderr
    assert took < 5 + STARTUP, took


def test_a_gcs_that_never_answers_exits_4_after_the_connect_timeout(
        tmp_path: Path, silent_gcs: str) -> None:
    driver = Driver(tmp_path, silent_gcs, "--engine-connect-timeout", "3")
    code, took = driver.wait(120)
    assert code == 4, driver.stderr
    assert f"cannot join the Ray cluster at {silent_gcs}" in driver.stderr
    assert "no answer in 3 s" in driver.stalled()
    assert "RAY_AUTH_MODE=token" in driver.stderr  # not set here: a likely cause
    assert took < 3 + STARTUP, took


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signal_while_joining_ends_the_run_at_once_with_130(
        tmp_path: Path, silent_gcs: str, sig: signal.Signals) -> None:
    driver = Driver(tmp_path, silent_gcs, "--engine-connect-timeout", "600")
    end = time.monotonic() + 60
    while "ray engine on Ray cluster" not in driver.stderr:  # the banner: joining now
        assert driver.proc.poll() is None and time.monotonic() < end, driver.stderr
        time.sleep(0.05)
    time.sleep(1.0)  # inside ray.init by now
    sent = time.monotonic()
    driver.proc.send_signal(sig)
    code, _ = driver.wait(60)
    took = time.monotonic() - sent
    assert code == 130, driver.stderr
    assert json.loads(driver.summary.read_text())["interrupted"] is True
    assert took < 5, took
    print(f"\n{sig.name} while joining: exit {code} {took:.2f} s after the signal")


# -- the job's workers on a cluster: no crash handler either -------------------------------------


def test_the_workers_runtime_env_turns_the_crash_handler_off(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.engines.ray_connect import (
        FAILURE_HANDLER_SWITCH,
        JOB_CONFIG_VARIABLE,
        workers_runtime_env,
    )

    monkeypatch.delenv(FAILURE_HANDLER_SWITCH, raising=False)
    monkeypatch.delenv(JOB_CONFIG_VARIABLE, raising=False)
    assert workers_runtime_env() == {"env_vars": {FAILURE_HANDLER_SWITCH: "1"}}
    monkeypatch.setenv(FAILURE_HANDLER_SWITCH, "0")  # the operator's own setting wins
    assert workers_runtime_env() == {"env_vars": {FAILURE_HANDLER_SWITCH: "0"}}
    # A job config that sets it already: Ray would refuse the same key twice.
    monkeypatch.setenv(JOB_CONFIG_VARIABLE, json.dumps(
        {"runtime_env": {"env_vars": {FAILURE_HANDLER_SWITCH: "1"}}}))
    assert workers_runtime_env() is None
