"""Integration tests against real gradio servers (4.44.1 and 6.x) running the Space's layout.

The servers run tests/gradio_space_app.py in their own virtualenvs:

    envs="$(bash .ci/gradio-envs.sh)" && eval "$envs"
    QWEN_BATCH_REQUIRE_GRADIO=1 .venv/bin/python -m pytest -m gradio tests/test_real_gradio.py

Without QWEN_BATCH_GRADIO6_PYTHON / QWEN_BATCH_GRADIO4_PYTHON the tests of that major are skipped,
unless QWEN_BATCH_REQUIRE_GRADIO=1 (CI), which turns the skip into a failure.

The raw tests (``test_raw_*``) use their own minimal client (tests/real_gradio.py) and prove the
server side; the others exercise ``pipeline``.  All traffic goes to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator

import aiohttp
import pytest
from real_gradio import (
    DEFAULT_SYSTEM,
    GradioServer,
    answer_for,
    capture_config_path,
    config_skeleton,
    expected_skeleton,
    gradio_python_or_skip,
    raw_queue_call,
    split_words,
    start_gradio_server,
)

MAJORS = [6, 4]
# Repeated words + non-ASCII in the query too; single line (see answer_for's caveat).
QUERY = "hello hello hello — naïve café 東京 ✓ hello"
SYSTEM = "Be brief. Sé breve ✓"
SERVER_ENV = {"GRADIO_FAKE_WORD_DELAY": "0.01"}
TIMEOUT = aiohttp.ClientTimeout(total=60)


def _server(env_var: str, major: int) -> Iterator[GradioServer]:
    python = gradio_python_or_skip(env_var)
    server = start_gradio_server(python, env_overrides=SERVER_ENV)
    try:
        if server.major != major:
            pytest.fail(
                f"{env_var}={python} runs gradio {server.version}, expected {major}.x",
                pytrace=False,
            )
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def gradio6_server() -> Iterator[GradioServer]:
    yield from _server("QWEN_BATCH_GRADIO6_PYTHON", 6)


@pytest.fixture(scope="module")
def gradio4_server() -> Iterator[GradioServer]:
    yield from _server("QWEN_BATCH_GRADIO4_PYTHON", 4)


@pytest.fixture(scope="module")
def gradio6_url(gradio6_server: GradioServer) -> str:
    return gradio6_server.url


@pytest.fixture(scope="module")
def gradio4_url(gradio4_server: GradioServer) -> str:
    return gradio4_server.url


@pytest.fixture(params=MAJORS, ids=lambda m: f"gradio{m}")
def major(request: pytest.FixtureRequest) -> int:
    return int(request.param)


@pytest.fixture
def server_url(major: int, request: pytest.FixtureRequest) -> str:
    """URL of the module-scoped server of this test's gradio major (started on first use)."""
    return str(request.getfixturevalue(f"gradio{major}_url"))


def _prefix(major: int) -> str:
    return "" if major < 5 else "/gradio_api"


# ------------------------------------------------------------------------- no server needed
@pytest.mark.parametrize("major", MAJORS)
def test_expected_skeleton_matches_capture(major: int) -> None:
    """The ids written out in real_gradio.expected_skeleton are those of the captured mirror app."""
    path = capture_config_path(major)
    assert path.is_file(), f"capture {path} missing"
    capture = json.loads(path.read_text(encoding="utf-8"))
    assert config_skeleton(capture) == expected_skeleton(major)


def test_answer_for_streams_exactly() -> None:
    text = answer_for(QUERY, SYSTEM)
    words = split_words(text)
    assert "".join(words) == text
    assert len(words) > 10
    assert text.count("no ") >= 2 and "café ✓" in text
    assert all(not w[-1].isspace() for w in words)  # cleandoc-safe partials


def test_missing_interpreter_skips_or_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QWEN_BATCH_GRADIO_TEST_NOPE", raising=False)
    monkeypatch.delenv("QWEN_BATCH_REQUIRE_GRADIO", raising=False)
    with pytest.raises(pytest.skip.Exception):
        gradio_python_or_skip("QWEN_BATCH_GRADIO_TEST_NOPE")
    monkeypatch.setenv("QWEN_BATCH_REQUIRE_GRADIO", "1")
    with pytest.raises(pytest.fail.Exception):
        gradio_python_or_skip("QWEN_BATCH_GRADIO_TEST_NOPE")


# ------------------------------------------------------------------ raw: proves the server side
@pytest.mark.gradio
async def test_raw_config_matches_capture(major: int, server_url: str) -> None:
    """(a) GET /config of the running app has the capture's ids, wiring and api_prefix."""
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        session.get(f"{server_url}/config") as response,
    ):
        assert response.status == 200
        config = await response.json()
    assert config["version"].startswith(f"{major}.")
    assert config_skeleton(config) == expected_skeleton(major)
    assert config.get("api_prefix", "") == _prefix(major)
    assert config["enable_queue"] is True
    assert config["show_error"] is False


