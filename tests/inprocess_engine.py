"""A test double of the Ray engine: its data flow, its actors as objects in one thread.

Not an engine of the package (nothing offers it on the command line): tests hand
:func:`open_inprocess` to ``pipeline.app.run(options, engine=open_inprocess)``.
:class:`InProcessExecutor` runs ``actors`` instances of
:class:`~pipeline.engines.actor.PromptBatchCallable` on a private event loop in a
thread. Like the Ray engine, it takes the spool's blocks of ``batches_per_block *
batch_size`` rows, gives each actor one block at a time, and hands back every result
table an actor yields the moment it is yielded. Tests use it to exercise the whole
driver side (spool, results, summary, resume, deadline) without a cluster.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import AsyncIterator, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.engines.actor import ActorConfig, PromptBatchCallable
from pipeline.engines.base import EngineOptions, Rows
from pipeline.engines.distributed import Spool, open_executor
from pipeline.engines.stream import packet_blocks
from pipeline.models import Result
from pipeline.runner import BatchSettings, BatchState

_END = object()


class InProcessExecutor:
    """Distributed-engine executor whose "actors" share one thread and event loop."""

    def __init__(self, actors: int, per_actor: int, *, batch_size: int | None = None,
                 batches_per_block: int = 4) -> None:
        self.actors = actors
        self.per_actor = per_actor
        self.batch_size = batch_size or per_actor
        self.block_rows = self.batch_size * batches_per_block
        self.callables: list[PromptBatchCallable] = []
        self._closed = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    def describe(self) -> str:
        return (f"in-process engine: {self.actors} actors x {self.per_actor} requests = at most "
                f"{self.actors * self.per_actor} requests in flight")

    def start(self) -> None:
        """Nothing to start."""

    def batches(self, spool: Spool, config: ActorConfig) -> Iterator[pa.Table]:
        out: queue.Queue[object] = queue.Queue()
        self._thread = threading.Thread(target=self._serve, args=(spool, config, out),
                                        name="qwen-batch-inprocess", daemon=True)
        self._thread.start()
        while not self._closed.is_set():
            try:
                item = out.get(timeout=0.2)
            except queue.Empty:
                continue
            if item is _END:
                return
            if isinstance(item, BaseException):
                raise item
            assert isinstance(item, pa.Table)
            yield item

    def _blocks(self, spool: Spool) -> Iterator[pa.Table]:
        for path in spool.paths:
            yield from packet_blocks(pq.read_table(path))

    def _serve(self, spool: Spool, config: ActorConfig, out: queue.Queue[object]) -> None:
        try:
            asyncio.run(self._main(spool, config, out))
        except asyncio.CancelledError:
            pass
        except BaseException as exc:  # handed to the reader, which raises it
            out.put(exc)
            return
        out.put(_END)

    async def _main(self, spool: Spool, config: ActorConfig, out: queue.Queue[object]) -> None:
        self._loop = asyncio.get_running_loop()
        self._task = asyncio.current_task()
        if self._closed.is_set():
            return
        self.callables = [PromptBatchCallable(config) for _ in range(self.actors)]
        blocks = self._blocks(spool)

        async def actor(udf: PromptBatchCallable) -> None:
            for block in blocks:  # one shared iterator: each block goes to one actor
                async with contextlib.aclosing(udf(block)) as tables:
                    async for table in tables:
                        out.put(table)

        try:
            await asyncio.gather(*(actor(udf) for udf in self.callables))
        finally:
            for udf in self.callables:
                with contextlib.suppress(Exception):
                    await udf.aclose()

    def stop(self) -> None:
        self.close()

    def close(self) -> None:
        self._closed.set()
        loop, task = self._loop, self._task
        if loop is not None and task is not None:
            with contextlib.suppress(RuntimeError):  # the loop already ended
                loop.call_soon_threadsafe(task.cancel)
        if self._thread is not None:
            self._thread.join(10)


@contextlib.asynccontextmanager
async def open_inprocess(
    options: EngineOptions, rows: Rows, settings: BatchSettings, stop: asyncio.Event,
    state: BatchState,
) -> AsyncIterator[AsyncIterator[Result]]:
    """An :data:`~pipeline.engines.base.Engine`: the Ray engine's path with in-process actors."""
    executor = InProcessExecutor(options.engine.actors,
                                 options.engine.per_actor(settings.concurrency))
    async with open_executor(executor, options, rows, settings, stop, state) as results:
        yield results
