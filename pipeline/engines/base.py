"""What every engine is given: the planned rows, and the part of the run's options it reads.

The driver (:mod:`pipeline.app`) builds :class:`EngineOptions` from its own options and
hands them down, so no engine imports the driver. An :data:`Engine` is anything
called like :func:`pipeline.engines.open_engine`: the built-in ones are chosen by name,
and a caller of :func:`pipeline.app.run` may pass another (a test double, say).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field

from pipeline.client import Timeouts
from pipeline.models import Failure, PromptRow, Result
from pipeline.runner import BatchSettings, BatchState

Rows = Iterable[PromptRow | Failure]
"""The planned rows, input failures among them (they pass straight through)."""


@dataclass(frozen=True)
class EngineOptions:
    """The run's options that an engine reads (the batch itself comes as ``BatchSettings``).

    No defaults: the driver fills every field from its own options, whose defaults
    are the only ones.
    """

    engine: str
    """``local`` or ``ray``: which engine :func:`pipeline.engines.open_engine` opens."""
    urls: tuple[str, ...]
    timeouts: Timeouts
    proxy: str | None = field(repr=False)
    hf_token: str | None = field(repr=False)
    ca_bundle: str | None
    max_response_chars: int | None
    output: str
    """Where the driver writes (distributed engines spool beside it)."""
    concurrency: int
    actors: int
    per_actor_concurrency: int | None
    ray_address: str | None
    engine_connect_timeout: float
    """Seconds to join the cluster at ``ray_address`` (distributed engines)."""
    engine_start_timeout: float
    """Seconds for a distributed engine's first worker to start."""


Engine = Callable[
    [EngineOptions, Rows, BatchSettings, asyncio.Event, BatchState],
    AbstractAsyncContextManager[AsyncIterator[Result]],
]
"""Opens a run's engine: an async context manager over the results of the rows, one per job."""


def spool_path(output: str) -> str:
    """Where a distributed engine spools the rows to do: ``<output>.spool`` (see .distributed)."""
    return output + ".spool"


def remove_spool(output: str) -> None:
    """Remove a spool an interrupted or killed distributed run left (the caller holds the lock)."""
    if output != "-":
        shutil.rmtree(spool_path(output), ignore_errors=True)
