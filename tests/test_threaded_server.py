"""The test servers' thread base: errors reach the caller, and the thread always ends."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
from threaded_server import ThreadedServer


class Listener(ThreadedServer):
    name = "the listener"

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.fail = fail
        self.port = 0
        self.stop_seen = False

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        if self.fail:
            raise OSError(98, "Address already in use")
        server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield
        finally:
            server.close()
            await server.wait_closed()

    def stopped(self) -> None:
        self.stop_seen = True


def test_it_serves_for_the_block_and_stops_after_it() -> None:
    with Listener() as server:
        socket.create_connection(("127.0.0.1", server.port), timeout=5).close()
    assert server.stop_seen and not server._thread.is_alive()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=5)


def test_an_error_while_starting_is_raised_in_the_callers_thread() -> None:
    server = Listener(fail=True)
    with pytest.raises(RuntimeError, match=r"the listener did not start: .*Address already in use"):
        server.__enter__()
    server._thread.join(5)
    assert not server._thread.is_alive()
