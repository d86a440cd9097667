"""``Qwen_Qwen_2_72B`` inside g4f's own client machinery, against the fake Space.

g4f (pinned in the ``test`` extra) is a consumer here, never a dependency of the
package. It calls a provider class along eight paths: ``AsyncClient`` and the sync
``Client``, each streaming or not (these read ``get_dict()``, ``needs_auth``,
``use_stream_timeout`` and ``live``), and ``ChatCompletion.create_async`` /
``ChatCompletion.create``, each streaming or not (these call
``create_async_generator`` directly). Every path must give the fake Space's exact
answer in both Gradio shapes, and a server fault must reach the caller as our typed
exception, not as an AttributeError from g4f's bookkeeping.

g4f must not touch the internet or the user's home: it is imported with its config
and cache directories in a temporary folder, its version check is off, and an audit
hook refuses (and records) every connection or name lookup that is not loopback.
"""

from __future__ import annotations

import asyncio
import copy
import importlib
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import ThreadedFakeSpace

from pipeline import Qwen_Qwen_2_72B, errors
from pipeline.fake_space import FakeSpaceConfig, fake_answer

G4F_VERSION = "8.8.6"
MODEL = "qwen-2-72b"
SYSTEM = "Answer in one sentence."
PROMPT = "Why is the sky blue? «ciel» 日本語"
FAULT_PROMPT = "[fault:app_error:1000] this one fails"
CHUNKS = 5

# -- no network beyond loopback -------------------------------------------------------------

_LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
_NET_EVENTS = frozenset({"socket.getaddrinfo", "socket.connect"})
_recorders: list[list[str]] = []
_hooked: list[bool] = []


def _host_of(event: str, args: tuple[Any, ...]) -> str | None:
    if event == "socket.getaddrinfo":
        host = args[0]
    elif event == "socket.connect":
        address = args[1]
        host = address[0] if isinstance(address, tuple) else None  # AF_UNIX paths are local
    else:
        return None
    if isinstance(host, bytes):
        host = host.decode()
    return None if host is None else str(host)


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if not _recorders or event not in _NET_EVENTS:
        return
    host = _host_of(event, args)
    if host is None or host in _LOOPBACK:
        return
    _recorders[-1].append(f"{event} {host}")
    raise PermissionError(f"test guard: no network beyond loopback ({event} {host})")


@contextmanager
def loopback_only() -> Iterator[list[str]]:
    """Refuse every connection and lookup that is not loopback; yield what was refused."""
    if not _hooked:  # an audit hook cannot be removed; outside the guard it returns at once
        sys.addaudithook(_audit)
        _hooked.append(True)
    attempts: list[str] = []
    _recorders.append(attempts)
    try:
        yield attempts
    finally:
        _recorders.remove(attempts)


# -- fixtures ------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def g4f_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("g4f-home")


