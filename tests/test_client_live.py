"""The client and provider over real loopback sockets against the package's fake Space."""

from __future__ import annotations

import asyncio
import time

import aiohttp
import pytest

from pipeline import Qwen_Qwen_2_72B, errors
from pipeline.client import GradioQueueClient, Timeouts
from pipeline.fake_space import FakeSpaceConfig, fake_answer, run_fake_space
from pipeline.models import RequestTrace
from pipeline.prompts import DEFAULT_SYSTEM_PROMPT

MAJORS = [4, 6]


@pytest.fixture(params=MAJORS, ids=lambda m: f"gradio{m}")
async def space(request):
    async with run_fake_space(FakeSpaceConfig(gradio_major=request.param, chunks=8)) as running:
        yield running


async def test_exact_text_with_repeats_and_non_ascii(space) -> None:
    prompt = "Say «no» three times — 日本語 please"
    async with GradioQueueClient(space.url) as client:
        pieces = [p async for p in client.stream(prompt, "Be terse.")]
    answer = "".join(pieces)
    assert answer == fake_answer(prompt, "Be terse.")
    assert "no no no" in answer and "日本語" in answer
    assert len(pieces) == 8


async def test_discovery_reads_the_shape_of_each_version(space) -> None:
    async with GradioQueueClient(space.url) as client:
        info = await client.discover()
    major = space.space.config.gradio_major
    assert info.api_prefix == ("" if major == 4 else "/gradio_api")
    assert info.history_format == ("tuples" if major == 4 else "messages")
    assert info.fn_index == 0 and info.discovered


async def test_fragments_arrive_before_completion(space) -> None:
    space.space.config.latency = 0.6
    arrivals = []
    async with GradioQueueClient(space.url) as client:
        async for _ in client.stream("stream me"):
            arrivals.append(time.monotonic())
    assert len(arrivals) == 8
    # Spread over the generation time, not bunched at the end.
    assert arrivals[-1] - arrivals[0] > 0.3


async def test_trace_records_queue_wait_ttft_and_chunks(space) -> None:
    space.space.config.latency = 0.2
    trace = RequestTrace("abcdef123456")
    async with GradioQueueClient(space.url) as client:
        completion = await client.complete("timing", trace=trace)
    assert completion.trace is trace
    assert trace.event_id and len(trace.event_id) == 32
    assert trace.chunks == 8
    assert 0 <= trace.queue_ms <= trace.ttft_ms <= trace.duration_ms
    assert trace.duration_ms >= 200
    assert "abcdef123456" in space.space.stats.sessions


async def test_default_system_prompt_is_the_spaces_own(space) -> None:
    async with GradioQueueClient(space.url) as client:
        completion = await client.complete("hi")
    assert completion.text == fake_answer("hi", DEFAULT_SYSTEM_PROMPT)


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ("queue_full", errors.QueueFullError),
        ("cut", errors.StreamEndedError),
        ("app_error", errors.AppError),
        ("unexpected_error", errors.ServerError),
        ("bad_json", errors.ProtocolError),
    ],
)
async def test_each_fault_gives_its_typed_error_then_a_retry_succeeds(space, fault, error) -> None:
    prompt = f"[fault:{fault}] hello"
    async with GradioQueueClient(space.url) as client:
        with pytest.raises(error) as info:
            await client.complete(prompt)
        assert info.value.retryable
        assert (await client.complete(prompt)).text == fake_answer(prompt, DEFAULT_SYSTEM_PROMPT)


async def test_stall_ends_at_the_idle_timeout_and_cancels_the_job(space) -> None:
    space.space.config.heartbeat_interval = 0.1
    timeouts = Timeouts(idle=0.5, read=5, total=30)
    async with GradioQueueClient(space.url, timeouts=timeouts) as client:
        started = time.monotonic()
        with pytest.raises(errors.IdleTimeoutError):
            await client.complete("[fault:stall] hi")
        elapsed = time.monotonic() - started
    # Heartbeats kept arriving, yet the attempt ended: at the idle timeout, not sooner (an
    # upper bound here would only measure the machine's load; the error's type says which).
    assert elapsed > 0.4
    stats = space.space.stats
    assert stats.cancelled + stats.abandoned == 1 and stats.running == 0


