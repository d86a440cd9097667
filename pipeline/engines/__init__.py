"""Engines: what runs the planned rows through the batch core.

The driver (:mod:`pipeline.app`) reads the input, plans the rows (templates,
messages, duplicates, resume, ``--limit``), and writes every result through the
same writers, errors file, lock and summary whatever the engine. An engine only
turns planned rows into results:

* ``local`` (:mod:`.local`): :func:`~pipeline.runner.run_batch` in this process, one
  pooled session for the run. The default.
* ``ray`` (:mod:`.ray_engine`): the rows go to a Ray Data pipeline whose actors each run
  :func:`~pipeline.runner.run_batch` (:class:`.actor.PromptBatchCallable`); the results
  stream back to the driver. Ray is imported only when this engine is chosen.
* ``inprocess`` (:mod:`.inprocess`, not on the command line): the Ray engine's data flow
  with its actors as objects in one thread, for tests and debugging without a cluster.

:func:`open_engine` gives an async context manager that yields an async iterator of
:class:`~pipeline.models.Success` / :class:`~pipeline.models.Failure`, one per job
(input failures pass straight through), and, like ``run_batch``, raises
:class:`~pipeline.errors.EndpointDownError` after the last result when the endpoints
are down.
"""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import AsyncIterator, Iterable
from contextlib import AbstractAsyncContextManager
from typing import TYPE_CHECKING

from pipeline.errors import ConfigError
from pipeline.models import Failure, PromptRow, Result
from pipeline.runner import BatchSettings, BatchState

if TYPE_CHECKING:
    from pipeline.app import RunOptions

ENGINES: tuple[str, ...] = ("local", "ray", "inprocess")

Rows = Iterable[PromptRow | Failure]


def spool_path(output: str) -> str:
    """Where a distributed engine spools the rows to do: ``<output>.spool`` (see .distributed)."""
    return output + ".spool"


def remove_spool(output: str) -> None:
    """Remove a spool an interrupted or killed distributed run left (the caller holds the lock)."""
    if output != "-":
        shutil.rmtree(spool_path(output), ignore_errors=True)


def open_engine(
    options: RunOptions,
    rows: Rows,
    settings: BatchSettings,
    stop: asyncio.Event,
    state: BatchState,
) -> AbstractAsyncContextManager[AsyncIterator[Result]]:
    """The results of ``rows`` on ``options.engine``; ConfigError for an unknown engine."""
    engine = getattr(options, "engine", "local")
    if engine == "local":
        from .local import open_local

        return open_local(options, rows, settings, stop, state)
    if engine == "ray":
        from .ray_engine import open_ray

        return open_ray(options, rows, settings, stop, state)
    if engine == "inprocess":  # the Ray engine's data flow without Ray (tests, debugging)
        from .inprocess import open_inprocess

        return open_inprocess(options, rows, settings, stop, state)
    raise ConfigError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
