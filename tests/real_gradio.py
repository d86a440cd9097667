"""Helpers for the integration tests against a *real* gradio server (tests/test_real_gradio.py).

The server is tests/gradio_space_app.py, run by the python of a separate gradio virtualenv
(built by .ci/gradio-envs.sh; its path comes from QWEN_BATCH_GRADIO6_PYTHON /
QWEN_BATCH_GRADIO4_PYTHON).  Everything here talks to 127.0.0.1 only.

* :func:`start_gradio_server` / :class:`GradioServer`: the subprocess, on a free port.
* :func:`gradio_python_or_skip`: env var -> interpreter path; skip, or fail under
  QWEN_BATCH_REQUIRE_GRADIO=1.
* :func:`answer_for`: what the fake ``model_chat`` streams, to compute expected text.
* :func:`config_skeleton` / :func:`expected_skeleton`: the ids and wiring of ``/config`` that must
  match the captures in tests/data/gradio-captures/*_config.json.
* :func:`raw_queue_call`: a minimal, independent sse_v3 client (join + data + diffs) on aiohttp,
  used to prove the server works without the code under test.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from captures import CAPTURES_DIR
from external_tools import executable_or_skip

TESTS_DIR = Path(__file__).resolve().parent
APP_PATH = TESTS_DIR / "gradio_space_app.py"
DEFAULT_SYSTEM = "You are a helpful assistant."
STARTUP_TIMEOUT_S = 90.0


# --- keep in sync with tests/gradio_space_app.py (answer_for, split_words) --------------------
# The app cannot import this module (it runs in the gradio venv, without pytest or pipeline) and
# this module must not import gradio, so the two copies are duplicated on purpose.
def answer_for(query: str, system: str) -> str:
    """The exact full reply the fake ``model_chat`` streams for ``query`` under ``system``.

    Repeated words ("no no no") and non-ASCII ("—", "é", "✓") on purpose, so clients that
    de-duplicate fragments or mis-decode UTF-8 show up.  Caveat: gradio's Chatbot (4.44.1 and
    6.x) runs ``inspect.cleandoc`` on its strings, so keep test queries single-line without
    leading whitespace (indented multi-line queries would come back dedented).
    """
    return f"Echo: {query} | system: {system} | no no no — café ✓"


def split_words(text: str) -> list[str]:
    """The app's streaming units: words with their *leading* whitespace; "".join() == text."""
    return re.findall(r"\s*\S+(?:\s+$)?", text) or ([text] if text else [])


# -----------------------------------------------------------------------------------------------


# ----------------------------------------------------------------------------- interpreter / skip
def gradio_python_or_skip(env_var: str) -> str:
    """The gradio interpreter named by ``env_var``; skip if unset, or fail under REQUIRE.

    With ``QWEN_BATCH_REQUIRE_GRADIO=1`` (CI) a missing or broken interpreter is a test *failure*,
    so the real-server tests can never be skipped silently.
    """
    return executable_or_skip(env_var, "QWEN_BATCH_REQUIRE_GRADIO",
                              "gradio interpreter for the real-server tests", ".ci/gradio-envs.sh")


# ------------------------------------------------------------------------------------ the server
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _get_json(url: str, timeout: float = 2.0) -> tuple[int, Any]:
    with _NO_PROXY_OPENER.open(url, timeout=timeout) as response:
        return response.status, json.loads(response.read().decode("utf-8"))