async def test_silent_connection_ends_at_the_read_timeout(space) -> None:
    space.space.config.heartbeat_interval = 60
    space.space.config.concurrency_limit = 1
    timeouts = Timeouts(idle=30, read=0.5, total=30)
    async with GradioQueueClient(space.url) as patient, \
            GradioQueueClient(space.url, timeouts=timeouts) as client:
        blocker = asyncio.create_task(patient.complete("[fault:stall] hog"))
        await asyncio.sleep(0.2)
        # Queued behind the stalled job: nothing at all arrives on the stream.
        with pytest.raises(errors.ReadTimeoutError):
            await client.complete("waiting")
        blocker.cancel()
        with pytest.raises(asyncio.CancelledError):
            await blocker


async def test_total_timeout_counts_the_queue_wait(space) -> None:
    space.space.config.heartbeat_interval = 0.1
    space.space.config.concurrency_limit = 1
    timeouts = Timeouts(idle=30, read=30, total=0.6)
    async with GradioQueueClient(space.url) as patient, \
            GradioQueueClient(space.url, timeouts=timeouts) as client:
        blocker = asyncio.create_task(patient.complete("[fault:stall] hog"))
        await asyncio.sleep(0.1)
        with pytest.raises(errors.AttemptTimeoutError):
            await client.complete("waiting")
        blocker.cancel()
        await asyncio.gather(blocker, return_exceptions=True)


async def test_abandoned_stream_cancels_the_server_job(space) -> None:
    space.space.config.latency = 2.0
    async with GradioQueueClient(space.url) as client:
        stream = client.stream("long answer")
        first = await stream.__anext__()
        assert first
        await stream.aclose()
    stats = space.space.stats
    assert stats.cancelled + stats.abandoned == 1 and stats.running == 0 and stats.completed == 0


async def test_cancelled_task_cancels_the_server_job(space) -> None:
    space.space.config.latency = 2.0
    async with GradioQueueClient(space.url) as client:
        task = asyncio.create_task(client.complete("long answer"))
        await asyncio.sleep(0.4)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    stats = space.space.stats
    assert stats.cancelled + stats.abandoned == 1 and stats.running == 0 and stats.completed == 0


async def test_shared_session_is_used_and_left_open(space) -> None:
    async with aiohttp.ClientSession() as session:
        async with GradioQueueClient(space.url, session=session) as client:
            await client.complete("one")
        assert not session.closed
        async with GradioQueueClient(space.url, session=session) as client:
            assert (await client.complete("two")).text == fake_answer("two", DEFAULT_SYSTEM_PROMPT)


async def test_space_down_is_a_retryable_status(space) -> None:
    space.space.config.down = True
    async with GradioQueueClient(space.url) as client:
        with pytest.raises(errors.HTTPStatusError) as info:
            await client.complete("hi")
    assert info.value.status == 502 and info.value.retryable


# -- the provider class -------------------------------------------------------------------


async def test_provider_streams_the_exact_answer(space) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "system", "content": "Use French."},
        {"role": "user", "content": "no no no, café?"},
    ]
    pieces = [p async for p in Qwen_Qwen_2_72B.create_async_generator(
        "qwen-2-72b", messages, url=space.url)]
    assert len(pieces) > 1
    assert "".join(pieces) == fake_answer("no no no, café?", "Be brief.\nUse French.")


async def test_provider_folds_a_conversation_and_accepts_kwargs(space) -> None:
    messages = [
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
        {"role": "user", "content": "times 3?"},
    ]
    trace = RequestTrace(Qwen_Qwen_2_72B.generate_session_hash())
    async with aiohttp.ClientSession() as session:
        text = "".join([p async for p in Qwen_Qwen_2_72B.create_async_generator(
            "qwen-qwen2-72b-instruct", messages, url=space.url, session=session, timeout=30,
            hf_token="hf_not_a_real_token", trace=trace)])
    assert text == fake_answer("User: 2+2?\nAssistant: 4\nUser: times 3?\nAssistant:",
                               DEFAULT_SYSTEM_PROMPT)
    assert trace.chunks > 1


async def test_provider_raises_typed_errors(space) -> None:
    with pytest.raises(errors.AppError):
        async for _ in Qwen_Qwen_2_72B.create_async_generator(
                "qwen-2-72b", [{"role": "user", "content": "[fault:app_error:5] x"}], url=space.url):
            pass


