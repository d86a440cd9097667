"""Tests for pipeline.lock: one writer per output, freed by the kernel when its holder dies."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.errors import LockedError
from pipeline.lock import OutputLock

REPO = Path(__file__).resolve().parent.parent

HOLDER = """
    import sys, time
    from pipeline.lock import OutputLock
    with OutputLock(sys.argv[1]):
        print("locked", flush=True)
        time.sleep(60)
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """A child process holding the lock of ``<tmp>/out.jsonl``."""
    output = str(tmp_path / "out.jsonl")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDER), output], env=env,
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    try:
        assert proc.stdout.readline() == "locked\n"
        yield proc, output
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        proc.stdout.close()


def test_lock_writes_holder_info_and_releases(tmp_path: Path) -> None:
    output = str(tmp_path / "out.jsonl")
    with OutputLock(output) as lock:
        assert lock.held
        info = json.loads(Path(output + ".lock").read_text())
        assert info["pid"] == os.getpid() and info["host"] and info["started_at"].endswith("Z")
    assert not lock.held
    assert Path(output + ".lock").exists()  # left in place on purpose
    with OutputLock(output):  # free again
        pass


def test_second_lock_in_same_process_fails(tmp_path: Path) -> None:
    output = str(tmp_path / "out.jsonl")
    with OutputLock(output), pytest.raises(LockedError, match=f"pid {os.getpid()}"):
        OutputLock(output).acquire()


def test_lock_held_by_another_process(holder: tuple[subprocess.Popen[str], str]) -> None:
    proc, output = holder
    with pytest.raises(LockedError) as info:
        OutputLock(output).acquire()
    message = str(info.value)
    assert f"pid {proc.pid}" in message and output in message
    assert "frees itself" in message


def test_lock_frees_after_holder_is_sigkilled(holder: tuple[subprocess.Popen[str], str]) -> None:
    proc, output = holder
    with pytest.raises(LockedError):
        OutputLock(output).acquire()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with OutputLock(output) as lock:  # no stale lock to clean up
        assert lock.held


def test_stdout_output_takes_no_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with OutputLock("-") as first, OutputLock("-") as second:
        assert not first.held and not second.held
    assert list(tmp_path.iterdir()) == []
