"""A stand-in Space on 127.0.0.1 that goes silent at a chosen phase of the Gradio queue protocol.

Outside the silenced phases it answers like a tiny Gradio 4 (root paths) or 6
(``/gradio_api``) Space: ``/config``, ``queue/join`` (an event id), ``queue/data``
(``process_starts``, one ``process_completed`` with the answer, ``close_stream``)
and ``/cancel``. A silenced phase sends nothing more and keeps the connection open
until the client leaves, the way a wedged proxy or server does:

* ``config_headers`` / ``join_headers`` / ``data_headers`` / ``cancel``: no response at all;
* ``config_body`` / ``join_body``: a 200 with a ``Content-Length`` and half the body;
* ``join_error_body`` / ``data_error_body``: a 502 whose body never ends;
* ``data_body``: the event stream's 200 headers, then not one byte (no heartbeat).

``queue_full`` makes that many first joins answer 503 "Queue is full"; a prompt
containing ``[404]`` makes its join answer 404 (a route that moved). ``hits``
counts requests per route.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from pipeline.fake_space.gradio_config import gradio_config_bytes
from pipeline.fake_space.wire import CLOSE_STREAM, Wire

PHASES = frozenset({"config_headers", "config_body", "join_headers", "join_body",
                    "join_error_body", "data_headers", "data_body", "data_error_body", "cancel"})


def answer_for(prompt: str) -> str:
    """What the stand-in answers to ``prompt``."""
    return f"Heard: {prompt}"


@dataclass
class SilentSpace:
    """The stand-in's behaviour (mutable while it runs) and what it saw."""

    major: int = 4
    silent: set[str] = field(default_factory=set)
    queue_full: int = 0
    hits: Counter[str] = field(default_factory=Counter)
    url: str = ""
    _jobs: dict[str, tuple[str, str]] = field(default_factory=dict)  # session -> (event, prompt)
    _hangs: set[asyncio.Future[None]] = field(default_factory=set)

    def __post_init__(self) -> None:
        unknown = self.silent - PHASES
        if unknown:
            raise ValueError(f"unknown phases {sorted(unknown)}; known: {sorted(PHASES)}")
        self.prefix = "/gradio_api" if self.major == 6 else ""
        self.wire = Wire(self.major)

    async def _hang(self) -> None:
        """Wait until the client leaves (the handler is cancelled) or the server stops."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._hangs.add(waiter)
        try:
            await waiter
        finally:
            self._hangs.discard(waiter)

    async def _half_body(self, request: web.Request, status: int, body: bytes,
                         content_type: str) -> web.StreamResponse:
        resp = web.StreamResponse(status=status, headers={"Content-Type": content_type})
        resp.content_length = len(body) + 1000  # promise more than will ever come
        await resp.prepare(request)
        await resp.write(body[: len(body) // 2])
        await self._hang()
        return resp

    def app(self) -> web.Application:
        app = web.Application()
        p = self.prefix
        app.router.add_get("/config", self._config)
        app.router.add_post(p + "/queue/join", self._join)
        app.router.add_get(p + "/queue/data", self._data)
        app.router.add_post(p + "/cancel", self._cancel)
        return app

    async def _config(self, request: web.Request) -> web.StreamResponse:
        self.hits["config"] += 1
        body = gradio_config_bytes(self.major, f"{request.scheme}://{request.host}")
        if "config_headers" in self.silent:
            await self._hang()
        if "config_body" in self.silent:
            return await self._half_body(request, 200, body, "application/json")
        return web.Response(body=body, content_type="application/json")

    async def _join(self, request: web.Request) -> web.StreamResponse:
        self.hits["join"] += 1
        body: Any = await request.json()
        prompt = str(body["data"][0])
        if "join_headers" in self.silent:
            await self._hang()
        if "join_error_body" in self.silent:
            return await self._half_body(request, 502, b"Bad Gateway" * 20, "text/plain")
        if self.queue_full > 0:
            self.queue_full -= 1
            return web.json_response({"detail": "Queue is full. Max size is 1 and size is 1."},
                                     status=503)
        if "[404]" in prompt:
            return web.json_response({"detail": "Not Found"}, status=404)
        event_id = uuid.uuid4().hex
        self._jobs[str(body["session_hash"])] = (event_id, prompt)
        answer = json.dumps({"event_id": event_id}).encode()
        if "join_body" in self.silent:
            return await self._half_body(request, 200, answer, "application/json")
        return web.Response(body=answer, content_type="application/json")

    async def _data(self, request: web.Request) -> web.StreamResponse:
        self.hits["data"] += 1
        if "data_headers" in self.silent:
            await self._hang()
        if "data_error_body" in self.silent:
            return await self._half_body(request, 502, b"Bad Gateway" * 20, "text/plain")
        job = self._jobs.pop(request.query.get("session_hash", ""), None)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream; charset=utf-8"})
        await resp.prepare(request)
        if "data_body" in self.silent:
            await self._hang()
        if job is None:
            await resp.write(self.wire.unknown_session().encode())
            return resp
        event_id, prompt = job
        history = self.wire.with_answer([], prompt, answer_for(prompt))
        frames = (self.wire.process_starts(event_id)
                  + self.wire.completed(event_id, ["", history, ""], 0.0, 0.0) + CLOSE_STREAM)
        await resp.write(frames.encode())
        return resp

    async def _cancel(self, request: web.Request) -> web.StreamResponse:
        self.hits["cancel"] += 1
        if "cancel" in self.silent:
            await self._hang()
        return web.json_response({"success": True})

    def release(self) -> None:
        """End every hanging handler (the server is stopping)."""
        for waiter in list(self._hangs):
            if not waiter.done():
                waiter.cancel()


@contextlib.asynccontextmanager
async def run_silent_space(space: SilentSpace) -> AsyncIterator[SilentSpace]:
    """Serve ``space`` on a free loopback port for the block; ``space.url`` is set."""
    runner = web.AppRunner(space.app(), handler_cancellation=True, access_log=None,
                           shutdown_timeout=0.5)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        space.url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        yield space
    finally:
        space.release()
        await runner.cleanup()
