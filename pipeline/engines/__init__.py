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

Both take :class:`.base.EngineOptions`, built by the driver, and never import it. A
caller of :func:`pipeline.app.run` may pass an engine of its own instead (an
:data:`.base.Engine`): the tests run the Ray engine's data flow without Ray that way.

:func:`open_engine` gives an async context manager that yields an async iterator of
:class:`~pipeline.models.Success` / :class:`~pipeline.models.Failure`, one per job
(input failures pass straight through), and, like ``run_batch``, raises
:class:`~pipeline.errors.EndpointDownError` after the last result when the endpoints
are down.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager

from pipeline.errors import ConfigError
from pipeline.models import Result
from pipeline.runner import BatchSettings, BatchState

from .base import Engine, EngineOptions, Rows, remove_spool, spool_path

__all__ = ["ENGINES", "Engine", "EngineOptions", "Rows", "open_engine", "remove_spool", "spool_path"]

ENGINES: tuple[str, ...] = ("local", "ray")


def open_engine(
    options: EngineOptions,
    rows: Rows,
    settings: BatchSettings,
    stop: asyncio.Event,
    state: BatchState,
) -> AbstractAsyncContextManager[AsyncIterator[Result]]:
    """The results of ``rows`` on ``options.engine.kind``; ConfigError for an unknown engine."""
    engine = options.engine.kind
    if engine == "local":
        from .local import open_local

        return open_local(options, rows, settings, stop, state)
    if engine == "ray":
        from .ray_engine import open_ray

        return open_ray(options, rows, settings, stop, state)
    raise ConfigError(f"unknown engine {engine!r}: use one of {', '.join(ENGINES)}")
