"""Real servers for the proxy and TLS tests, all on 127.0.0.1.

* :func:`make_tls_files`: a throwaway CA and a server certificate for 127.0.0.1 (``openssl``).
* :class:`ThreadedTLSSpace`: the fake Space over HTTPS with that certificate, in a thread.
* :func:`mitmdump_or_skip` / :func:`mitmdump`: a real authenticating forward proxy
  (mitmproxy's ``mitmdump --proxyauth``) in its own virtualenv, built by
  ``.ci/mitmproxy-env.sh``; its path comes from ``QWEN_BATCH_MITMDUMP``. Without it the
  tests skip, unless ``QWEN_BATCH_REQUIRE_PROXY=1`` (CI), where they fail.
* :func:`run_cli`: ``python -m pipeline`` as a real process, bounded in time.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from aiohttp import web
from external_tools import executable_or_skip

from pipeline.fake_space import FakeSpace, FakeSpaceConfig

REPO = Path(__file__).resolve().parents[1]
# mitmproxy streams SSE only when told to: without this addon it buffers each response
# whole, and a queue/data stream would arrive at the end of the job.
STREAM_ADDON = "def responseheaders(flow):\n    flow.response.stream = True\n"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- TLS ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TLSFiles:
    ca: Path
    cert: Path
    key: Path


def make_tls_files(directory: Path) -> TLSFiles:
    """A new CA and a certificate for IP 127.0.0.1 signed by it, as PEM files in ``directory``."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("the openssl command is needed to make test certificates")
    ca, ca_key = directory / "ca.pem", directory / "ca.key"
    cert, key, csr = directory / "server.pem", directory / "server.key", directory / "server.csr"
    ext = directory / "server.ext"
    ext.write_text("subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n"
                   "keyUsage=critical,digitalSignature,keyEncipherment\n"
                   "extendedKeyUsage=serverAuth\nsubjectKeyIdentifier=hash\n"
                   "authorityKeyIdentifier=keyid,issuer\n")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True, timeout=60)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
        "-days", "2", "-subj", "/CN=qwen-batch test CA",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign")
    run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(csr),
        "-subj", "/CN=127.0.0.1")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
        "-CAcreateserial", "-out", str(cert), "-days", "2", "-extfile", str(ext))
    return TLSFiles(ca=ca, cert=cert, key=key)


class ThreadedTLSSpace:
    """The fake Space (Gradio 4 shape, fast) over HTTPS on 127.0.0.1, served from a thread."""

    def __init__(self, tls: TLSFiles) -> None:
        self._context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._context.load_cert_chain(tls.cert, tls.key)
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self.url = ""
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        space = FakeSpace(FakeSpaceConfig(gradio_major=4, latency=0.02, chunks=4))
        runner = web.AppRunner(space.app, handler_cancellation=True, access_log=None,
                               shutdown_timeout=2.0)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=self._context)
            await site.start()
            self.url = f"https://127.0.0.1:{runner.addresses[0][1]}"
            self._ready.set()
            await self._stop.wait()
        finally:
            await runner.cleanup()

    def __enter__(self) -> ThreadedTLSSpace:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the TLS fake Space did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


# -- mitmproxy ------------------------------------------------------------------------------------


def mitmdump_or_skip() -> str:
    """The mitmdump named by QWEN_BATCH_MITMDUMP; skip if unset, fail under QWEN_BATCH_REQUIRE_PROXY=1."""
    return executable_or_skip("QWEN_BATCH_MITMDUMP", "QWEN_BATCH_REQUIRE_PROXY",
                              "real proxy for the proxy tests", ".ci/mitmproxy-env.sh")


@dataclass
class Mitmdump:
    """A running mitmdump: where it listens and what it logged."""

    port: int
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def url(self, user: str, password: str) -> str:
        """The proxy URL with these credentials (``password`` as written in the URL)."""
        return f"http://{user}:{password}@127.0.0.1:{self.port}"


@contextlib.contextmanager
def mitmdump(executable: str, directory: Path, auth: str) -> Iterator[Mitmdump]:
    """``mitmdump --proxyauth AUTH`` on a free port of 127.0.0.1 for the block.

    ``--ignore-hosts '.*'`` passes HTTPS CONNECT tunnels through untouched (no
    interception, so the client sees the Space's own certificate); plain HTTP is
    proxied, streamed by :data:`STREAM_ADDON`.
    """
    addon = directory / "stream_addon.py"
    addon.write_text(STREAM_ADDON)
    log_path = directory / "mitmdump.log"
    port = free_port()
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [executable, "--listen-host", "127.0.0.1", "--listen-port", str(port),
             "--proxyauth", auth, "--ignore-hosts", ".*", "-s", str(addon),
             "--set", f"confdir={directory / 'mitmproxy-conf'}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mitmdump exited ({proc.returncode}): {log_path.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"mitmdump did not listen in 60 s: {log_path.read_text()}")
            time.sleep(0.1)
        yield Mitmdump(port=port, log_path=log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


# -- the command line as a process ---------------------------------------------------------------


@dataclass
class CliRun:
    code: int
    stdout: str
    stderr: str
    elapsed: float


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 120.0,
            cwd: Path | None = None) -> CliRun:
    """``python -m pipeline ARGS`` with ``env`` added to this process's environment."""
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})},
                          cwd=cwd or REPO, stdin=subprocess.DEVNULL)
    return CliRun(proc.returncode, proc.stdout, proc.stderr, time.monotonic() - started)
