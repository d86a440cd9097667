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

from pipeline import lock as lock_module
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
    assert not Path(output + ".lock").exists()  # removed on release
    with OutputLock(output):  # free again
        pass
    assert list(tmp_path.iterdir()) == []


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
    assert Path(output + ".lock").exists()  # a killed holder cannot remove its file...
    with OutputLock(output) as lock:  # ...but holds no lock: the file is reused
        assert lock.held
    assert not Path(output + ".lock").exists()  # and removed by the run that reused it


def test_a_run_that_locked_a_removed_file_locks_the_new_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race of removing a lock file: B opens it, A removes it and exits, B gets the flock."""
    output = str(tmp_path / "out.jsonl")
    first = OutputLock(output)
    first.acquire()
    real_flock = lock_module.fcntl.flock
    calls = 0

    def flock_after_first_finishes(fd: int, operation: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:  # B has opened the file A holds; A finishes now
            first.release()
        real_flock(fd, operation)

    monkeypatch.setattr(lock_module.fcntl, "flock", flock_after_first_finishes)
    second = OutputLock(output)
    second.acquire()
    monkeypatch.setattr(lock_module.fcntl, "flock", real_flock)
    try:
        assert calls == 2  # the removed file, then the one the path names now
        on_disk = os.stat(output + ".lock")
        held = os.fstat(second._fd)
        assert (on_disk.st_dev, on_disk.st_ino) == (held.st_dev, held.st_ino)
        with pytest.raises(LockedError):  # a third run sees the lock B holds
            OutputLock(output).acquire()
    finally:
        second.release()
    assert not Path(output + ".lock").exists()


def test_a_refused_run_leaves_the_holders_file(
    holder: tuple[subprocess.Popen[str], str],
) -> None:
    _, output = holder
    lock = OutputLock(output)
    with pytest.raises(LockedError):
        lock.acquire()
    lock.release()
    assert Path(output + ".lock").exists()


def test_stdout_output_takes_no_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with OutputLock("-") as first, OutputLock("-") as second:
        assert not first.held and not second.held
    assert list(tmp_path.iterdir()) == []
