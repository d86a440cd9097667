"""Unit tests of the queue client's HTTP paths, with aioresponses (bodies arrive in one piece)."""

from __future__ import annotations

import json
import logging
import re

import pytest
from aioresponses import aioresponses
from captures import config

from pipeline import errors
from pipeline.client import GradioQueueClient, Timeouts, new_session_hash
from pipeline.models import RequestTrace

URL = "http://space.test"
DATA = re.compile(r"^http://space\.test(/gradio_api)?/queue/data\?session_hash=[0-9a-f]{12}$")
TOKEN = "hf_abcdefghijklmnopqrstuvwxyz"


def sse(*messages: dict) -> str:
    return "".join(f"data: {json.dumps(m)}\n\n" for m in messages)


def happy_stream(event_id: str = "e1", words: tuple[str, ...] = ("no", " no", " no", " café")) -> str:
    text = words[0]
    msgs: list[dict] = [
        {"msg": "estimation", "event_id": event_id, "rank": 2, "queue_size": 3, "rank_eta": 1.5},
        {"msg": "process_starts", "event_id": event_id, "eta": 1.0},
        {"msg": "process_generating", "event_id": event_id, "success": True,
         "output": {"data": ["", [["q", text]], "sys"], "is_generating": True}},
    ]
    for word in words[1:]:
        text += word
        msgs.append({"msg": "process_generating", "event_id": event_id, "success": True,
                     "output": {"data": [[], [["append", [0, 1], word]], []], "is_generating": True}})
    msgs.append({"msg": "process_completed", "event_id": event_id, "success": True,
                 "output": {"data": ["", [["q", text]], "sys"], "is_generating": False}})
    msgs.append({"msg": "close_stream", "event_id": None})
    return sse(*msgs)


@pytest.fixture
def mocked():
    with aioresponses() as m:
        yield m


def mock_space(m: aioresponses, *, version: str = "4.44.1", join_status: int = 200,
               join_body: object = None, stream: str | None = None, headers: dict | None = None) -> str:
    prefix = "/gradio_api" if version.startswith("6") else ""
    m.get(f"{URL}/config", payload=config(version))
    m.post(f"{URL}{prefix}/queue/join", status=join_status,
           body=json.dumps(join_body if join_body is not None else {"event_id": "e1"}),
           headers=headers or {"Content-Type": "application/json"})
    if stream is not None:
        m.get(DATA, body=stream, headers={"Content-Type": "text/event-stream"})
    return prefix


async def test_happy_path_streams_exact_text_and_records_timings(mocked) -> None:
    mock_space(mocked, stream=happy_stream())
    trace = RequestTrace(new_session_hash())
    async with GradioQueueClient(URL) as client:
        pieces = [p async for p in client.stream("q", "sys", trace=trace)]
    assert pieces == ["no", " no", " no", " café"]
    assert trace.event_id == "e1" and trace.chunks == 4
    assert trace.queue_ms is not None and trace.ttft_ms is not None and trace.duration_ms is not None
    assert trace.queue_ms <= trace.ttft_ms <= trace.duration_ms
    assert trace.started_at is not None and trace.finished_at >= trace.started_at
    assert trace.url == URL


async def test_join_body_uses_discovered_fn_index_and_prefix(mocked) -> None:
    mock_space(mocked, version="6.31.0", stream=happy_stream())
    async with GradioQueueClient(URL) as client:
        completion = await client.complete("q", None)
    assert completion.text == "no no no café"
    join = next(calls for (method, url), calls in mocked.requests.items()
                if method == "POST" and str(url).endswith("/gradio_api/queue/join"))
    body = join[0].kwargs["json"]
    assert body["fn_index"] == 0 and body["trigger_id"] == 11
    assert body["data"] == ["q", [], "You are a helpful assistant."]
    assert re.fullmatch(r"[0-9a-f]{12}", body["session_hash"])