@pytest.fixture
def g4f(g4f_home: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """The g4f package, confined to a temporary home and to loopback."""
    config_dir = g4f_home / ".g4f"
    monkeypatch.setenv("HOME", str(g4f_home))
    monkeypatch.setenv("G4F_CONFIG_DIR", str(config_dir))
    monkeypatch.setenv("G4F_CACHE_DIR", str(config_dir / "cache"))
    for name in ("G4F_PROXY", "G4F_TOOL_EMULATION", "QWEN_QWEN_2_72B_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    # g4f's bookkeeping writes to the class; leave it as it was for the next test.
    if hasattr(Qwen_Qwen_2_72B, "live"):
        monkeypatch.setattr(Qwen_Qwen_2_72B, "live", Qwen_Qwen_2_72B.live)
    with loopback_only() as attempts:
        module = importlib.import_module("g4f")
        module.debug.version_check = False  # else the first call asks PyPI/GitHub for news
        cookies = importlib.import_module("g4f.cookies")
        monkeypatch.setattr(cookies.CookiesConfig, "cookies_dir", str(config_dir / "cookies"))
        yield module
    assert attempts == [], f"g4f tried to leave loopback: {attempts}"


@pytest.fixture(params=[4, 6], ids=lambda m: f"gradio{m}")
def space(request: pytest.FixtureRequest) -> Iterator[ThreadedFakeSpace]:
    config = FakeSpaceConfig(gradio_major=request.param, chunks=CHUNKS, latency=0.05)
    with ThreadedFakeSpace(config) as running:
        yield running


def test_the_pinned_g4f_is_installed(g4f: ModuleType) -> None:
    assert g4f.version.utils.current_version == G4F_VERSION


def test_the_guard_refuses_what_g4f_would_fetch_by_default(g4f: ModuleType) -> None:
    # With its version check left on, g4f's first call asks PyPI for news in a thread:
    # the guard must see (and refuse) it, or the fixture's assertion proves nothing.
    before = set(threading.enumerate())
    with loopback_only() as attempts:
        g4f.debug.version_check = True
        g4f.client.service.get_model_and_provider(MODEL, Qwen_Qwen_2_72B)
        for thread in set(threading.enumerate()) - before:
            thread.join(10)
        with pytest.raises(PermissionError), socket.create_connection(("192.0.2.1", 80), timeout=1):
            pass
    assert g4f.debug.version_check is False
    assert any("pypi.org" in attempt for attempt in attempts), attempts
    assert attempts[-1] == "socket.getaddrinfo 192.0.2.1" or attempts[-1] == "socket.connect 192.0.2.1"


# -- the eight paths -----------------------------------------------------------------------


def _messages(prompt: str = PROMPT) -> list[dict[str, str]]:
    # Fresh each call: g4f's client may rewrite the list it is given, in place.
    return copy.deepcopy([{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}])


Path_ = Callable[[ModuleType, type, str, str], list[str]]


def _async_client(stream: bool) -> Path_:
    async def go(g4f: ModuleType, provider: type, prompt: str, url: str) -> list[str]:
        client = g4f.AsyncClient(provider=provider)
        if stream:
            chunks = client.chat.completions.create(messages=_messages(prompt), model=MODEL, stream=True, url=url)
            return [c.choices[0].delta.content async for c in chunks if c.choices[0].delta.content]
        completion = await client.chat.completions.create(messages=_messages(prompt), model=MODEL, url=url)
        assert completion.provider == provider.__name__
        return [completion.choices[0].message.content]

    return lambda *args: asyncio.run(go(*args))


def _sync_client(stream: bool) -> Path_:
    def go(g4f: ModuleType, provider: type, prompt: str, url: str) -> list[str]:
        client = g4f.Client(provider=provider)
        if stream:
            chunks = client.chat.completions.create(messages=_messages(prompt), model=MODEL, stream=True, url=url)
            return [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
        completion = client.chat.completions.create(messages=_messages(prompt), model=MODEL, url=url)
        # (g4f 8.8.6's sync iter_response drops the provider info: completion.provider is None.)
        return [completion.choices[0].message.content]

    return go


def _create_async(stream: bool) -> Path_:
    async def go(g4f: ModuleType, provider: type, prompt: str, url: str) -> list[str]:
        result = g4f.ChatCompletion.create_async(MODEL, _messages(prompt), provider=provider, stream=stream, url=url)
        if stream:
            return [piece async for piece in result]
        return [await result]

    return lambda *args: asyncio.run(go(*args))


def _create(stream: bool) -> Path_:
    def go(g4f: ModuleType, provider: type, prompt: str, url: str) -> list[str]:
        result = g4f.ChatCompletion.create(MODEL, _messages(prompt), provider=provider, stream=stream, url=url)
        return list(result) if stream else [result]

    return go


PATHS: dict[str, tuple[Path_, bool]] = {
    "AsyncClient-stream": (_async_client(True), True),
    "AsyncClient": (_async_client(False), False),
    "Client-stream": (_sync_client(True), True),
    "Client": (_sync_client(False), False),
    "create_async-stream": (_create_async(True), True),
    "create_async": (_create_async(False), False),
    "create-stream": (_create(True), True),
    "create": (_create(False), False),
}


@pytest.mark.parametrize("path", PATHS)
def test_every_path_gives_the_exact_answer(g4f: ModuleType, space: ThreadedFakeSpace, path: str) -> None:
    run, streams = PATHS[path]
    pieces = run(g4f, Qwen_Qwen_2_72B, PROMPT, space.url)
    assert "".join(pieces) == fake_answer(PROMPT, SYSTEM)
    if streams:
        assert len(pieces) == CHUNKS  # fragment by fragment, as the Space sent them


@pytest.mark.parametrize("path", PATHS)
def test_a_server_fault_is_our_typed_error_and_the_next_call_works(
        g4f: ModuleType, space: ThreadedFakeSpace, path: str) -> None:
    run, _ = PATHS[path]
    with pytest.raises(errors.AppError) as info:
        run(g4f, Qwen_Qwen_2_72B, FAULT_PROMPT, space.url)
    assert info.value.retryable
    # g4f counted the failure on the class (live -= 1) and the class still serves.
    assert "".join(run(g4f, Qwen_Qwen_2_72B, PROMPT, space.url)) == fake_answer(PROMPT, SYSTEM)


@pytest.mark.parametrize("client_class", ["AsyncClient", "Client"])
def test_timeout_is_ours_for_the_whole_attempt(g4f: ModuleType, space: ThreadedFakeSpace, client_class: str) -> None:
    # use_stream_timeout: g4f leaves `timeout=` to the provider (our whole-attempt limit)
    # instead of also applying it per chunk and raising its own bare TimeoutError.
    async def drain(chunks: Any) -> None:
        async for _ in chunks:
            pass

    client = getattr(g4f, client_class)(provider=Qwen_Qwen_2_72B)
    chunks = client.chat.completions.create(
        messages=_messages("[fault:stall] wait"), model=MODEL, stream=True, url=space.url, timeout=0.5)
    with pytest.raises(errors.AttemptTimeoutError):
        if client_class == "AsyncClient":
            asyncio.run(drain(chunks))
        else:
            for _ in chunks:
                pass


def test_g4f_stream_timeout_gives_up_with_its_own_error_and_the_job_is_cancelled(
        g4f: ModuleType, space: ThreadedFakeSpace) -> None:
    # AsyncClient with stream=True wraps each chunk in asyncio.wait_for(stream_timeout):
    # the caller gets g4f's bare TimeoutError, and our generator, closed by g4f, still
    # tells the Space to drop the job.
    async def drain() -> None:
        client = g4f.AsyncClient(provider=Qwen_Qwen_2_72B)
        async for _ in client.chat.completions.create(
                messages=_messages("[fault:stall] wait"), model=MODEL, stream=True, url=space.url,
                stream_timeout=0.5, timeout=60):
            pass

    with pytest.raises(asyncio.TimeoutError) as info:  # the builtin TimeoutError from 3.11 on
        asyncio.run(drain())
    if sys.version_info >= (3, 11):  # on 3.10 g4f's handler misses asyncio's own TimeoutError
        assert "timed out after 0.5 seconds" in str(info.value)
    assert not isinstance(info.value, errors.QwenBatchError)
    stats = space.space.stats
    assert stats.joins == 1 and stats.cancelled + stats.abandoned == 1 and stats.running == 0


@pytest.mark.parametrize("path", ["AsyncClient", "Client-stream", "create"])
def test_a_subclass_points_at_a_duplicate_space(g4f: ModuleType, space: ThreadedFakeSpace, path: str) -> None:
    # The README's way to use a duplicated Space from g4f without passing url= each time.
    duplicate = type("MyQwenSpace", (Qwen_Qwen_2_72B,), {"url": space.url})
    run, _ = PATHS[path]
    assert "".join(run(g4f, duplicate, PROMPT, "")) == fake_answer(PROMPT, SYSTEM)


def test_the_members_g4f_reads(g4f: ModuleType) -> None:
    p = Qwen_Qwen_2_72B
    assert p.get_dict() == {"name": "Qwen_Qwen_2_72B", "url": p.url, "label": "Qwen Qwen-2.72B"}
    assert p.get_parent() == "Qwen_Qwen_2_72B"
    assert p.needs_auth is False and p.use_stream_timeout is True
    assert isinstance(p.live, int)
    # The same shape as g4f's own base class gives.
    base = g4f.providers.base_provider.AsyncGeneratorProvider
    assert set(p.get_dict()) == set(base.get_dict())