async def test_provider_stepped_from_new_tasks_keeps_text_and_timeouts(space) -> None:
    # A foreign driver (g4f's sync client, wait_for on 3.11) pulls each fragment in a task
    # of its own: the text must still be exact and the attempt timeout must still fire.
    async def collect(prompt: str, **kwargs) -> list[str]:
        gen = Qwen_Qwen_2_72B.create_async_generator(
            "qwen-2-72b", [{"role": "user", "content": prompt}], url=space.url, **kwargs)
        pieces = []
        try:
            while True:
                pieces.append(await asyncio.ensure_future(gen.__anext__()))
        except StopAsyncIteration:
            return pieces
        finally:
            await gen.aclose()

    pieces = await collect("step by step")
    assert len(pieces) == 8 and "".join(pieces) == fake_answer("step by step", DEFAULT_SYSTEM_PROMPT)
    # Waited for, not cancelled: a cancellation would itself surface as a timeout.
    stalled = asyncio.ensure_future(collect("[fault:stall] wait", timeout=0.5))
    done, _ = await asyncio.wait({stalled}, timeout=10)
    if not done:
        stalled.cancel()
        pytest.fail("the 0.5 s attempt timeout never fired")
    with pytest.raises(errors.AttemptTimeoutError):
        stalled.result()


async def test_provider_rejects_unknown_models() -> None:
    with pytest.raises(errors.ModelNotFoundError, match="gpt-4"):
        async for _ in Qwen_Qwen_2_72B.create_async_generator("gpt-4", [{"role": "user", "content": "x"}]):
            pass


def test_provider_public_face() -> None:
    p = Qwen_Qwen_2_72B
    assert p.url == "https://qwen-qwen2-72b-instruct.hf.space"
    assert p.api_endpoint.startswith(p.url) and p.api_endpoint.endswith("/queue/join")
    assert p.working and p.supports_stream and p.supports_system_message
    assert p.supports_message_history is False
    assert p.default_model == "qwen-qwen2-72b-instruct"
    assert p.model_aliases == {"qwen-2-72b": "qwen-qwen2-72b-instruct"}
    assert set(p.models) >= {"qwen-qwen2-72b-instruct", "qwen-2-72b"}
    hashes = {p.generate_session_hash() for _ in range(100)}
    assert len(hashes) == 100 and all(len(h) == 12 and int(h, 16) >= 0 for h in hashes)


async def test_cancelled_while_joining_still_cancels_the_accepted_job(space) -> None:
    space.space.config.latency = 5.0
    async with GradioQueueClient(space.url) as client:
        await client.discover()
        task = asyncio.create_task(client.complete("long answer"))
        await asyncio.sleep(0)  # the join request is under way, not yet answered
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    # close() waited for the join to answer and for the job's cancellation.
    stats = space.space.stats
    assert stats.joins == 1
    assert stats.running == 0 and stats.cancelled + stats.abandoned == 1


async def test_a_sleeping_space_is_recognised_then_wakes(space) -> None:
    space.space.config.wake_after = 0.5
    space.space.config.hf_state = "sleeping"
    async with GradioQueueClient(space.url) as client:
        with pytest.raises(errors.SpaceUnavailableError) as info:
            await client.complete("hello")
        assert info.value.state == "sleeping" and info.value.retryable
        await asyncio.sleep(0.6)
        assert (await client.complete("hello")).text == fake_answer("hello", DEFAULT_SYSTEM_PROMPT)


@pytest.mark.parametrize(("state", "retryable"), [("building", True), ("error", False),
                                                  ("gone", False)])
async def test_space_states_are_typed(space, state: str, retryable: bool) -> None:
    space.space.config.hf_state = state
    async with GradioQueueClient(space.url) as client:
        with pytest.raises(errors.SpaceUnavailableError) as info:
            await client.complete("hello")
    assert info.value.state == state and info.value.retryable is retryable


async def test_a_slow_reader_of_the_stream_is_not_a_server_timeout(space) -> None:
    """The read/idle timeouts measure the server's silence, not the caller's pauses."""
    space.space.config.latency = 0.05
    timeouts = Timeouts(idle=0.3, read=0.3, total=30)
    async with GradioQueueClient(space.url, timeouts=timeouts) as client:
        pieces = []
        async for piece in client.stream("a slow reader"):
            pieces.append(piece)
            await asyncio.sleep(0.4)  # longer than both timeouts, while data waits unread
    assert "".join(pieces) == fake_answer("a slow reader", DEFAULT_SYSTEM_PROMPT)
    assert len(pieces) > 2