async def test_config_is_fetched_once_per_client(mocked) -> None:
    mock_space(mocked, stream=happy_stream())
    mocked.post(f"{URL}/queue/join", payload={"event_id": "e1"})
    mocked.get(DATA, body=happy_stream())
    async with GradioQueueClient(URL) as client:
        await client.complete("q")
        await client.complete("q")
    config_calls = [c for (method, url), c in mocked.requests.items() if str(url).endswith("/config")]
    assert len(config_calls) == 1 and len(config_calls[0]) == 1


async def test_config_unavailable_falls_back_to_the_real_space_layout(mocked) -> None:
    mocked.get(f"{URL}/config", status=502, body="Bad Gateway")
    mocked.post(f"{URL}/queue/join", payload={"event_id": "e1"})
    mocked.get(DATA, body=happy_stream())
    async with GradioQueueClient(URL) as client:
        assert (await client.complete("q")).text == "no no no café"


async def test_config_without_model_chat_is_a_discovery_error(mocked) -> None:
    cfg = config("4.44.1")
    cfg["dependencies"] = [d for d in cfg["dependencies"] if d["api_name"] != "model_chat"]
    mocked.get(f"{URL}/config", payload=cfg)
    async with GradioQueueClient(URL) as client:
        with pytest.raises(errors.DiscoveryError) as info:
            await client.complete("q")
    assert not info.value.retryable


@pytest.mark.parametrize(
    ("status", "body", "error", "retryable"),
    [
        (503, {"detail": "Queue is full. Max size is 2 and size is 2."}, errors.QueueFullError, True),
        (500, "Internal Server Error", errors.JoinRejectedError, False),  # a bad payload
        (400, {"detail": "Session hash not found."}, errors.HTTPStatusError, False),
        (422, {"detail": "validation"}, errors.HTTPStatusError, False),
        (429, {"detail": "slow down"}, errors.HTTPStatusError, True),
        (502, "Bad Gateway", errors.HTTPStatusError, True),
        (504, "Gateway Timeout", errors.HTTPStatusError, True),
        (401, {"detail": "Unauthorized"}, errors.AccessDeniedError, False),
        (403, {"detail": "Forbidden"}, errors.AccessDeniedError, False),
    ],
)
async def test_join_statuses(mocked, status: int, body: object, error: type, retryable: bool) -> None:
    mock_space(mocked, join_status=status, join_body=body)
    async with GradioQueueClient(URL) as client:
        with pytest.raises(error) as info:
            await client.complete("q")
    assert type(info.value) is error
    assert info.value.retryable is retryable
    assert info.value.status == status
    assert str(status) in str(info.value)


async def test_queue_full_carries_retry_after(mocked) -> None:
    mock_space(mocked, join_status=503, join_body={"detail": "Queue is full."},
               headers={"Retry-After": "12", "Content-Type": "application/json"})
    async with GradioQueueClient(URL) as client:
        with pytest.raises(errors.QueueFullError) as info:
            await client.complete("q")
    assert info.value.retry_after == 12.0


async def test_404_after_discovery_is_final_but_after_fallback_rediscovers(mocked) -> None:
    mock_space(mocked, join_status=404, join_body={"detail": "Not Found"})
    async with GradioQueueClient(URL) as client:
        with pytest.raises(errors.RouteNotFoundError) as info:
            await client.complete("q")
    assert not info.value.guessed and not info.value.retryable

    # The default layout (root paths) is wrong for an upgraded Space: retry after re-reading /config.
    mocked.get(f"{URL}/config", status=503)
    mocked.post(f"{URL}/queue/join", status=404, body='{"detail":"Not Found"}')
    mocked.get(f"{URL}/config", payload=config("6.31.0"))
    mocked.post(f"{URL}/gradio_api/queue/join", payload={"event_id": "e1"})
    mocked.get(DATA, body=happy_stream())
    async with GradioQueueClient(URL) as client:
        with pytest.raises(errors.RouteNotFoundError) as info:
            await client.complete("q")
        assert info.value.guessed and info.value.retryable
        assert (await client.complete("q")).text == "no no no café"