@pytest.mark.gradio
async def test_raw_queue_join_and_data(major: int, server_url: str) -> None:
    """A raw join + data exchange streams the exact answer, word by word, in the major's format."""
    expected = answer_for(QUERY, SYSTEM)
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        result = await raw_queue_call(session, server_url, _prefix(major), QUERY, SYSTEM)
    kinds = [m["msg"] for m in result.messages]
    assert kinds[-2:] == ["process_completed", "close_stream"], kinds
    assert "process_starts" in kinds
    event_ids = {m["event_id"] for m in result.messages if m["msg"] != "close_stream"}
    assert event_ids == {result.event_id}
    assert result.success
    assert result.answer == expected
    assert result.partial_answers == _cumulative(expected)  # one process_generating per word
    assert result.outputs is not None
    assert result.outputs[0] == "" and result.outputs[2] == SYSTEM
    chatbot = result.outputs[1]
    if major < 6:
        assert chatbot == [[QUERY, expected]]
    else:
        assert [m["role"] for m in chatbot] == ["user", "assistant"]
        assert chatbot[1]["content"] == [{"text": expected, "type": "text"}]
    later = result.msgs("process_generating")[1:]
    assert later and all(m["output"]["data"][1][0][0] == "append" for m in later)  # real diffs


@pytest.mark.gradio
async def test_raw_history_in_major_format(major: int, server_url: str) -> None:
    """History goes in as tuples (4.x) or messages with content parts (6.x) and comes back."""
    if major < 6:
        history: list = [["hi", "Hello!"]]
    else:
        history = [
            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
            {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
        ]
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        result = await raw_queue_call(
            session, server_url, _prefix(major), "second", DEFAULT_SYSTEM, history
        )
    assert result.success and result.answer == answer_for("second", DEFAULT_SYSTEM)
    assert result.outputs is not None and len(result.outputs[1]) == (2 if major < 6 else 4)


@pytest.mark.gradio
@pytest.mark.parametrize("query,generating", [("RAISE", 0), ("RAISE_LATER", 3)])
async def test_raw_errors_are_in_band(
    major: int, server_url: str, query: str, generating: int
) -> None:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        result = await raw_queue_call(session, server_url, _prefix(major), query, SYSTEM)
    assert not result.success
    assert len(result.msgs("process_generating")) == generating
    (completed,) = result.msgs("process_completed")
    assert completed["output"] == {"error": None}


# ------------------------------------------------------------------------ pipeline (under test)
@pytest.mark.gradio
async def test_provider_streams_exact_answer(server_url: str) -> None:
    """(b) Fragments concatenate to the exact answer, and arrive as a real stream."""
    from pipeline import Qwen_Qwen_2_72B

    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUERY}]
    fragments = [
        fragment
        async for fragment in Qwen_Qwen_2_72B.create_async_generator(
            "qwen-2-72b", messages, url=server_url
        )
    ]
    assert "".join(fragments) == answer_for(QUERY, SYSTEM)
    assert len([f for f in fragments if f]) > 1, fragments  # more than one piece: true streaming


@pytest.mark.gradio
async def test_client_discovery(major: int, server_url: str) -> None:
    """(c) discover() finds the prefix, fn_index 0 and sse_v3; complete() fills its trace."""
    from pipeline.client import GradioQueueClient

    async with GradioQueueClient(server_url) as client:
        info = await client.discover()
        assert info.api_prefix == _prefix(major)
        assert info.fn_index == 0
        assert info.protocol == "sse_v3"
        completion = await client.complete(QUERY, SYSTEM)
    assert completion.text == answer_for(QUERY, SYSTEM)
    trace = completion.trace
    assert trace.event_id and trace.session_hash
    assert trace.chunks > 1
    assert 0 <= trace.ttft_ms <= trace.duration_ms
    assert trace.queue_ms >= 0


@pytest.mark.gradio
async def test_provider_raise_later_is_app_error(server_url: str) -> None:
    """(d) success:false after some streamed text raises AppError (not a truncated answer)."""
    from pipeline import Qwen_Qwen_2_72B
    from pipeline.errors import AppError, RequestError

    assert issubclass(AppError, RequestError)
    with pytest.raises(AppError):
        async for _ in Qwen_Qwen_2_72B.create_async_generator(
            "qwen-2-72b", [{"role": "user", "content": "RAISE_LATER"}], url=server_url
        ):
            pass


@pytest.mark.gradio
async def test_provider_concurrent_requests_exact(server_url: str) -> None:
    """(e) 5 concurrent requests, each gets exactly its own answer."""
    from pipeline import Qwen_Qwen_2_72B

    async def one(i: int) -> str:
        messages = [
            {"role": "system", "content": f"{SYSTEM} #{i}"},
            {"role": "user", "content": f"{QUERY} request {i}"},
        ]
        gen = Qwen_Qwen_2_72B.create_async_generator("qwen-2-72b", messages, url=server_url)
        return "".join([fragment async for fragment in gen])

    answers = await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(5))), 60)
    assert answers == [answer_for(f"{QUERY} request {i}", f"{SYSTEM} #{i}") for i in range(5)]


def _cumulative(text: str) -> list[str]:
    out, acc = [], ""
    for word in split_words(text):
        acc += word
        out.append(acc)
    return out
