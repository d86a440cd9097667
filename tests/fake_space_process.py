"""The fake Space as a separate process, for tests that drive ``qwen-batch`` as a real process.

:func:`fake_space_process` starts ``python -m pipeline.fake_space`` on a free loopback
port (``--port 0``), waits for its ready line on stderr, yields a
:class:`FakeSpaceProcess` and always stops the process (SIGTERM, then SIGKILL)
however the block ends.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

READY_PREFIX = "fake Space listening on "
REPO = Path(__file__).resolve().parents[1]


@dataclass
class FakeSpaceProcess:
    """A running fake Space process: its base URL and its ``/_fake/stats``."""

    url: str
    proc: subprocess.Popen[bytes]
    reader: _StderrReader

    def stats(self) -> dict[str, Any]:
        """The fake Space's counters (``joins``, ``attempts_by_prompt``...)."""
        with urllib.request.urlopen(self.url + "/_fake/stats", timeout=5) as resp:
            data: dict[str, Any] = json.load(resp)
        return data

    def control(self, **changes: Any) -> dict[str, Any]:
        """Change the fake Space's config at run time (``POST /_fake/control``)."""
        request = urllib.request.Request(
            self.url + "/_fake/control", data=json.dumps(changes).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(request, timeout=5) as resp:
            data: dict[str, Any] = json.load(resp)
        return data


class _StderrReader:
    """Drains the child's stderr in a thread (a full pipe would block it); spots the ready line."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.lines: list[str] = []
        self.url: str | None = None
        self.ready = threading.Event()
        self._proc = proc
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._proc.stderr is not None
        for raw in self._proc.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            if self.url is None and line.startswith(READY_PREFIX):
                self.url = line[len(READY_PREFIX):].strip()
                self.ready.set()
        self.ready.set()  # EOF: the process ended (without the line, if url is None)

    def wait(self, timeout: float) -> str:
        if not self.ready.wait(timeout):
            raise RuntimeError(f"the fake Space was not ready in {timeout} s; "
                               f"stderr so far: {self.text()!r}")
        if self.url is None:
            raise RuntimeError(f"the fake Space exited ({self._proc.wait()}) "
                               f"without listening; stderr: {self.text()!r}")
        return self.url

    def text(self) -> str:
        return "\n".join(self.lines)

    def join(self) -> None:
        self._thread.join(5)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


@contextlib.contextmanager
def fake_space_process(
    *, latency: float = 0.4, chunks: int = 5, gradio: int = 4, ready_timeout: float = 20.0,
    extra_args: tuple[str, ...] = (),
) -> Iterator[FakeSpaceProcess]:
    """Serve the fake Space in a child process for the block; yields its handle.

    ``--port 0`` lets the child bind any free port itself (no pick-then-bind race);
    the ready line on its stderr gives the URL with the real port.
    """
    cmd = [sys.executable, "-m", "pipeline.fake_space", "--port", "0",
           "--latency", str(latency), "--chunks", str(chunks), "--gradio", str(gradio),
           *extra_args]
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, cwd=REPO)
    reader = _StderrReader(proc)
    try:
        url = reader.wait(ready_timeout)
        yield FakeSpaceProcess(url=url, proc=proc, reader=reader)
    finally:
        _stop(proc)
        reader.join()
        if proc.stderr is not None:
            proc.stderr.close()
