"""The installed command as a real process: the demo, fake-space, and the progress bar on a TTY."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import socket
import struct
import subprocess
import sys
import termios
import time
import urllib.request
from importlib.resources import files
from pathlib import Path

from pipeline.fake_space import fake_answer

QWEN_BATCH = [sys.executable, "-m", "pipeline"]
REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_demo_runs_the_samples_offline_and_resumes(tmp_path: Path) -> None:
    result = subprocess.run([*QWEN_BATCH, "demo", "--output-dir", str(tmp_path), "--latency", "0.05"],
                            capture_output=True, text=True, timeout=60, cwd=REPO)
    assert result.returncode == 0, result.stderr
    records = [json.loads(x) for x in (tmp_path / "prompts.jsonl.completions.jsonl").read_text().splitlines()]
    bundled = files("pipeline") / "samples" / "prompts.jsonl"
    samples = [json.loads(x) for x in bundled.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["id"] for r in records) == sorted(s["id"] for s in samples)
    flaky = next(r for r in records if r["id"] == "flaky-connection")
    assert flaky["attempts"] == 2  # the fault was ridden out
    assert flaky["completion"] == fake_answer(flaky["prompt"], flaky["system"])
    assert "qwen-batch summary" in result.stderr
    assert result.stdout.count("\n") == 3  # three sample records on stdout
    again = subprocess.run([*QWEN_BATCH, "demo", "--output-dir", str(tmp_path)],
                           capture_output=True, text=True, timeout=60, cwd=REPO)
    assert again.returncode == 0
    assert f"nothing to do: all {len(samples)} rows already done" in again.stderr


def test_fake_space_command_serves_until_terminated() -> None:
    port = free_port()
    proc = subprocess.Popen([*QWEN_BATCH, "fake-space", "--port", str(port), "--gradio", "6"],
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/config", timeout=2) as resp:
                    config = json.load(resp)
                break
            except OSError:
                assert time.monotonic() < deadline, "fake-space did not start"
                time.sleep(0.1)
        assert config["api_prefix"] == "/gradio_api"
    finally:
        proc.terminate()
        assert proc.wait(10) == 0


def test_progress_bar_on_a_terminal_and_not_otherwise(tmp_path: Path) -> None:
    source = tmp_path / "p.jsonl"
    source.write_text("".join(json.dumps({"id": str(i), "prompt": f"q{i}"}) + "\n" for i in range(5)))
    port = free_port()
    space = subprocess.Popen([sys.executable, "-m", "pipeline.fake_space", "--port", str(port),
                              "--latency", "0.05"], stderr=subprocess.PIPE, text=True)
    try:
        assert space.stderr is not None and "listening" in space.stderr.readline()
        args = [*QWEN_BATCH, "run", str(source), "--url", f"http://127.0.0.1:{port}"]
        leader, follower = pty.openpty()
        fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))
        proc = subprocess.Popen([*args, "-o", str(tmp_path / "tty.jsonl")], stderr=follower,
                                stdout=subprocess.DEVNULL)
        os.close(follower)
        seen = b""
        while True:
            ready, _, _ = select.select([leader], [], [], 30)
            if not ready:
                break
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(30) == 0
        os.close(leader)
        text = seen.decode(errors="replace")
        assert "5/5" in text and "done=5 failed=0" in text  # tqdm drew the bar with our counters
        piped = subprocess.run([*args, "-o", str(tmp_path / "pipe.jsonl")], capture_output=True,
                               text=True, timeout=30)
        assert piped.returncode == 0
        assert "failed=" not in piped.stderr and "qwen-batch summary" in piped.stderr
    finally:
        space.terminate()
        space.wait(10)