@pytest.mark.parametrize(
    ("stream", "error", "match"),
    [
        (sse({"msg": "estimation", "event_id": "e1", "rank": 0, "queue_size": 1, "rank_eta": None}),
         errors.StreamEndedError, "before the job started"),
        (happy_stream().rsplit("data: {\"msg\": \"process_completed\"", 1)[0],
         errors.StreamEndedError, "before the job completed"),
        (sse({"msg": "process_completed", "event_id": "e1", "success": False,
              "output": {"error": None}}), errors.AppError, "hides its details"),
        (sse({"msg": "unexpected_error", "event_id": None, "message": "404: Session not found.",
              "success": False}), errors.ServerError, "Session not found"),
        ('data: {"msg": "process_generating", oops\n\n', errors.ProtocolError, "not JSON"),
        (sse({"msg": "process_completed", "event_id": "e1", "success": True, "output": {}}),
         errors.CancelledJobError, "cancelled"),
    ],
)
async def test_stream_failures(mocked, stream: str, error: type, match: str) -> None:
    mock_space(mocked, stream=stream)
    async with GradioQueueClient(URL) as client:
        with pytest.raises(error, match=match):
            await client.complete("q")


async def test_data_stream_status_error(mocked) -> None:
    mock_space(mocked)
    mocked.get(DATA, status=502, body="Bad Gateway")
    async with GradioQueueClient(URL) as client:
        with pytest.raises(errors.HTTPStatusError) as info:
            await client.complete("q")
    assert info.value.status == 502 and info.value.retryable


async def test_join_without_event_id_is_a_protocol_error(mocked) -> None:
    mock_space(mocked, join_body={"detail": "odd"})
    async with GradioQueueClient(URL) as client:
        with pytest.raises(errors.ProtocolError, match="without an event_id"):
            await client.complete("q")


async def test_connection_refused_is_a_transport_error(mocked) -> None:
    async with GradioQueueClient("http://127.0.0.1:9", timeouts=Timeouts(connect=2)) as client:
        with pytest.raises(errors.TransportError):
            await client.complete("q")


async def test_token_is_sent_but_never_logged_or_raised(mocked, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    mock_space(mocked, join_status=401, join_body={"detail": f"bad token {TOKEN}"})
    async with GradioQueueClient(URL, hf_token=TOKEN) as client:
        assert TOKEN not in repr(client)
        with pytest.raises(errors.HTTPStatusError) as info:
            await client.complete("q")
    assert TOKEN not in str(info.value)
    assert "HF token" in str(info.value)
    assert TOKEN not in caplog.text
    join = next(c for (method, url), c in mocked.requests.items() if method == "POST")
    assert join[0].kwargs["headers"]["Authorization"] == f"Bearer {TOKEN}"


def test_session_hashes_are_fresh_12_hex() -> None:
    hashes = {new_session_hash() for _ in range(1000)}
    assert len(hashes) == 1000
    assert all(re.fullmatch(r"[0-9a-f]{12}", h) for h in hashes)


async def test_complete_records_the_same_timings_without_following_the_text(mocked) -> None:
    mock_space(mocked, stream=happy_stream())
    trace = RequestTrace(new_session_hash())
    async with GradioQueueClient(URL) as client:
        completion = await client.complete("q", "sys", trace=trace)
    assert completion.text == "no no no café" and completion.trace is trace
    assert trace.chunks == 4 and trace.queue_rank == 2
    assert trace.queue_ms is not None and trace.ttft_ms is not None
    assert trace.queue_ms <= trace.ttft_ms <= trace.duration_ms


async def test_complete_enforces_max_answer_chars_from_the_chunks(mocked) -> None:
    mock_space(mocked, stream=happy_stream(words=("abc", "defg", "hij")))
    async with GradioQueueClient(URL, max_answer_chars=8) as client:
        with pytest.raises(errors.ResponseTooLargeError):
            await client.complete("q")
