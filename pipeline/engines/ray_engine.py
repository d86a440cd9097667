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
import sys
import threading
import time
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
from .ray_connect import (
    READ_TASK_CPUS,
    call_with_timeout,
    connect_failure,
    driver_signals_to_python,
    fit_actors,
    gcs_connect_budget,
    probe,
    resolve_address,
    workers_runtime_env,
)
from .stream import StreamingCallable, host_identity, unpack

log = logging.getLogger(__name__)

ACTOR_CPUS = 0.25
"""Logical CPUs each actor reserves: the work is waiting on the network."""

BATCHES_PER_BLOCK = 4
"""A block (what an actor is given at once) holds this many ``batch_size`` windows of rows."""

PACKET_BLOCK_BYTES = 1
"""The dataset's ``target_max_block_size``: every packet (one row) is a block of its own."""

SETTLE_SECONDS = 10.0
"""How long :meth:`RayExecutor.close` waits for every Ray call of the run to end before
``ray.shutdown`` (a Ray call in flight at shutdown ends the process with exit 1)."""


class RayExecutor:
    """Runs the per-actor callable over a spool with Ray Data."""

    def __init__(self, *, address: str | None, actors: int, per_actor: int,
                 batch_size: int | None = None, verbose: bool = False,
                 worker_logs: bool = True, connect_timeout: float = 30.0) -> None:
        self.address = address
        self.actors = actors
        self.requested_actors = actors
        self.per_actor = per_actor
        self.batch_size = batch_size or per_actor
        self.block_rows = self.batch_size * BATCHES_PER_BLOCK
        self.verbose = verbose
        self.worker_logs = worker_logs
        self.connect_timeout = connect_timeout
        self.joined: str | None = None
        """The cluster's address once joined (``--address`` resolved)."""
        self._owns_ray = False
        self._lock = threading.Lock()  # held by ray.init and ray.shutdown
        self._calls = threading.Lock()  # held by this engine's own Ray calls (fit, awaiting)
        self._state = threading.Lock()  # guards _closing and _streaming together
        self._closing = False
        self._streaming: Any = None  # Ray Data's StreamingExecutor of the running dataset

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
                self._join(kwargs)
            else:
                cpus = max(4, os.cpu_count() or 1, math.ceil(self.actors * ACTOR_CPUS) + 2)
                # "local": a new private instance, never a cluster found running here.
                self._init(address="local", num_cpus=cpus, **kwargs)
        if self.address:
            self._fit()
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = False
        with contextlib.suppress(AttributeError):
            context.print_on_execution_start = self.verbose
        logging.getLogger("ray.data").setLevel(level)

    def _join(self, kwargs: dict[str, Any]) -> None:
        """Join the cluster at ``--address``, in at most the connect timeout (see ray_connect)."""
        assert self.address is not None
        address, source = resolve_address(self.address)
        probe(address, source, self.connect_timeout)
        runtime_env = workers_runtime_env()
        if runtime_env is not None:
            kwargs["runtime_env"] = runtime_env

        try:
            with gcs_connect_budget(self.connect_timeout):
                call_with_timeout(lambda: self._init(address=address, **kwargs),
                                  self.connect_timeout, "qwen-batch-ray-init")
        except TimeoutError as exc:
            raise connect_failure(address, source, f"{exc} (--engine-connect-timeout)") from None
        except Exception as exc:
            raise connect_failure(address, source, f"{type(exc).__name__}: {exc}") from None
        self.joined = address

    def _init(self, **kwargs: Any) -> None:
        """``ray.init``; if the run was abandoned meanwhile (Ctrl-C), leave Ray at once."""
        import ray

        with self._lock:
            if self._closing:
                return
            ray.init(**kwargs)
            self._owns_ray = True
            if self._closing:
                self._owns_ray = False
                ray.shutdown()

    def _fit(self) -> None:
        """Fit the actors to the cluster's free CPUs (ConfigError when not even one fits)."""
        import ray

        with self._calls:
            if self._closing:
                return
            free = float(ray.available_resources().get("CPU", 0.0))  # type: ignore[no-untyped-call]
        fitted = fit_actors(self.requested_actors, free, ACTOR_CPUS,
                            self.joined or str(self.address))
        if fitted != self.actors:
            print(f"qwen-batch: {self.requested_actors} actors do not fit the Ray cluster's "
                  f"free CPUs ({free:g} free; {ACTOR_CPUS:g} per actor plus "
                  f"{READ_TASK_CPUS:g} for the read task); running {fitted} actors: "
                  f"{fitted} actors x {self.per_actor} requests = at most "
                  f"{fitted * self.per_actor} requests in flight",
                  file=sys.stderr, flush=True)
            self.actors = fitted

    def awaiting(self) -> str:
        """What the engine waits for before its first actor runs (for the waiting message)."""
        text = (f"{self.actors} actors ({ACTOR_CPUS:g} CPU each) and the read task "
                f"({READ_TASK_CPUS:g} CPU)")
        import ray

        # In the caller's thread, under the lock close() takes before ray.shutdown: a
        # query left running in a thread of its own would meet a shut-down Ray.
        with self._calls, contextlib.suppress(Exception):
            if self._closing:
                return text
            free = ray.available_resources().get("CPU", 0.0)  # type: ignore[no-untyped-call]
            total = ray.cluster_resources().get("CPU", 0.0)  # type: ignore[no-untyped-call]
            text += f"; the cluster has {free:g} of {total:g} CPUs free"
        return text

    def batches(self, spool: Spool, config: ActorConfig) -> Iterator[pa.Table]:
        import ray

        # On a cluster, read the spool where it is: on the driver's node.
        paths = [("local://" if self.address else "") + os.path.abspath(p) for p in spool.paths]
        # The actors on the driver's machine watch its process (see .stream); on a private
        # Ray that is all of them.
        config = replace(config, driver_pid=os.getpid(), driver_host=host_identity(),
                         announce=True)
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
        self._capture_streaming(dataset)
        iterator = dataset.iterator()
        for packets in iterator.iter_batches(batch_format="pyarrow", batch_size=None,
                                             prefetch_batches=0):
            yield from unpack(packets)

    def _capture_streaming(self, dataset: Any) -> None:
        """Keep the dataset's StreamingExecutor once it runs, so that :meth:`stop` can end
        it from any thread.

        Ray Data hands the executor back only with the first block (it waits for it
        inside ``iter_batches``): while the actors start, a reader would otherwise be
        stuck there with nothing able to end it, and ``ray.shutdown`` under it ends the
        process (exit 1, or SIGABRT after a SIGTERM) before the summary is written.
        """
        make = getattr(dataset, "_create_executor", None)
        if make is None:  # another Ray Data: stop() then relies on the reader's close
            return

        def create() -> Any:
            streaming = make()
            execute = streaming.execute

            def execute_and_keep(*args: Any, **kwargs: Any) -> Any:
                outputs = execute(*args, **kwargs)  # starts the executor's thread
                with self._state:
                    self._streaming = streaming
                    closing = self._closing
                if closing:  # stop() came while the executor started: end it now
                    self._stop_streaming()
                return outputs

            streaming.execute = execute_and_keep
            return streaming

        dataset._create_executor = create

    def _stop_streaming(self) -> None:
        with self._state:
            streaming = self._streaming
        if streaming is None:
            return
        with contextlib.suppress(Exception):
            streaming.shutdown(force=True)  # kills the actors; joins its thread for 2 s
        # Its thread marks the output finished when it ends; should it be stuck in a Ray
        # call, the reader must still leave.
        with contextlib.suppress(Exception):
            streaming._output_node[1].mark_finished(None)

    def stop(self) -> None:
        """End the dataset's execution: the reader's iterator ends soon after (Ray stays up)."""
        with self._state:
            self._closing = True
        self._stop_streaming()

    def _settle(self, seconds: float) -> None:
        """Wait (bounded) until no Ray call of this run is in flight: Ray Data's executor
        thread has ended and neither :meth:`_fit` nor :meth:`awaiting` is inside Ray."""
        end = time.monotonic() + seconds
        thread = self._streaming
        if isinstance(thread, threading.Thread) and thread.is_alive():
            thread.join(max(0.0, end - time.monotonic()))
            if thread.is_alive():
                log.warning("Ray Data's executor is still running after %g s; leaving Ray "
                            "anyway", seconds)
        if self._calls.acquire(timeout=max(0.1, end - time.monotonic())):
            self._calls.release()  # _closing is set: no new call starts after this
        else:
            log.warning("a query of the Ray cluster is still running after %g s; leaving "
                        "Ray anyway", seconds)

    def close(self) -> None:
        """Leave (or stop) Ray; call once the reader has left Ray Data's iterator."""
        with self._state:
            self._closing = True
        if not self._lock.acquire(timeout=0.1):
            return  # ray.init still runs (abandoned): it leaves the cluster when it ends
        try:
            if self._owns_ray:
                import ray

                self._settle(SETTLE_SECONDS)
                self._owns_ray = False
                # Should a thread still be inside Ray Data, its next Ray call must fail,
                # not start a new Ray behind our back.
                with contextlib.suppress(Exception):
                    ray._private.auto_init_hook.enable_auto_connect = False
                logging.getLogger("ray.data").setLevel(logging.CRITICAL)
                ray.shutdown()
        finally:
            self._lock.release()


def require_ray() -> None:
    """ConfigError (exit 2) when Ray Data cannot be imported."""
    driver_signals_to_python()  # before Ray's first import, which reads it
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
                           worker_logs=options.output != "-",
                           connect_timeout=options.engine.connect_timeout)
    async with open_executor(executor, options, rows, settings, stop, state,
                             start_timeout=options.engine.start_timeout) as results:
        yield results
