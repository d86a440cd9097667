"""What every engine is given: the planned rows, and the part of the run's options it reads.

The driver (:mod:`pipeline.app`) hands its settings objects down in :class:`EngineOptions`,
so no engine imports the driver. An :data:`Engine` is anything
called like :func:`pipeline.engines.open_engine`: the built-in ones are chosen by name,
and a caller of :func:`pipeline.app.run` may pass another (a test double, say).
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

from pipeline.models import Failure, PromptRow, Result
from pipeline.runner import BatchState
from pipeline.settings import BatchSettings, ClientSettings, EngineSettings

Rows = Iterable[PromptRow | Failure]
"""The planned rows, input failures among them (they pass straight through)."""


@dataclass(frozen=True)
class EngineOptions:
    """What an engine reads besides the batch's own :class:`BatchSettings`.

    No defaults: the driver passes its own settings objects, whose defaults are the only
    ones (:mod:`pipeline.settings`). All of it is plain data and picklable.
    """

    engine: EngineSettings
    """Which engine (``engine.kind``) and its layout: address, actors, per-actor limit."""
    client: ClientSettings
    """How each engine's clients reach the endpoints."""
    output: str
    """Where the driver writes (distributed engines spool beside it)."""


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
