"""The per-actor callable as Ray Data runs it: blocks in packets, tables out as they come.

Ray Data 2.60 does not stream an async-generator UDF: it collects every table a batch
yields before passing any on (``_generate_transform_fn_for_async_map`` in
``ray/data/_internal/planner/plan_udf_map_op.py``), and it glues a task's outputs into
one block of up to ``DataContext.target_max_block_size`` (128 MiB) before the task
returns it. So the Ray engine gives Ray a *synchronous* generator,
:class:`StreamingCallable`, which runs :class:`~.actor.PromptBatchCallable` on an event
loop of its own (one thread per actor, for the actor's life) and yields each result
table the moment it is yielded there; and it builds the dataset with a block size of 1
byte, so every yielded table becomes a block of its own and leaves the actor at once.

To keep blocks whole at that size, both ways carry *packets*, one-row tables:

* in, a packet is a block of rows to do: a list of encoded rows (:data:`ROWS_COLUMN`),
  one packet per spool row, so the spool reads as one block per packet;
* out, a packet is one result table in Arrow's IPC format (:data:`PACKET_COLUMN`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import os
import queue
import socket
import threading
from collections.abc import Generator, Iterator, Sequence

import pyarrow as pa

from .actor import RESULT_SCHEMA, ROW_COLUMN, ActorConfig, PromptBatchCallable

ROWS_COLUMN = "rows"
"""The one column of the spool and of an input packet: a block of encoded rows."""

PACKET_COLUMN = "packet"
"""The one column of an output packet: a result table as Arrow IPC bytes."""

ROWS_TYPE = pa.list_(pa.string())

DRIVER_POLL_SECONDS = 0.1
"""How often an actor looks for its driver's process where it cannot be told (no pidfd)."""

_DONE = object()


def block_packets(encoded: Sequence[str], block_rows: int) -> pa.Table:
    """Encoded rows as input packets of at most ``block_rows`` rows (the spool's rows)."""
    blocks = [list(encoded[i:i + block_rows]) for i in range(0, len(encoded), block_rows)]
    return pa.table({ROWS_COLUMN: pa.array(blocks, ROWS_TYPE)})


def packet_blocks(packets: pa.Table) -> Iterator[pa.Table]:
    """The blocks of input packets, each as a batch for :class:`~.actor.PromptBatchCallable`."""
    for rows in packets.column(ROWS_COLUMN).to_pylist():
        yield pa.table({ROW_COLUMN: pa.array(rows, pa.string())})


def pack(table: pa.Table) -> pa.Table:
    """A result table as an output packet."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return pa.table({PACKET_COLUMN: pa.array([sink.getvalue().to_pybytes()], pa.binary())})


def unpack(packets: pa.Table) -> Iterator[pa.Table]:
    """The result tables in output packets (:data:`~.actor.RESULT_SCHEMA`)."""
    for data in packets.column(PACKET_COLUMN).to_pylist():
        table = pa.ipc.open_stream(pa.py_buffer(data)).read_all()
        if table.schema != RESULT_SCHEMA:
            raise ValueError(f"a result packet with an unexpected schema: {table.schema}")
        yield table


class StreamingCallable:
    """Ray Data callable class: ``for packet in callable(packets)`` answers their blocks.

    A synchronous generator, so that Ray passes each packet on as it is yielded. The
    blocks are answered one after another by the actor's
    :class:`~.actor.PromptBatchCallable`, on the actor's own event loop; result tables
    that pile up while Ray is not reading go out together in the next packet.

    A dead driver must cost the requests in flight, not the rest of the block: its
    actors live on for a second or two (until they notice their raylet is gone), and
    Ray accepts a packet or two more before holding the yield. So no request starts
    while Ray holds a yield (the driver is slow, or gone), and with ``driver_pid``
    an actor on the driver's machine (all of them on a private Ray; on a cluster, those
    whose :func:`host_identity` is ``driver_host``) watches the driver's process and
    stops the moment it ends. Actors elsewhere are ended by Ray when their driver's
    job ends.

    With ``announce``, the first call yields an empty table before anything else: the
    driver learns that an actor runs (Ray scheduled the read and the actors) without
    waiting for the Space's first answer.
    """

    def __init__(self, config: ActorConfig) -> None:
        self.udf = PromptBatchCallable(config)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever,
                                        name="qwen-batch-actor-loop", daemon=True)
        self._thread.start()
        self._watch: concurrent.futures.Future[None] | None = None
        self._announce = config.announce
        if config.driver_pid is not None and config.driver_host in (None, host_identity()):
            self._watch = asyncio.run_coroutine_threadsafe(
                self._watch_driver(config.driver_pid), self._loop)

    async def _watch_driver(self, pid: int) -> None:
        """Stop the actor when process ``pid`` ends: told by a pidfd, else by polling."""
        ended = asyncio.Event()
        try:
            fd = os.pidfd_open(pid)  # readable once the process has ended (Linux 5.3+)
        except (AttributeError, OSError):  # elsewhere, or already gone: poll
            while _alive(pid):
                await asyncio.sleep(DRIVER_POLL_SECONDS)
        else:
            loop = asyncio.get_running_loop()
            loop.add_reader(fd, ended.set)
            try:
                await ended.wait()
            finally:
                loop.remove_reader(fd)
                os.close(fd)
        self.udf.stop()

    def __call__(self, packets: pa.Table) -> Generator[pa.Table, None, None]:
        if self._announce:
            self._announce = False
            yield pack(RESULT_SCHEMA.empty_table())
        for block in packet_blocks(packets):
            yield from self._stream(block)

    def _stream(self, block: pa.Table) -> Generator[pa.Table, None, None]:
        tables: queue.SimpleQueue[object] = queue.SimpleQueue()

        async def answer() -> None:
            try:
                async for table in self.udf(block):
                    tables.put(table)
            finally:
                tables.put(_DONE)

        future = asyncio.run_coroutine_threadsafe(answer(), self._loop)
        done = False
        try:
            while not done:
                ready = [tables.get()]
                with contextlib.suppress(queue.Empty):
                    while ready[-1] is not _DONE:
                        ready.append(tables.get_nowait())
                if ready[-1] is _DONE:
                    done = True
                    ready.pop()
                parts = [t for t in ready if isinstance(t, pa.Table)]
                if parts:
                    packet = pack(pa.concat_tables(parts) if len(parts) > 1 else parts[0])
                    # No request starts while Ray holds the yield (see pause_requests).
                    self._loop.call_soon_threadsafe(self.udf.pause_requests)
                    try:
                        yield packet
                    finally:
                        self._loop.call_soon_threadsafe(self.udf.resume_requests)
        finally:
            if not done:  # Ray stopped reading (the task was cancelled): stop the requests
                future.cancel()
        future.result()  # the callable never raises for a row; a bug fails the task

    def close(self) -> None:
        """Close the actor's session and stop its loop (Ray ends actors without this)."""
        if self._watch is not None:
            self._watch.cancel()
        if self._loop.is_running():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(self.udf.aclose(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(5)


def host_identity() -> str:
    """This machine and PID namespace: where a process id means the same process.

    The boot id tells machines apart (containers share their host's), the PID
    namespace containers. Empty parts where ``/proc`` lacks them.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as handle:
            boot = handle.read().strip()
    except OSError:
        boot = ""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{boot}/{namespace}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True
