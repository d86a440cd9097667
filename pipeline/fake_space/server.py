"""The HTTP side of the fake Space: an aiohttp app speaking the Gradio queue protocol.

:class:`FakeSpace` adds the routes to :class:`~pipeline.fake_space.engine.Engine`;
:func:`run_fake_space` serves one on a loopback port for tests, :func:`serve`
runs one until interrupted (CLI, benchmarks in a separate process).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .engine import CUT, DONE, Engine
from .gradio_config import gradio_config_bytes
from .model import MUTABLE_FIELDS, FakeSpaceConfig
from .wire import CLOSE_STREAM


def _json(obj: Any, status: int = 200) -> web.Response:
    body = json.dumps(obj, separators=(",", ":"), ensure_ascii=False)
    return web.Response(status=status, text=body, content_type="application/json")


def _bad_gateway() -> web.Response:
    # What the Hugging Face proxy answers while the Space is down.
    return web.Response(status=502, text="Bad Gateway", content_type="text/plain")


# Pause between the last frame and a cut. aiohttp's client (and others) drop
# data still unread in their buffer once they see the connection reset, so without
# it the frames sent just before a cut would be lost at random.
_CUT_GRACE = 0.05


async def _cut(request: web.Request) -> None:
    """Drop the connection without the terminating chunk, after a short grace."""
    try:
        await asyncio.sleep(_CUT_GRACE)
    finally:
        # close() (not abort()) flushes what was written, then drops the
        # connection, so the body ends like curl's "(18) transfer closed with
        # outstanding read data remaining". aiohttp's own write_eof then fails with
        # ConnectionResetError, which it ignores silently.
        if request.transport is not None:
            request.transport.close()


class FakeSpace(Engine):
    """A local stand-in for the Qwen2-72B-Instruct Space; owns ``app``, ``config``, ``stats``.

    ``config`` may be changed while it runs (directly, or by ``POST /_fake/control``);
    ``gradio_major`` and ``seed`` are read once, at construction.
    """

    def __init__(self, config: FakeSpaceConfig | None = None) -> None:
        super().__init__(config)
        self._config_cache: dict[str, bytes] = {}
        self.prefix = "/gradio_api" if self.config.gradio_major == 6 else ""
        app = web.Application(middlewares=[self._hf_host])
        self._wake_at: float | None = None
        p = self.prefix
        app.router.add_get("/config", self._h_config)
        app.router.add_post(p + "/queue/join", self._h_join)
        app.router.add_get(p + "/queue/data", self._h_data)
        app.router.add_post(p + "/cancel", self._h_cancel)
        app.router.add_get("/_fake/stats", self._h_stats)
        app.router.add_post("/_fake/control", self._h_control)
        # FastAPI's answer to any other path (e.g. root /queue/join on 6.x).
        app.router.add_route("*", "/{tail:.*}", self._h_not_found)
        app.on_shutdown.append(self._on_shutdown)
        self.app = app

    # HTTP handlers -------------------------------------------------------------

    @web.middleware
    async def _hf_host(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Answer like the Hugging Face host while the Space is not running.

        The pages are stand-ins written for this fake (the real wording was not
        available offline); qwen-batch recognises them by their key phrases.
        """
        state = self.config.hf_state
        if state == "running" or request.path.startswith("/_fake/"):
            return await handler(request)
        if state == "sleeping":
            now = asyncio.get_running_loop().time()
            if self._wake_at is None:
                self._wake_at = now + self.config.wake_after  # a request wakes it up
            if now >= self._wake_at:
                self.config.hf_state, self._wake_at = "running", None
                return await handler(request)
        pages = {
            "sleeping": (503, "This Space is sleeping. It is starting up, please wait."),
            "building": (503, "Building the Space. Please come back in a few minutes."),
            "error": (503, "Runtime error: the Space crashed at start-up."),
            "gone": (404, "404: Space not found."),
        }
        status, text = pages[state]
        if state == "sleeping":
            text = "This Space is sleeping. Waking it up, please wait."
        return web.Response(status=status, content_type="text/html",
                            text=f"<!doctype html><html><body><h1>{text}</h1></body></html>")

    async def _h_not_found(self, request: web.Request) -> web.Response:
        if self.config.down:  # the proxy answers for every path of a Space that is down
            return _bad_gateway()
        return _json({"detail": "Not Found"}, 404)

    async def _h_config(self, request: web.Request) -> web.Response:
        if self.config.down:
            return _bad_gateway()
        root = f"{request.scheme}://{request.host}"
        body = self._config_cache.get(root)
        if body is None:
            if len(self._config_cache) > 64:  # Host headers are client-chosen
                self._config_cache.clear()
            body = self._config_cache[root] = gradio_config_bytes(self.wire.major, root)
        return web.Response(body=body, content_type="application/json")

    async def _h_stats(self, request: web.Request) -> web.Response:
        return _json(self.stats.to_dict())

    async def _h_control(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _json({"detail": "body is not JSON"}, 400)
        if not isinstance(body, dict):
            return _json({"detail": "body must be a JSON object"}, 400)
        bad = sorted(set(body) - MUTABLE_FIELDS)
        if bad:
            return _json({"detail": f"cannot change {bad}; allowed: {sorted(MUTABLE_FIELDS)}"}, 400)
        try:
            self.update_config(**body)
        except (TypeError, ValueError) as exc:
            return _json({"detail": str(exc)}, 400)
        return _json(self.config.to_dict())

    async def _json_body(self, request: web.Request) -> Any:
        """The request's JSON body, or the response gradio gives when down or unparsable."""
        if self.config.down:
            return _bad_gateway()
        try:
            return await request.json()
        except ValueError:
            return _json({"detail": [{"type": "json_invalid", "msg": "JSON decode error"}]}, 422)

    async def _h_join(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        if not isinstance(body, dict) or "data" not in body:
            return _json({"detail": [{"type": "missing", "loc": ["body", "data"]}]}, 422)
        key = body.get("session_hash")
        if not key:
            return _json({"detail": "Session hash not found."}, 400)
        if not isinstance(key, str):
            loc = [{"type": "string_type", "loc": ["body", "session_hash"]}]
            return _json({"detail": loc}, 422)
        fn_index = body.get("fn_index")
        if fn_index is None:
            return _json({"detail": "No function index provided."}, 400)
        if type(fn_index) is not int or not 0 <= fn_index <= 3:
            # gradio: KeyError in route_utils.get_fn -> bare 500
            return web.Response(status=500, text="Internal Server Error")
        result = self.admit(key, fn_index, body["data"])
        if isinstance(result, tuple):
            return _json({"detail": result[1]}, result[0])
        return web.Response(text=f'{{"event_id":"{result}"}}', content_type="application/json")

    async def _h_cancel(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        if isinstance(body, web.Response):
            return body
        event_id = body.get("event_id") if isinstance(body, dict) else None
        if isinstance(event_id, str):
            self.cancel(event_id)
        # gradio answers the same whether or not the event existed
        return _json({"success": True})

    async def _h_data(self, request: web.Request) -> web.StreamResponse:
        if self.config.down:
            return _bad_gateway()
        resp = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream; charset=utf-8",
                "Cache-Control": "no-cache",
            }
        )
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        session = self.attach(request.query.get("session_hash", ""))
        if session is None:
            # gradio: 200, one unexpected_error, then the connection is dropped.
            with contextlib.suppress(ConnectionError):
                await resp.write(self.wire.unknown_session().encode())
            await _cut(request)
            return resp
        closed = False
        queue = session.queue
        try:
            while True:
                kind, text = await queue.get()
                parts: list[str] = []
                end = False
                while True:  # batch every frame already queued into one write
                    if text:
                        parts.append(text)
                    if kind == DONE:
                        session.pending -= 1
                        if session.pending == 0:
                            parts.append(CLOSE_STREAM)
                            closed = end = True
                            break
                    elif kind == CUT:
                        end = True
                        break
                    if queue.empty():
                        break
                    kind, text = queue.get_nowait()
                if parts:
                    await resp.write("".join(parts).encode())
                if end:
                    break
        except ConnectionError:
            closed = False  # the client went away; detach() stops its jobs
        finally:
            # also reached on CancelledError (handler cancellation on disconnect)
            self.detach(session, closed)
        if not closed:
            await _cut(request)
        return resp

    async def _on_shutdown(self, app: web.Application) -> None:
        self.shutdown()


@dataclass
class RunningFakeSpace:
    """A fake Space listening on a socket, as yielded by :func:`run_fake_space`."""

    url: str
    """Base URL, e.g. ``http://127.0.0.1:41234`` (no trailing slash)."""
    space: FakeSpace
    port: int


@asynccontextmanager
async def run_fake_space(
    config: FakeSpaceConfig | None = None, host: str = "127.0.0.1", port: int = 0
) -> AsyncIterator[RunningFakeSpace]:
    """Serve a new :class:`FakeSpace` on ``host:port`` (0 = any free port) for the block."""
    space = FakeSpace(config)
    # handler_cancellation: a client that drops its data stream is noticed at once
    # (not at the next heartbeat), so its jobs free their slots at once.
    runner = web.AppRunner(
        space.app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = int(runner.addresses[0][1])
        yield RunningFakeSpace(url=f"http://{_url_host(host)}:{bound}", space=space, port=bound)
    finally:
        await runner.cleanup()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def serve(config: FakeSpaceConfig, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Run a fake Space until SIGINT/SIGTERM (blocking).

    Prints ``fake Space listening on http://HOST:PORT`` to stderr once the socket
    listens, so a parent process can wait for that line.
    """

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):  # Windows
                loop.add_signal_handler(sig, stop.set)
        async with run_fake_space(config, host, port) as running:
            print(f"fake Space listening on {running.url}", file=sys.stderr, flush=True)
            await stop.wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(main())
