"""The Ray engine (``qwen-batch run --engine ray``): the batch core on Ray Data actors.

Only imported when the engine is chosen; needs ``pip install 'qwen-batch[ray]'``.

The driver plans the rows and spools them (:mod:`.distributed`) in blocks of
``4 x batch_size`` rows, one per spool row, so every actor gets work even from one small
file. Ray Data reads the spool, and ``map_batches`` runs
:class:`~pipeline.engines.stream.StreamingCallable` (the batch core,
:class:`~pipeline.engines.actor.PromptBatchCallable`, behind a synchronous generator)
on a fixed pool of ``--actors`` actors (``ActorPoolStrategy``, a quarter CPU each),
one block at a time per actor, with ``--per-actor-concurrency`` requests in flight, so
the whole run never has more than ``actors x per-actor-concurrency``. Each result table
an actor yields is a block of its own (the dataset's block size is 1 byte, see
:mod:`.stream`), read by the driver as soon as it exists (``iter_batches`` without
prefetching, which would hold every block back until the next one arrives) and written
through the local engine's writers.

Without ``--address`` a private single-node Ray is started for the run (and stopped at
its end); ``--address auto`` (or ``host:port``) joins a running cluster, whose nodes must
have ``qwen-batch[ray]`` installed. The spool is then read with ``local://`` paths, so
its read tasks run on the driver's node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import pyarrow as pa

from pipeline.errors import ConfigError
from pipeline.models import Result
from pipeline.runner import BatchSettings, BatchState

from .actor import ActorConfig
from .base import EngineOptions, Rows
from .distributed import Spool, open_executor
from .stream import StreamingCallable, unpack

log = logging.getLogger(__name__)

ACTOR_CPUS = 0.25
"""Logical CPUs each actor reserves: the work is waiting on the network."""

BATCHES_PER_BLOCK = 4
"""A block (what an actor is given at once) holds this many ``batch_size`` windows of rows."""

PACKET_BLOCK_BYTES = 1
"""The dataset's ``target_max_block_size``: every packet (one row) is a block of its own."""


class RayExecutor:
    """Runs the per-actor callable over a spool with Ray Data."""

    def __init__(self, *, address: str | None, actors: int, per_actor: int,
                 batch_size: int | None = None, verbose: bool = False,
                 worker_logs: bool = True) -> None:
        self.address = address
        self.actors = actors
        self.per_actor = per_actor
        self.batch_size = batch_size or per_actor
        self.block_rows = self.batch_size * BATCHES_PER_BLOCK
        self.verbose = verbose
        self.worker_logs = worker_logs
        self._owns_ray = False

    def describe(self) -> str:
        where = f"Ray cluster at {self.address}" if self.address else "a local Ray"
        return (f"ray engine on {where}: {self.actors} actors x {self.per_actor} requests "
                f"= at most {self.actors * self.per_actor} requests in flight")

    def start(self) -> None:
        import ray

        level = logging.INFO if self.verbose else logging.ERROR
        if not ray.is_initialized():
            # Workers' output is forwarded to the driver's stdout and stderr: not when the
            # records go to stdout (their logs stay in Ray's session directory).
            kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": level,
                                      "log_to_driver": self.worker_logs}
            if self.address:
                ray.init(address=self.address, **kwargs)
            else:
                cpus = max(4, os.cpu_count() or 1, math.ceil(self.actors * ACTOR_CPUS) + 2)
                # "local": a new private instance, never a cluster found running here.
                ray.init(address="local", num_cpus=cpus, **kwargs)
            self._owns_ray = True
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        with contextlib.suppress(AttributeError):
            context.print_on_execution_start = self.verbose
        logging.getLogger("ray.data").setLevel(level)

    def batches(self, spool: Spool, config: ActorConfig) -> Iterator[pa.Table]:
        import ray

        # On a cluster, read the spool where it is: on the driver's node.
        paths = [("local://" if self.address else "") + os.path.abspath(p) for p in spool.paths]
        if not self.address:  # a private Ray: the actors are on this machine and can watch it
            config = replace(config, driver_pid=os.getpid())
        context = ray.data.DataContext.get_current()
        default_block_bytes = context.target_max_block_size
        # A dataset keeps the context it was made with: the tiny block size is this
        # dataset's alone, whatever else runs in this process.
        context.target_max_block_size = PACKET_BLOCK_BYTES
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=".*local://.*")
                dataset = ray.data.read_parquet(paths)
            dataset = dataset.map_batches(
                StreamingCallable,
                fn_constructor_kwargs={"config": config},
                batch_size=1,  # one packet: one block of rows
                batch_format="pyarrow",
                compute=ray.data.ActorPoolStrategy(size=self.actors),
                num_cpus=ACTOR_CPUS,
            )
        finally:
            context.target_max_block_size = default_block_bytes
        for packets in dataset.iter_batches(batch_format="pyarrow", batch_size=None,
                                            prefetch_batches=0):
            yield from unpack(packets)

    def close(self) -> None:
        if self._owns_ray:
            import ray

            self._owns_ray = False
            # The reader thread may still be inside Ray Data (an interrupted run): after the
            # shutdown its next Ray call must fail, not start a new Ray behind our back.
            with contextlib.suppress(Exception):
                ray._private.auto_init_hook.enable_auto_connect = False
            logging.getLogger("ray.data").setLevel(logging.CRITICAL)
            ray.shutdown()


def require_ray() -> None:
    """ConfigError (exit 2) when Ray Data cannot be imported."""
    try:
        import ray.data  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"--engine ray needs Ray Data ({exc}): "
                          "pip install 'qwen-batch[ray]'") from None


@contextlib.asynccontextmanager
async def open_ray(
    options: EngineOptions, rows: Rows, settings: BatchSettings, stop: asyncio.Event,
    state: BatchState,
) -> AsyncIterator[AsyncIterator[Result]]:
    """The Ray engine's results of ``rows`` (see the module docstring)."""
    require_ray()
    executor = RayExecutor(address=options.engine.address, actors=options.engine.actors,
                           per_actor=options.engine.per_actor(settings.concurrency),
                           verbose=logging.getLogger().getEffectiveLevel() <= logging.INFO,
                           worker_logs=options.output != "-")
    async with open_executor(executor, options, rows, settings, stop, state) as results:
        yield results