@dataclass
class GradioServer:
    """A running tests/gradio_space_app.py subprocess."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path
    startup_s: float = 0.0
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """Base URL, without trailing slash (``/config`` is at ``url + "/config"``)."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def version(self) -> str:
        return str(self.config.get("version", ""))

    @property
    def major(self) -> int:
        return int(self.version.split(".")[0]) if self.version else 0

    def log_tail(self, max_chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-max_chars:]
        except OSError:
            return ""

    def stop(self) -> None:
        """Terminate the server (SIGTERM), SIGKILL it if still alive after 5 s."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        with contextlib.suppress(OSError):
            self.log_path.unlink()

    def __enter__(self) -> GradioServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_gradio_server(
    python: str,
    *,
    port: int | None = None,
    env_overrides: dict[str, str] | None = None,
    timeout: float = STARTUP_TIMEOUT_S,
) -> GradioServer:
    """Start tests/gradio_space_app.py with ``python`` on 127.0.0.1 and wait for ``/config``.

    ``port=None`` picks a free port (and retries twice with another one if the server dies
    early because the port was taken in between).  ``env_overrides`` go on top of os.environ, e.g.
    ``{"GRADIO_FAKE_WORD_DELAY": "0"}``, ``{"GRADIO_FAKE_MAX_SIZE": "2"}``.  On timeout or early
    exit the process is killed and RuntimeError carries the tail of its output.
    """
    attempts = 3 if port is None else 1
    for attempt in range(1, attempts + 1):
        try:
            return _start_once(python, port or free_port(), env_overrides or {}, timeout)
        except _EarlyExit as exc:
            port_clash = "address already in use" in str(exc).lower() or "empty port" in str(exc)
            if attempt == attempts or not port_clash:
                raise
    raise AssertionError("unreachable")


class _EarlyExit(RuntimeError):
    pass


def _start_once(
    python: str, port: int, env_overrides: dict[str, str], timeout: float
) -> GradioServer:
    env = dict(os.environ)
    env.update(
        GRADIO_ANALYTICS_ENABLED="False",
        PYTHONUNBUFFERED="1",
        PYTHONDONTWRITEBYTECODE="1",
        # Local traffic must never go through a proxy (gradio 4 self-checks via httpx).
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    env.pop("PYTHONPATH", None)  # the app must not see the project's packages
    env.update({k: str(v) for k, v in env_overrides.items()})
    fd, log_name = tempfile.mkstemp(prefix=f"gradio-app-{port}-", suffix=".log")
    log_path = Path(log_name)
    started = time.monotonic()
    with os.fdopen(fd, "wb") as log_file:
        # A file, not a pipe: a full pipe would block the server.
        process = subprocess.Popen(
            [python, str(APP_PATH), "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=str(TESTS_DIR),
            env=env,
        )
    server = GradioServer(process=process, port=port, log_path=log_path)
    deadline = started + timeout
    last_error: Exception | None = None
    while True:
        code = process.poll()
        if code is not None:
            tail = server.log_tail()
            server.stop()
            raise _EarlyExit(
                f"gradio app ({python}) exited with code {code} before /config answered on "
                f"port {port}; output tail:\n{tail}"
            )
        try:
            status, config = _get_json(f"{server.url}/config")
            if status == 200:
                server.config = config
                server.startup_s = time.monotonic() - started
                return server
        except (urllib.error.URLError, ConnectionError, OSError, ValueError) as exc:
            last_error = exc  # not listening yet; reported if it never comes up
        if time.monotonic() > deadline:
            tail = server.log_tail()
            server.process.kill()
            server.process.wait(timeout=5)
            server.stop()
            raise RuntimeError(
                f"gradio app ({python}) did not answer GET /config on port {port} within "
                f"{timeout:.0f} s (last error: {last_error}); output tail:\n{tail}"
            )
        time.sleep(0.2)


# -------------------------------------------------------------------------------- /config shape
def config_skeleton(config: dict[str, Any]) -> dict[str, Any]:
    """The parts of a ``/config`` the client depends on: ids, types, wiring, layout, prefix."""
    layout = config.get("layout") or config["page"][""]["layout"]
    components = []
    for component in sorted(config["components"], key=lambda c: c["id"]):
        props = component.get("props", {})
        entry: dict[str, Any] = {"id": component["id"], "type": component["type"]}
        for key in ("label", "value", "visible", "type"):
            if props.get(key) is not None:
                entry["format" if key == "type" else key] = props[key]
        components.append(entry)
    dependencies = [
        {
            "id": dep["id"],
            "targets": [list(t) for t in dep["targets"]],
            "inputs": dep["inputs"],
            "outputs": dep["outputs"],
            "api_name": dep["api_name"],
            "generator": dep["types"]["generator"],
            "queue": dep["queue"],
        }
        for dep in config["dependencies"]
    ]
    return {
        "api_prefix": config.get("api_prefix", ""),
        "protocol": config.get("protocol"),
        "components": components,
        "dependencies": dependencies,
        "layout": layout,
    }


def expected_skeleton(major: int) -> dict[str, Any]:
    """``config_skeleton`` of the captures (gradio4.44.1_config.json / gradio6.31.0_config.json).

    Written out here so the tests need no access to the shared captures; test_real_gradio.py checks it
    against the capture files when they are present.
    """
    title = "<center><font size=8>Qwen2-72B-instruct Chat (local mirror)</center>"
    chatbot: dict[str, Any] = {
        "id": 10,
        "type": "chatbot",
        "label": "qwen2-72B-instruct",
        "value": [],
        "visible": True,
    }
    if major < 6:
        chatbot["format"] = "tuples"  # 6.x has no Chatbot(type=...): messages only
    chat_io = {"inputs": [11, 10, 8], "outputs": [11, 10, 4], "generator": True, "queue": True}
    return {
        "api_prefix": "" if major < 5 else "/gradio_api",
        "protocol": "sse_v3",
        "components": [
            {"id": 1, "type": "markdown", "value": title, "visible": True},
            {"id": 2, "type": "row", "visible": True},
            {"id": 3, "type": "column", "visible": True},
            {
                "id": 4,
                "type": "textbox",
                "label": "System",
                "value": DEFAULT_SYSTEM,
                "visible": True,
                "format": "text",
            },
            {"id": 5, "type": "form"},
            {"id": 6, "type": "column", "visible": True},
            {
                "id": 7,
                "type": "button",
                "value": "Set system prompt and clear history",
                "visible": True,
            },
            {
                "id": 8,
                "type": "textbox",
                "value": DEFAULT_SYSTEM,
                "visible": False,
                "format": "text",
            },
            {"id": 9, "type": "form"},
            chatbot,
            {"id": 11, "type": "textbox", "label": "Input", "visible": True, "format": "text"},
            {"id": 12, "type": "row", "visible": True},
            {"id": 13, "type": "button", "value": "Clear history", "visible": True},
            {"id": 14, "type": "button", "value": "Send", "visible": True},
            {"id": 15, "type": "form"},
        ],
        "dependencies": [
            {"id": 0, "targets": [[11, "submit"]], "api_name": "model_chat", **chat_io},
            {"id": 1, "targets": [[14, "click"]], "api_name": "model_chat_1", **chat_io},
            {
                "id": 2,
                "targets": [[13, "click"]],
                "inputs": [],
                "outputs": [11, 10],
                "api_name": "clear_session",
                "generator": False,
                "queue": True,
            },
            {
                "id": 3,
                "targets": [[7, "click"]],
                "inputs": [4],
                "outputs": [8, 4, 10],
                "api_name": "modify_system_session",
                "generator": False,
                "queue": True,
            },
        ],
        "layout": {
            "id": 0,
            "children": [
                {"id": 1},
                {
                    "id": 2,
                    "children": [
                        {"id": 3, "children": [{"id": 5, "children": [{"id": 4}]}]},
                        {"id": 6, "children": [{"id": 7}]},
                        {"id": 9, "children": [{"id": 8}]},
                    ],
                },
                {"id": 10},
                {"id": 15, "children": [{"id": 11}]},
                {"id": 12, "children": [{"id": 13}, {"id": 14}]},
            ],
        },
    }


def capture_config_path(major: int) -> Path:
    return CAPTURES_DIR / ("gradio4.44.1_config.json" if major == 4 else "gradio6.31.0_config.json")


# ------------------------------------------------------------------- independent raw sse_v3 client
def apply_diff(value: Any, edits: list[list[Any]]) -> Any:
    """Apply gradio's sse_v2+ edit ops ``[op, path, value]`` (replace/append/add/delete)."""
    for op, path, new in edits:
        if not path:
            if op == "replace":
                value = new
            elif op == "append":
                value = value + new
            else:
                raise ValueError(f"unsupported root op {op!r}")
            continue
        parent = value
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        if op == "replace":
            parent[last] = new
        elif op == "append":
            parent[last] = parent[last] + new
        elif op == "add":
            if isinstance(parent, list):
                parent.insert(int(last), new)
            else:
                parent[last] = new
        elif op == "delete":
            del parent[int(last) if isinstance(parent, list) else last]
        else:
            raise ValueError(f"unknown diff op {op!r}")
    return value


