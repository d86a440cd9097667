"""Screenshots of ``qwen-batch run`` on a terminal: a pseudo-terminal, a slow fake Space, text out.

:func:`capture_run` runs the real command with its stderr on a pty (so the progress bar
draws, as on a user's terminal) against the fake Space in a child process, and keeps the
screen as it was mid-run and at the end. :func:`render` turns the raw bytes into the
lines a terminal would show (``\\r`` redraws a line; tqdm uses nothing else at one bar).

Run as a script to refresh the screenshot in the docs::

    python tests/pty_screen.py docs/progress.txt
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import select
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the sibling helpers importable
    sys.path.insert(0, str(Path(__file__).resolve().parent))

from fake_space_process import fake_space_process

REPO = Path(__file__).resolve().parents[1]
COLUMNS = 110

# The first prompts meet faults of the fake Space (a "[fault:NAME:N]" marker fails the first
# N attempts of that prompt): one row fails for good, two are retried, one queue-full cut
# halves the concurrency level. The rest are plain rows.
FAULTY = ["[fault:app_error:9] never answered", "[fault:app_error:1] answered on the 2nd try",
          "[fault:cut:1] cut once, then answered", "[fault:queue_full:1] queue full once"]
BAR = re.compile(r"qwen-batch: +(\d+)%\|.*\| (\d+)/(\d+), done=(\d+) failed=(\d+) "
                 r"retries=(\d+) conc=(\d+)/(\d+)")


@dataclass
class Capture:
    mid_run: str
    """The bar's line at the first redraw past half way with a failure and a retry."""
    final: list[str]
    """The screen at the end: the bar's last state and the summary."""
    exit_code: int


def render(raw: bytes) -> list[str]:
    """The lines a terminal shows for ``raw``: each ``\\r`` starts the line over."""
    lines = []
    for line in raw.decode("utf-8", errors="replace").replace("\r\n", "\n").split("\n"):
        screen = ""
        for part in line.split("\r"):
            screen = part + screen[len(part):]
        lines.append(screen.rstrip())
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _mid_run(raw: bytes) -> str | None:
    for redraw in re.split(r"[\r\n]", raw.decode("utf-8", errors="replace")):
        match = BAR.search(redraw)
        if match is None:
            continue
        n, total, failed, retries = (int(match.group(i)) for i in (2, 3, 5, 6))
        if failed and retries and total // 2 <= n < total:
            return redraw.rstrip()
    return None


def capture_run(workdir: Path, rows: int = 40, timeout: float = 60.0) -> Capture:
    """Run ``qwen-batch run`` on a pty against a slow fake Space; every wait bounded."""
    source = workdir / "prompts.jsonl"
    prompts = FAULTY + [f"question {i}" for i in range(rows - len(FAULTY))]
    source.write_text("".join(json.dumps({"id": f"q{i}", "prompt": p}) + "\n"
                              for i, p in enumerate(prompts)))
    with fake_space_process(latency=0.3, chunks=5) as space:
        args = [sys.executable, "-m", "pipeline", "run", str(source), "-o",
                str(workdir / "out.jsonl"), "--url", space.url, "--concurrency", "4",
                "--max-attempts", "2", "--retry-delay", "0.05", "--retry-max-delay", "0.1"]
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, COLUMNS, 0, 0))
        env = {**os.environ, "COLUMNS": str(COLUMNS)}
        proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=follower, cwd=workdir, env=env)
        os.close(follower)
        raw = b""
        end = time.monotonic() + timeout
        try:
            while time.monotonic() < end:
                ready, _, _ = select.select([leader], [], [], max(0.0, end - time.monotonic()))
                if not ready:
                    break
                try:
                    chunk = os.read(leader, 4096)
                except OSError:  # the child closed the terminal (EIO on Linux)
                    break
                if not chunk:
                    break
                raw += chunk
            code = proc.wait(max(1.0, end - time.monotonic()))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)
            os.close(leader)
    mid = _mid_run(raw)
    if mid is None:
        raise AssertionError(f"no mid-run bar with a failure and a retry in {render(raw)!r}")
    return Capture(mid_run=mid, final=render(raw), exit_code=code)


def main(argv: list[str]) -> int:
    import tempfile

    target = Path(argv[1]) if len(argv) > 1 else REPO / "docs" / "progress.txt"
    with tempfile.TemporaryDirectory() as tmp:
        capture = capture_run(Path(tmp))
    tmp_prefix = re.compile(re.escape(str(Path(tmp))) + r"/?")
    final = [tmp_prefix.sub("", line) for line in capture.final]
    target.write_text(
        "# qwen-batch run on a terminal (110 columns), against `qwen-batch fake-space --latency 0.3`\n"
        "# with 40 rows, 4 of them meeting faults; regenerate: python tests/pty_screen.py\n\n"
        "## mid-run\n\n" + capture.mid_run + "\n\n## at the end\n\n" + "\n".join(final) + "\n",
        encoding="utf-8")
    print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
