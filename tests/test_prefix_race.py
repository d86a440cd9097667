"""One discovery per attempt: a row joins and reads its stream under the same API prefix.

A Gradio 6 stand-in serves its queue under ``/gradio_api``. While row A's join is
being answered, another request's join gets a 404, which makes the client forget
its discovery; row A must still read its stream under the prefix it joined with.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import aiohttp
import pytest
from silent_space import SilentSpace, answer_for, run_silent_space

from pipeline import errors
from pipeline.client import GradioQueueClient, Timeouts

TIMEOUTS = Timeouts(connect=2.0, read=2.0, idle=2.0, total=5.0)


async def test_a_discovery_reset_between_join_and_stream_does_not_move_the_stream() -> None:
    other: list[BaseException] = []
    fired: list[bool] = []
    clients: list[GradioQueueClient] = []

    async def on_request_end(_: aiohttp.ClientSession, __: SimpleNamespace,
                             params: aiohttp.TraceRequestEndParams) -> None:
        # Row A's join has its answer's headers: now a concurrent request's join
        # meets a 404, and the client forgets what it discovered.
        if params.url.path.endswith("/queue/join") and not fired:
            fired.append(True)
            try:
                await clients[0].complete("[404] moved")
            except errors.HTTPStatusError as exc:
                other.append(exc)

    trace_config = aiohttp.TraceConfig()
    trace_config.on_request_end.append(on_request_end)
    async with run_silent_space(SilentSpace(major=6)) as space:
        async with aiohttp.ClientSession(trace_configs=[trace_config]) as session, \
                GradioQueueClient(space.url, session=session, timeouts=TIMEOUTS) as client:
            clients.append(client)
            assert (await client.discover()).api_prefix == "/gradio_api"
            text = (await asyncio.wait_for(client.complete("row A"), 10)).text
        assert text == answer_for("row A")
        assert len(other) == 1 and getattr(other[0], "status", None) == 404
        assert space.hits["data"] == 1  # read once, under /gradio_api


@pytest.mark.parametrize("major", [4, 6])
async def test_after_a_404_the_next_attempt_discovers_again(major: int) -> None:
    async with run_silent_space(SilentSpace(major=major)) as space, \
            GradioQueueClient(space.url, timeouts=TIMEOUTS) as client:
        with pytest.raises(errors.HTTPStatusError):
            await asyncio.wait_for(client.complete("[404] moved"), 10)
        assert (await asyncio.wait_for(client.complete("again"), 10)).text == answer_for("again")
        assert space.hits["config"] == 2
