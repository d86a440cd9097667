"""Shared fixtures: make the test helpers importable."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


import contextlib
from collections.abc import AsyncIterator, Iterator

import pytest
from threaded_server import ThreadedServer

from pipeline.fake_space import FakeSpace, FakeSpaceConfig, run_fake_space


class ThreadedFakeSpace(ThreadedServer):
    """The fake Space on its own event loop in a thread, for synchronous callers (CliRunner)."""

    name = "the fake Space"

    def __init__(self, config: FakeSpaceConfig) -> None:
        super().__init__()
        self._config = config
        self.url = ""
        self.space: FakeSpace | None = None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        async with run_fake_space(self._config) as running:
            self.url, self.space = running.url, running.space
            yield


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