def chatbot_answer(chatbot: list[Any]) -> str:
    """The last assistant text of a chatbot value, tuples (4.x) or messages (6.x)."""
    if not chatbot:
        return ""
    last = chatbot[-1]
    if isinstance(last, (list, tuple)):
        return str(last[1] or "")
    for message in reversed(chatbot):
        if message.get("role") == "assistant":
            content = message.get("content")
            if isinstance(content, str):
                return content
            return "".join(part.get("text") or "" for part in content if isinstance(part, dict))
    return ""


@dataclass
class RawResult:
    event_id: str
    messages: list[dict[str, Any]]  # every decoded SSE message, in order
    outputs: list[Any] | None  # final outputs of a successful process_completed
    partial_answers: list[str]  # answer after each process_generating
    success: bool

    @property
    def answer(self) -> str:
        return chatbot_answer(self.outputs[1]) if self.outputs else ""

    def msgs(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("msg") == kind]


async def raw_queue_call(
    session: Any,  # aiohttp.ClientSession
    url: str,
    api_prefix: str,
    query: str,
    system: str = DEFAULT_SYSTEM,
    history: list[Any] | None = None,
    fn_index: int = 0,
) -> RawResult:
    """One ``model_chat`` call the way the browser does it: join, then read the session stream."""
    session_hash = secrets.token_hex(6)
    join = {
        "data": [query, history or [], system],
        "event_data": None,
        "fn_index": fn_index,
        "trigger_id": 11,
        "session_hash": session_hash,
    }
    async with session.post(f"{url}{api_prefix}/queue/join", json=join) as response:
        assert response.status == 200, (response.status, await response.text())
        event_id = (await response.json())["event_id"]
    messages: list[dict[str, Any]] = []
    partials: list[str] = []
    outputs: list[Any] | None = None
    current: list[Any] | None = None
    success = False
    async with session.get(
        f"{url}{api_prefix}/queue/data", params={"session_hash": session_hash}
    ) as response:
        assert response.status == 200, (response.status, await response.text())
        assert response.headers["content-type"].startswith("text/event-stream")
        async for raw_line in response.content:
            line = raw_line.decode("utf-8").rstrip("\r\n")
            if not line.startswith("data:"):
                continue
            message = json.loads(line[5:].strip())
            messages.append(message)
            kind = message.get("msg")
            if kind == "process_generating":
                data = message["output"]["data"]
                if current is None:
                    current = data  # first message: full values
                else:
                    current = [apply_diff(v, e) for v, e in zip(current, data, strict=True)]
                partials.append(chatbot_answer(current[1]))
            elif kind == "process_completed":
                success = bool(message.get("success"))
                outputs = message["output"].get("data") if success else None
            elif kind == "close_stream":
                break
            elif kind == "unexpected_error":
                raise AssertionError(f"unexpected_error: {message}")
    return RawResult(event_id, messages, outputs, partials, success)


def main() -> None:  # pragma: no cover - manual use: python tests/real_gradio.py PYTHON
    """Start the app with the given interpreter, print its URL and startup time, stop on Enter."""
    with start_gradio_server(sys.argv[1]) as server:
        print(f"gradio {server.version} at {server.url} (ready in {server.startup_s:.1f} s)")
        input("Enter to stop ")


if __name__ == "__main__":  # pragma: no cover
    main()
