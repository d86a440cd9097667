"""Shared fixtures: make the test helpers importable."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


import asyncio
import threading
from collections.abc import Iterator

import pytest

from pipeline.fake_space import FakeSpace, FakeSpaceConfig, run_fake_space


class ThreadedFakeSpace:
    """The fake Space on its own event loop in a thread, for synchronous callers (CliRunner)."""

    def __init__(self, config: FakeSpaceConfig) -> None:
        self._config = config
        self._ready = threading.Event()
        self._loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self.url = ""
        self.space: FakeSpace | None = None
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._serve())

    async def _serve(self) -> None:
        self._stop = asyncio.Event()
        async with run_fake_space(self._config) as running:
            self.url, self.space = running.url, running.space
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ThreadedFakeSpace:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake Space did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


PROXY_VARIABLES = (*(f"{name}_{suffix}" for name in ("HTTP", "HTTPS", "ALL", "NO")
                      for suffix in ("PROXY", "proxy")), "QWEN_BATCH_PROXY", "QWEN_BATCH_CA_BUNDLE")


@pytest.fixture(autouse=True)
def no_proxy_from_the_developer(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test talks to 127.0.0.1 directly: a proxy set in the developer's shell must not
    route (or break) the suite. Tests that want a proxy variable set it themselves; child
    processes inherit the cleaned environment."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def threaded_space() -> Iterator[ThreadedFakeSpace]:
    """A fake Space (Gradio 4 shape, fast) served from a background thread."""
    with ThreadedFakeSpace(FakeSpaceConfig(gradio_major=4, latency=0.02, chunks=4)) as space:
        yield space
