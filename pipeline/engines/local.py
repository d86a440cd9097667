"""The local engine: :func:`~pipeline.runner.run_batch` in this process (``--engine local``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from pipeline.client import GradioQueueClient
from pipeline.models import Result
from pipeline.runner import BatchSettings, BatchState, run_batch
from pipeline.sessions import open_session

from .base import EngineOptions, Rows, remove_spool


@contextlib.asynccontextmanager
async def open_local(
    options: EngineOptions, rows: Rows, settings: BatchSettings, stop: asyncio.Event,
    state: BatchState,
) -> AsyncIterator[AsyncIterator[Result]]:
    """One pooled session and a client per endpoint for the run; yields run_batch's results.

    A spool left by a killed Ray run on the same output is removed: this run finishes the job.
    """
    remove_spool(options.output)
    reach = options.client
    async with open_session(reach.ca_bundle) as session:
        clients = [GradioQueueClient(url, session=session, proxy=reach.proxy,
                                     hf_token=reach.hf_token, timeouts=reach.timeouts,
                                     max_answer_chars=reach.max_response_chars)
                   for url in reach.urls]
        try:
            yield run_batch(rows, clients, settings, stop=stop, state=state)
        finally:
            for client in clients:
                await client.close()
