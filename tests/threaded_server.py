"""A server on its own event loop in a daemon thread, for synchronous callers (CliRunner).

Subclasses say how to run (:meth:`ThreadedServer.running`, an async context manager
that is entered on the thread's loop); this class owns the thread, the loop, the
wait for readiness and the stop. An error while starting or serving is raised again
in the caller's thread, by ``__enter__`` or ``__exit__``.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import AbstractAsyncContextManager
from typing import Any, TypeVar

START_WAIT = 10.0
STOP_WAIT = 10.0

_Server = TypeVar("_Server", bound="ThreadedServer")


class ThreadedServer:
    """Base class: ``with Sub(...) as server:`` serves in a thread for the block."""

    name = "the server"

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def running(self) -> AbstractAsyncContextManager[Any]:
        """Start serving on entry (setting the subclass's attributes, e.g. ``url``), stop on exit."""
        raise NotImplementedError

    def stopped(self) -> None:
        """Called on the loop once serving has stopped (e.g. to look for leftover tasks)."""

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._serve())
        except BaseException as exc:  # raised again by __enter__ / __exit__
            self._error = exc
            self._ready.set()
        finally:
            self._loop.close()

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with self.running():
            self._ready.set()
            await self._stop.wait()
        self.stopped()

    def __enter__(self: _Server) -> _Server:
        self._thread.start()
        if not self._ready.wait(START_WAIT) or self._error is not None:
            raise RuntimeError(f"{self.name} did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(STOP_WAIT)
        if self._thread.is_alive():
            raise RuntimeError(f"{self.name} did not stop within {STOP_WAIT:g} s")
        if self._error is not None:
            raise self._error
