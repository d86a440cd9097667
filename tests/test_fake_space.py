"""Tests of the fake Qwen Space (pipeline.fake_space), over real loopback sockets.

Only a raw aiohttp client is used here, never the pipeline client, so the fake is
checked against the wire format of the captures and not against our own parser.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from pipeline.fake_space import (
    FakeSpaceConfig,
    RunningFakeSpace,
    fake_answer,
    run_fake_space,
)

REPO = Path(__file__).resolve().parent.parent
SYSTEM = "You are a helpful assistant."

# Key order of each message as captured (gradio 4.44.1 / 6.31.0).
KEYS = {
    4: {
        "estimation": ["msg", "event_id", "rank", "queue_size", "rank_eta"],
        "process_starts": ["msg", "event_id", "eta"],
        "process_generating": ["msg", "event_id", "output", "success"],
        "process_completed": ["msg", "event_id", "output", "success"],
        "close_stream": ["msg", "event_id"],
    },
    6: {
        "estimation": ["msg", "event_id", "rank", "queue_size", "rank_eta"],
        "process_starts": ["msg", "event_id", "eta"],
        "process_generating": ["msg", "event_id", "output", "success", "time_limit"],
        "process_completed": [
            "msg",
            "event_id",
            "output",
            "success",
            "title",
            "used_cache",
            "cache_duration",
            "avg_time",
        ],
        "close_stream": ["msg", "event_id"],
    },
}
OUTPUT_KEYS = {
    4: ["data", "is_generating", "duration", "average_duration", "render_config",
        "changed_state_ids"],
    6: ["data", "is_generating", "duration", "average_duration", "render_config",
        "changed_state_ids", "used_cache"],
}  # fmt: skip


class Stream:
    """What one GET queue/data returned: raw lines, parsed messages, how it ended."""

    def __init__(self, status: int, lines: list[str], error: BaseException | None) -> None:
        self.status = status
        self.lines = lines
        self.error = error  # ClientPayloadError when cut without the final chunk
        self.msgs: list[dict[str, Any]] = []
        self.bad_lines: list[str] = []
        for line in lines:
            assert line.startswith("data: "), line
            try:
                self.msgs.append(json.loads(line[6:]))
            except ValueError:
                self.bad_lines.append(line)

    def kinds(self, event_id: str | None = None) -> list[str]:
        return [m["msg"] for m in self.msgs if event_id is None or m["event_id"] == event_id]

    def of(self, event_id: str) -> list[dict[str, Any]]:
        return [m for m in self.msgs if m["event_id"] == event_id]


class Api:
    """A raw client of one running fake Space."""

    def __init__(self, http: aiohttp.ClientSession, running: RunningFakeSpace) -> None:
        self.http = http
        self.running = running
        self.url = running.url
        self.major = running.space.config.gradio_major
        self.p = running.url + ("/gradio_api" if self.major == 6 else "")

    def history(self, pairs: list[tuple[str, str]]) -> list[Any]:
        if self.major == 4:
            return [[u, b] for u, b in pairs]
        out: list[Any] = []
        for u, b in pairs:
            out.append({"role": "user", "content": [{"type": "text", "text": u}]})
            out.append({"role": "assistant", "content": [{"type": "text", "text": b}]})
        return out

    async def join_raw(self, body: dict[str, Any]) -> tuple[int, str]:
        async with self.http.post(self.p + "/queue/join", json=body) as r:
            return r.status, await r.text()

    async def join(
        self,
        query: str,
        session_hash: str,
        history: list[Any] | None = None,
        system: str = SYSTEM,
        fn_index: int = 0,
    ) -> str:
        body = {
            "data": [query, history or [], system],
            "event_data": None,
            "fn_index": fn_index,
            "trigger_id": 11,
            "session_hash": session_hash,
        }
        status, text = await self.join_raw(body)
        assert status == 200, (status, text)
        event_id = json.loads(text)["event_id"]
        assert isinstance(event_id, str)
        return event_id

    async def stream(self, session_hash: str, timeout: float = 5.0) -> Stream:
        async with self.http.get(
            self.p + "/queue/data", params={"session_hash": session_hash}
        ) as r:
            lines, error = await read_lines(r, timeout)
            return Stream(r.status, lines, error)

    async def cancel(self, event_id: str, session_hash: str) -> dict[str, Any]:
        body = {"event_id": event_id, "fn_index": 0, "session_hash": session_hash}
        async with self.http.post(self.p + "/cancel", json=body) as r:
            assert r.status == 200
            result: dict[str, Any] = await r.json()
            return result


async def read_lines(
    resp: aiohttp.ClientResponse, timeout: float
) -> tuple[list[str], BaseException | None]:
    """Non-empty lines of an SSE body until it ends; the error if it was cut."""
    lines: list[str] = []
    try:
        while True:
            raw = await asyncio.wait_for(resp.content.readline(), timeout)
            if not raw:
                return lines, None
            line = raw.decode("utf-8").rstrip("\n")
            if line:
                lines.append(line)
    except aiohttp.ClientPayloadError as exc:
        return lines, exc


def new_hash() -> str:
    return secrets.token_hex(6)


def replay(msgs: list[dict[str, Any]]) -> str:
    """The reply text rebuilt from process_generating messages (full, then append ops)."""
    first = msgs[0]["output"]["data"][1][-1]
    text: str = first[1] if isinstance(first, list) else first["content"][0]["text"]
    for m in msgs[1:]:
        ops = m["output"]["data"][1]
        assert m["output"]["data"][0] == [] and m["output"]["data"][2] == []
        for op, _path, value in ops:
            assert op == "append"
            text += value
    return text


def reply_of(completed: dict[str, Any]) -> str:
    last = completed["output"]["data"][1][-1]
    return str(last[1] if isinstance(last, list) else last["content"][0]["text"])


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def space(http: aiohttp.ClientSession, **kw: Any) -> Any:
    """``async with space(http, gradio_major=6) as api:`` a running fake + its Api."""

    class _Ctx:
        async def __aenter__(self) -> Api:
            self.cm = run_fake_space(FakeSpaceConfig(**kw))
            return Api(http, await self.cm.__aenter__())

        async def __aexit__(self, *exc: object) -> None:
            await self.cm.__aexit__(None, None, None)

    return _Ctx()


# Config ---------------------------------------------------------------------------


def test_fake_answer_content() -> None:
    answer = fake_answer("Why is the sky blue? [x]", "Be brief.")
    assert "no no no" in answer
    assert "Why is the sky blue? [x]" in answer and "Be brief." in answer
    assert any(ord(c) > 127 for c in answer) and "日本語" in answer
    assert fake_answer("a", "b") == fake_answer("a", "b") != fake_answer("a", "c")


@pytest.mark.parametrize("major", [4, 6])
async def test_config_shape(http: aiohttp.ClientSession, major: int) -> None:
    async with space(http, gradio_major=major) as api, http.get(api.url + "/config") as r:
        assert r.status == 200
        cfg = await r.json()
    assert cfg["protocol"] == "sse_v3"
    assert cfg["version"] == {4: "4.44.1", 6: "6.31.0"}[major]
    assert cfg["root"] == api.url
    if major == 4:
        assert "api_prefix" not in cfg
    else:
        assert cfg["api_prefix"] == "/gradio_api"
    deps = cfg["dependencies"]
    assert [d["id"] for d in deps] == [0, 1, 2, 3]
    assert [d["api_name"] for d in deps] == [
        "model_chat", "model_chat_1", "clear_session", "modify_system_session",
    ]  # fmt: skip
    assert deps[0]["inputs"] == [11, 10, 8] and deps[0]["outputs"] == [11, 10, 4]
    assert deps[0]["targets"] == [[11, "submit"]] and deps[1]["targets"] == [[14, "click"]]
    assert deps[3]["inputs"] == [4] and deps[3]["outputs"] == [8, 4, 10]
    comps = {c["id"]: c for c in cfg["components"]}
    assert comps[10]["type"] == "chatbot" and comps[11]["props"]["label"] == "Input"
    assert comps[8]["props"]["visible"] is False and comps[4]["props"]["label"] == "System"
    assert comps[10]["props"].get("type") == ("tuples" if major == 4 else None)
    assert ("show_api" in deps[0]) == (major == 4) and ("api_visibility" in deps[0]) == (major == 6)


# Happy path ---------------------------------------------------------------------------


@pytest.mark.parametrize("major", [4, 6])
@pytest.mark.parametrize("latency", [0.0, 0.1])
async def test_happy_path(http: aiohttp.ClientSession, major: int, latency: float) -> None:
    async with space(http, gradio_major=major, chunks=5, latency=latency) as api:
        h = new_hash()
        prompt = "héllo there ✓"
        hist = api.history([("hi", "Hello! How can I help?")])
        eid = await api.join(prompt, h, history=hist)
        assert len(eid) == 32 and int(eid, 16) >= 0
        s = await api.stream(h)
    assert s.status == 200 and s.error is None and not s.bad_lines
    assert s.kinds() == [
        "estimation", "process_starts", *["process_generating"] * 5, "process_completed",
        "close_stream",
    ]  # fmt: skip
    for line, m in zip(s.lines, s.msgs, strict=True):  # compact JSON, raw UTF-8, captured key order
        assert line == "data: " + json.dumps(m, separators=(",", ":"), ensure_ascii=False)
        assert list(m) == KEYS[major][m["msg"]]
        if m["msg"] in ("process_generating", "process_completed"):
            assert list(m["output"]) == OUTPUT_KEYS[major]
    assert s.msgs[0] == {
        "msg": "estimation", "event_id": eid, "rank": 0, "queue_size": 1, "rank_eta": None,
    }  # fmt: skip
    gen = [m for m in s.msgs if m["msg"] == "process_generating"]
    done = s.msgs[-2]
    answer = fake_answer(prompt, SYSTEM)
    assert done["success"] is True and done["output"]["is_generating"] is False
    assert reply_of(done) == answer
    assert replay(gen) == answer
    assert "no no no" in answer and "café" in s.lines[-2]  # non-ASCII sent unescaped
    first = gen[0]["output"]["data"]
    assert first[0] == "" and first[2] == SYSTEM
    if major == 4:
        assert first[1][:-1] == hist and first[1][-1][0] == prompt
        assert gen[1]["output"]["data"][1][0][1] == [1, 1]
        assert done["output"]["data"][1] == [*hist, [prompt, answer]]
    else:
        final = done["output"]["data"][1]
        assert [m["role"] for m in final] == ["user", "assistant", "user", "assistant"]
        assert final[0] == {
            "role": "user", "metadata": None, "content": [{"text": "hi", "type": "text"}],
            "options": None,
        }  # fmt: skip
        assert gen[1]["output"]["data"][1][0][1] == [3, "content", 0, "text"]
        assert done["title"] is None and done["used_cache"] is None
    st = api.running.space.stats
    assert (st.joins, st.completed, st.failed, st.running) == (1, 1, 0, 0)
    assert st.attempts_by_prompt == {prompt: 1} and st.sessions == {h}


async def test_latency_spread_over_chunks(http: aiohttp.ClientSession) -> None:
    async with space(http, chunks=4, latency=0.4) as api:
        h = new_hash()
        await api.join("slow", h)
        t0 = asyncio.get_running_loop().time()
        s = await api.stream(h)
        elapsed = asyncio.get_running_loop().time() - t0
    assert s.kinds()[-2:] == ["process_completed", "close_stream"]
    assert elapsed >= 0.3  # the answer's 0.4 s is spent while streaming: it cannot come sooner


async def test_two_events_one_session_interleave(http: aiohttp.ClientSession) -> None:
    async with space(http, chunks=4, latency=0.3) as api:
        h = new_hash()
        e1 = await api.join("first", h)
        await asyncio.sleep(0.1)
        e2 = await api.join("second", h)
        s = await api.stream(h)
    assert s.kinds().count("close_stream") == 1 and s.kinds()[-1] == "close_stream"
    for eid, prompt in ((e1, "first"), (e2, "second")):
        msgs = s.of(eid)
        assert [m["msg"] for m in msgs][-1] == "process_completed"
        assert reply_of(msgs[-1]) == fake_answer(prompt, SYSTEM)
    ids = [m["event_id"] for m in s.msgs if m["msg"] == "process_generating"]
    switches = sum(1 for a, b in itertools.pairwise(ids) if a != b)
    assert switches >= 2, ids  # interleaved on one stream, not one after the other


async def test_session_reuse_after_close_stream(http: aiohttp.ClientSession) -> None:
    async with space(http, gradio_major=6) as api:
        h = new_hash()
        for prompt in ("round 1", "round 2"):
            eid = await api.join(prompt, h)
            s = await api.stream(h)
            assert s.kinds(eid)[-1] == "process_completed" and s.kinds()[-1] == "close_stream"
            assert reply_of(s.of(eid)[-1]) == fake_answer(prompt, SYSTEM)
        # after close_stream with nothing pending the session is gone
        s = await api.stream(h)
        assert s.kinds() == ["unexpected_error"]


@pytest.mark.parametrize("major", [4, 6])
async def test_unknown_session(http: aiohttp.ClientSession, major: int) -> None:
    async with space(http, gradio_major=major) as api:
        s = await api.stream("doesnotexist")
    assert s.status == 200
    if major == 4:
        expected: dict[str, Any] = {"message": "404: Session not found."}
    else:
        expected = {"message": "404: Not Found", "session_not_found": True}
    assert s.msgs == [{"msg": "unexpected_error", "event_id": None, **expected, "success": False}]
    assert isinstance(s.error, aiohttp.ClientPayloadError)  # cut: no terminating chunk


async def test_other_functions(http: aiohttp.ClientSession) -> None:
    async with space(http, gradio_major=6) as api:
        h = new_hash()
        e2 = await api.join("", h, fn_index=2)
        status, text = await api.join_raw({"data": ["new sys"], "fn_index": 3, "session_hash": h})
        e3 = json.loads(text)["event_id"]
        s = await api.stream(h)
    assert status == 200
    assert s.of(e2)[-1]["output"]["data"] == ["", []]
    assert s.of(e3)[-1]["output"]["data"] == ["new sys", "new sys", []]


# HTTP errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("major", [4, 6])
async def test_http_error_codes(http: aiohttp.ClientSession, major: int) -> None:
    async with space(http, gradio_major=major) as api:
        status, text = await api.join_raw({"data": ["x", [], "s"], "fn_index": 0})
        assert (status, json.loads(text)) == (400, {"detail": "Session hash not found."})
        body = {"data": ["x", [], "s"], "fn_index": 99, "session_hash": "h99"}
        async with http.post(api.p + "/queue/join", json=body) as r:
            assert r.status == 500 and r.content_type == "text/plain"
            assert await r.text() == "Internal Server Error"
        s = await api.stream("h99")  # the failed join made no session
        assert s.kinds() == ["unexpected_error"]
        if major == 6:
            async with http.post(api.url + "/queue/join", json=body) as r:
                assert (r.status, await r.json()) == (404, {"detail": "Not Found"})


@pytest.mark.parametrize("major", [4, 6])
async def test_bad_inputs_fail_in_band(http: aiohttp.ClientSession, major: int) -> None:
    async with space(http, gradio_major=major) as api:
        h = new_hash()
        status, text = await api.join_raw({"data": ["x", []], "fn_index": 0, "session_hash": h})
        assert status == 200
        bad_hist: Any = [{"role": "user", "content": "hi"}] if major == 6 else [["only one"]]
        e2 = await api.join("y", h, history=bad_hist)
        s = await api.stream(h)
    e1 = json.loads(text)["event_id"]
    for eid in (e1, e2):
        assert s.kinds(eid) == ["estimation", "process_starts", "process_completed"]
        done = s.of(eid)[-1]
        assert done["success"] is False and done["output"] == {"error": None}
        if major == 6:
            assert done["title"] == "Error"
    assert api.running.space.stats.failed == 2


async def test_down_gives_502_and_control_brings_it_back(http: aiohttp.ClientSession) -> None:
    async with space(http, down=True) as api:
        async with http.get(api.url + "/config") as r:
            assert (r.status, await r.text()) == (502, "Bad Gateway")
        status, _ = await api.join_raw({"data": ["x", [], "s"], "fn_index": 0, "session_hash": "h"})
        assert status == 502
        async with http.get(api.p + "/queue/data", params={"session_hash": "h"}) as r:
            assert r.status == 502
        async with http.post(api.url + "/_fake/control", json={"down": False}) as r:
            assert r.status == 200 and (await r.json())["down"] is False
        async with http.get(api.url + "/config") as r:
            assert r.status == 200


async def test_control_and_stats_endpoints(http: aiohttp.ClientSession) -> None:
    async with space(http) as api:
        ctl = api.url + "/_fake/control"
        changes = {"latency": 0.05, "chunks": 2, "concurrency_limit": 3, "heartbeat_interval": 1}
        async with http.post(ctl, json=changes) as r:
            assert r.status == 200
            assert {k: v for k, v in (await r.json()).items() if k in changes} == changes
        cfg = api.running.space.config
        assert (cfg.latency, cfg.chunks, cfg.concurrency_limit) == (0.05, 2, 3)
        for bad in ({"gradio_major": 6}, {"chunks": 0}, {"fault_rates": {"nope": 0.5}}):
            async with http.post(ctl, json=bad) as r:
                assert r.status == 400, bad
        assert cfg.chunks == 2  # a rejected change leaves the config alone
        h = new_hash()
        await api.join("count me", h)
        s = await api.stream(h)
        assert s.kinds().count("process_generating") == 2
        async with http.get(api.url + "/_fake/stats") as r:
            stats = await r.json()
    assert stats["joins"] == 1 and stats["completed"] == 1 and stats["sessions"] == [h]
    assert stats["attempts_by_prompt"] == {"count me": 1}


# Faults --------------------------------------------------------------------------------


async def test_fault_queue_full_marker(http: aiohttp.ClientSession) -> None:
    async with space(http, gradio_major=6) as api:
        body = {"data": ["q [fault:queue_full]", [], SYSTEM], "fn_index": 0, "session_hash": "a"}
        assert await api.join_raw(body) == (
            503, '{"detail":"Queue is full. Max size is 2 and size is 2."}',
        )  # fmt: skip
        status, _ = await api.join_raw(body)
        assert status == 200
        assert api.running.space.stats.rejected == 1


@pytest.mark.parametrize("major", [4, 6])
async def test_fault_cut_then_retry_succeeds(http: aiohttp.ClientSession, major: int) -> None:
    async with space(http, gradio_major=major, chunks=10) as api:
        prompt = "tell me [fault:cut:1]"
        h1 = new_hash()
        e1 = await api.join(prompt, h1)
        s1 = await api.stream(h1)
        assert isinstance(s1.error, aiohttp.ClientPayloadError)
        assert s1.kinds(e1) == ["estimation", "process_starts", *["process_generating"] * 5]
        h2 = new_hash()
        e2 = await api.join(prompt, h2)
        s2 = await api.stream(h2)
        st = api.running.space.stats
    assert s2.error is None and s2.kinds()[-1] == "close_stream"
    assert reply_of(s2.of(e2)[-1]) == fake_answer(prompt, SYSTEM)  # marker kept
    assert st.attempts_by_prompt[prompt] == 2 and st.failed == 1 and st.completed == 1


async def test_fault_marker_count(http: aiohttp.ClientSession) -> None:
    async with space(http, track_prompts=False) as api:
        prompt = "[fault:app_error:2] again"
        results = []
        for _ in range(3):
            h = new_hash()
            eid = await api.join(prompt, h)
            results.append((await api.stream(h)).of(eid)[-1]["success"])
        st = api.running.space.stats
    assert results == [False, False, True]
    assert st.attempts_by_prompt == {prompt: 3} and st.sessions == set()


@pytest.mark.parametrize("major", [4, 6])
async def test_fault_app_error(http: aiohttp.ClientSession, major: int) -> None:
    async with space(http, gradio_major=major) as api:
        h = new_hash()
        eid = await api.join("[fault:app_error]", h)
        s = await api.stream(h)
    assert s.kinds(eid) == [
        "estimation", "process_starts", *["process_generating"] * 3, "process_completed",
    ]  # fmt: skip
    done = s.of(eid)[-1]
    assert done["success"] is False and done["output"] == {"error": None}
    if major == 6:  # failed after yielding: title null (capture 05_exception_RAISE_LATER)
        assert done["title"] is None and list(done) == KEYS[6]["process_completed"]
    assert s.kinds()[-1] == "close_stream"


async def test_fault_unexpected_error(http: aiohttp.ClientSession) -> None:
    async with space(http, chunks=4) as api:
        h = new_hash()
        eid = await api.join("[fault:unexpected_error]", h)
        s = await api.stream(h)
    assert s.msgs[-1] == {
        "msg": "unexpected_error", "event_id": None, "message": "Server stopped unexpectedly.",
        "success": False,
    }  # fmt: skip
    assert "process_completed" not in s.kinds(eid)
    assert isinstance(s.error, aiohttp.ClientPayloadError)


async def test_fault_bad_json(http: aiohttp.ClientSession) -> None:
    async with space(http, chunks=3) as api:
        h = new_hash()
        eid = await api.join("[fault:bad_json]", h)
        s = await api.stream(h)
    assert len(s.bad_lines) == 1
    assert s.lines.index(s.bad_lines[0]) == 3  # right after the first text chunk
    assert s.kinds(eid)[-1] == "process_completed" and s.of(eid)[-1]["success"] is True
    assert replay([m for m in s.of(eid) if m["msg"] == "process_generating"]) == fake_answer(
        "[fault:bad_json]", SYSTEM
    )


async def test_fault_stall_heartbeats_then_cancel(http: aiohttp.ClientSession) -> None:
    async with space(http, gradio_major=6, heartbeat_interval=0.2) as api:
        h = new_hash()
        eid = await api.join("[fault:stall]", h)
        async with http.get(api.p + "/queue/data", params={"session_hash": h}) as r:
            seen: list[dict[str, Any]] = []
            while sum(m["msg"] == "heartbeat" for m in seen) < 3:
                raw = await asyncio.wait_for(r.content.readline(), 2)
                if raw.strip():
                    seen.append(json.loads(raw[6:]))
            assert [m["msg"] for m in seen if m["msg"] != "heartbeat"] == [
                "estimation", "process_starts", "process_generating",
            ]  # fmt: skip
            assert {"msg": "heartbeat", "event_id": None} in seen
            assert api.running.space.stats.running == 1
            assert await api.cancel(eid, h) == {"success": True}
            lines, error = await read_lines(r, 2)
        st = api.running.space.stats
    rest = [json.loads(x[6:]) for x in lines]
    rest = [m for m in rest if m["msg"] != "heartbeat"]
    assert error is None
    assert rest[0] == {
        "msg": "process_completed", "event_id": eid, "output": {}, "success": True,
        "title": None, "used_cache": None, "cache_duration": None, "avg_time": None,
    }  # fmt: skip
    assert rest[1:] == [{"msg": "close_stream", "event_id": None}]
    assert st.cancelled == 1 and st.running == 0


async def test_random_faults_are_seeded(http: aiohttp.ClientSession) -> None:
    outcomes = []
    for _ in range(2):
        async with space(http, fault_rates={"app_error": 0.5}, seed=7) as api:
            run = []
            for i in range(12):
                h = new_hash()
                eid = await api.join(f"p{i}", h)
                run.append((await api.stream(h)).of(eid)[-1]["success"])
            outcomes.append(run)
            assert api.running.space.stats.faults.get("app_error", 0) == run.count(False)
    assert outcomes[0] == outcomes[1]
    assert 0 < outcomes[0].count(False) < 12


# Queue, concurrency, cancel, disconnect ---------------------------------------------------


async def test_queue_full_with_max_size(http: aiohttp.ClientSession) -> None:
    async with space(http, concurrency_limit=1, max_size=1, latency=0.3, chunks=2) as api:
        await api.join("running", new_hash())
        await api.join("waiting", new_hash())
        status, text = await api.join_raw(
            {"data": ["rejected", [], SYSTEM], "fn_index": 0, "session_hash": new_hash()}
        )
        st = api.running.space.stats
        assert (status, json.loads(text)) == (
            503, {"detail": "Queue is full. Max size is 1 and size is 1."},
        )  # fmt: skip
        assert (st.joins, st.rejected, st.running, st.waiting) == (2, 1, 1, 1)


async def test_concurrency_limit_and_ranks(http: aiohttp.ClientSession) -> None:
    async with space(http, gradio_major=6, concurrency_limit=2, latency=0.2, chunks=2) as api:
        hashes = [new_hash() for _ in range(5)]
        eids = [await api.join(f"job {i}", h) for i, h in enumerate(hashes)]
        streams = await asyncio.gather(*(api.stream(h) for h in hashes))
        st = api.running.space.stats
    assert st.max_running == 2 and st.completed == 5
    last = streams[4].of(eids[4])
    ranks = [(m["rank"], m["queue_size"]) for m in last if m["msg"] == "estimation"]
    assert ranks[0] == (2, 3) and ranks[-1][0] == 0
    assert [r for r, _ in ranks] == sorted((r for r, _ in ranks), reverse=True)
    assert [m["msg"] for m in last][len(ranks)] == "process_starts"
    for i, (s, eid) in enumerate(zip(streams, eids, strict=True)):
        assert reply_of(s.of(eid)[-1]) == fake_answer(f"job {i}", SYSTEM)


async def test_cancel_waiting_job_and_raise_limit(http: aiohttp.ClientSession) -> None:
    async with space(http, concurrency_limit=1, latency=0.3, chunks=2) as api:
        h1, h2, h3 = new_hash(), new_hash(), new_hash()
        await api.join("a", h1)
        e2 = await api.join("b", h2)
        await api.join("c", h3)
        await api.cancel(e2, h2)
        s2 = await api.stream(h2)
        api.running.space.update_config(concurrency_limit=5)
        assert api.running.space.stats.running == 2  # "c" started at once
        await asyncio.gather(api.stream(h1), api.stream(h3))
        st = api.running.space.stats
    assert s2.kinds() == ["estimation", "process_completed", "close_stream"]
    assert s2.msgs[1]["output"] == {} and s2.msgs[1]["success"] is True
    assert (st.cancelled, st.completed, st.waiting) == (1, 2, 0)


async def test_client_disconnect_frees_capacity(http: aiohttp.ClientSession) -> None:
    async with space(http, concurrency_limit=1, heartbeat_interval=0.2) as api:
        h1 = new_hash()
        await api.join("[fault:stall]", h1)
        async with http.get(api.p + "/queue/data", params={"session_hash": h1}) as r:
            await r.content.readline()  # the stream is open
            r.close()  # drop the connection mid-stream
        h2 = new_hash()
        e2 = await api.join("next", h2)  # waits behind the stalled job until it is freed
        s2 = await asyncio.wait_for(api.stream(h2), 3)
        st = api.running.space.stats
    assert s2.of(e2)[-1]["success"] is True
    assert st.abandoned == 1 and st.running == 0


# CLI -----------------------------------------------------------------------------------


async def test_cli_serves_until_sigterm(http: aiohttp.ClientSession) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    args = ["--port", "0", "--gradio", "6", "--chunks", "2", "--fault", "cut=0.0"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline.fake_space", *args],
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=REPO,
    )
    try:
        assert proc.stderr is not None
        line = await asyncio.wait_for(asyncio.to_thread(proc.stderr.readline), 15)
        assert line.startswith("fake Space listening on http://127.0.0.1:")
        url = line.split()[-1]
        async with http.get(url + "/config") as r:
            assert (await r.json())["api_prefix"] == "/gradio_api"
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 10)
        if proc.stderr is not None:
            proc.stderr.close()
    assert code == 0
