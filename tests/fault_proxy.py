"""A fault-injecting TCP proxy on 127.0.0.1, after Toxiproxy, for the end-to-end fault tests.

:class:`FaultProxy` listens on a free port (``url``) and forwards every connection to an
upstream server (the fake Space), applying "toxics" to the bytes of each connection:

* shapers, which only change timing and segmentation: :class:`Latency` (each chunk held
  for a delay ± jitter from its arrival), :class:`Bandwidth` (KB/s) and :class:`Slicer`
  (1–3 byte segments, each its own ``send``, with an optional pause between them);
* terminators, which end the stream after ``after`` bytes have passed in their direction:
  :class:`ResetPeer` (RST: ``SO_LINGER`` 0 and ``abort()``), :class:`LimitData` (a clean
  cut: FIN on both sides) and :class:`Stall` (Toxiproxy's ``timeout``: nothing more is
  forwarded, the connection stays open until the client leaves or ``close_after``).

A :class:`Toxic` puts one of them on one direction (``downstream``: server to client, or
``upstream``) of the connections its selector picks: :func:`always`, :func:`first`,
:func:`every` or :func:`seeded`, capped by ``limit``. Selection, thresholds drawn from a
range, jitter and slice sizes all come from the proxy's seed and the connection's number,
so a run is reproducible and a capped fault cannot fail a row forever. :class:`ProxyStats`
counts connections, the toxics applied and the ones that acted, so a test can prove its
faults happened. :class:`ThreadedFaultProxy` runs one in a thread for synchronous callers
(Click's CliRunner).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import socket
import struct
import threading
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from threaded_server import ThreadedServer

DOWNSTREAM = "downstream"
UPSTREAM = "upstream"
_READ_SIZE = 65536
_CONNECT_TIMEOUT = 5.0

Bytes = int | tuple[int, int]
"""A byte count, or an inclusive range to draw one from per connection."""


@dataclass(frozen=True)
class Latency:
    """Hold each chunk until ``seconds`` (± ``jitter``) after it arrived."""

    seconds: float
    jitter: float = 0.0
    kind = "latency"


@dataclass(frozen=True)
class Bandwidth:
    """Forward at most ``rate`` KB/s."""

    rate: float
    kind = "bandwidth"


@dataclass(frozen=True)
class Slicer:
    """Forward each chunk as segments of ``sizes`` bytes, pausing ``delay`` s between them."""

    sizes: tuple[int, int] = (1, 3)
    delay: float = 0.0
    kind = "slicer"


@dataclass(frozen=True)
class ResetPeer:
    """After ``after`` bytes, reset both sides (the client gets ECONNRESET)."""

    after: Bytes = 0
    kind = "reset_peer"


@dataclass(frozen=True)
class LimitData:
    """After ``after`` bytes, close both sides cleanly (the stream is cut short)."""

    after: Bytes = 0
    kind = "limit_data"


@dataclass(frozen=True)
class Stall:
    """After ``after`` bytes, forward nothing more; close after ``close_after`` s (None: never)."""

    after: Bytes = 0
    close_after: float | None = None
    kind = "timeout"


Effect = Latency | Bandwidth | Slicer | ResetPeer | LimitData | Stall
Selector = Callable[[int, int], bool]
"""Picks connections: (connection number from 1, proxy seed) -> apply the toxic?"""


def always(index: int, seed: int) -> bool:
    """Every connection."""
    return True


def first(n: int) -> Selector:
    """Connections 1 to ``n``."""
    return lambda index, seed: index <= n


def every(k: int, offset: int = 0) -> Selector:
    """Connections ``offset + k``, ``offset + 2k``, ..."""
    return lambda index, seed: index > offset and (index - offset) % k == 0


def seeded(rate: float) -> Selector:
    """Each connection with probability ``rate``, drawn from the seed and its number only."""
    return lambda index, seed: random.Random(f"select:{seed}:{index}").random() < rate


@dataclass(frozen=True, eq=False)
class Toxic:
    """``effect`` on the ``stream`` direction of the connections ``select`` picks.

    With ``trigger``, a picked connection gets the toxic only once the client sent a
    request line containing it (``"/queue/data"``), and byte counts start there: the
    proxy stays byte-level, but a test can aim its faults at one kind of exchange.
    ``limit`` caps the connections that get it (counted in ``ProxyStats.applied``).
    """

    effect: Effect
    stream: str = DOWNSTREAM
    select: Selector = always
    limit: int | None = None
    trigger: str | None = None
    name: str = ""

    @property
    def label(self) -> str:
        return self.name or self.effect.kind


@dataclass
class ProxyStats:
    """What the proxy did; read it through :meth:`FaultProxy.snapshot` from another thread."""

    connections: int = 0
    applied: Counter[str] = field(default_factory=Counter)
    """Connections each toxic (by label) was put on."""
    fired: Counter[str] = field(default_factory=Counter)
    """Times each toxic acted: chunks delayed, segments sent, streams reset, cut or stalled."""
    bytes: Counter[str] = field(default_factory=Counter)
    """Bytes forwarded per direction."""
    hits: Counter[str] = field(default_factory=Counter)
    """Terminators fired, by label and the HTTP request in flight: ``reset_peer GET /queue/data``."""


class FaultProxy:
    """The proxy; ``async with`` it, or :meth:`start` then :meth:`close` on one event loop."""

    def __init__(self, upstream: str, toxics: Sequence[Toxic] = (), seed: int = 0) -> None:
        parts = urlsplit(upstream if "//" in upstream else f"//{upstream}")
        if parts.hostname != "127.0.0.1" or parts.port is None:
            raise ValueError(f"the upstream must be 127.0.0.1:PORT, not {upstream!r}")
        self._upstream = (parts.hostname, parts.port)
        self.toxics = tuple(toxics)
        self.seed = seed
        self.stats = ProxyStats()
        self.url = ""
        self._lock = threading.Lock()
        self._server: asyncio.AbstractServer | None = None
        self._handlers: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._closing = False

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1; ``url`` is then set."""
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"

    async def close(self) -> None:
        """Stop listening, drop every connection and wait for every handler to end."""
        self._closing = True
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    def snapshot(self) -> ProxyStats:
        """A copy of the counters, safe to take from any thread."""
        with self._lock:
            s = self.stats
            return ProxyStats(s.connections, Counter(s.applied), Counter(s.fired), Counter(s.bytes),
                              Counter(s.hits))

    def _count(self, counter: str, key: str, n: int = 1) -> None:
        with self._lock:
            getattr(self.stats, counter)[key] += n

    def _claim(self, toxic: Toxic) -> bool:
        """Whether ``toxic`` may go on one more connection (and count it if so)."""
        with self._lock:
            label = toxic.label
            if toxic.limit is not None and self.stats.applied[label] >= toxic.limit:
                return False
            self.stats.applied[label] += 1
            return True

    async def _handle(self, client_reader: asyncio.StreamReader,
                      client_writer: asyncio.StreamWriter) -> None:
        try:
            await self._connection(client_reader, client_writer)
        except asyncio.CancelledError:
            if not self._closing:
                raise
            # close() ends every connection this way: not an error for asyncio to log

    async def _connection(self, client_reader: asyncio.StreamReader,
                          client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(client_writer)
        with self._lock:
            self.stats.connections += 1
            index = self.stats.connections
        upstream_writer: asyncio.StreamWriter | None = None
        try:
            toxics = [t for t in self.toxics if t.select(index, self.seed)]
            _no_delay(client_writer)
            upstream_reader, upstream = await asyncio.wait_for(
                asyncio.open_connection(*self._upstream), _CONNECT_TIMEOUT)
            upstream_writer = upstream
            self._writers.add(upstream)
            _no_delay(upstream)
            link = _Link((client_writer, upstream))
            pumps = [
                asyncio.ensure_future(
                    _Pump(self, direction, f"{self.seed}:{index}:{direction}", link,
                          [t for t in toxics if t.stream == direction]).run(reader, writer))
                for direction, reader, writer in ((DOWNSTREAM, upstream_reader, client_writer),
                                                  (UPSTREAM, client_reader, upstream))
            ]
            try:
                # Over when the server side ends, a fault fires or a side fails; a client's
                # half-close only passes its EOF on (False) and the answer still comes back.
                waiting = set(pumps)
                while waiting:
                    done, waiting = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
                    if any(p.exception() is not None or p.result() for p in done):
                        break
            finally:
                for pump in pumps:
                    pump.cancel()
                await asyncio.gather(*pumps, return_exceptions=True)
        except (OSError, asyncio.TimeoutError):
            client_writer.transport.abort()  # upstream unreachable: the client sees a reset
        finally:
            for writer in (client_writer, upstream_writer):
                if writer is not None:
                    writer.close()  # flushes what was written, then FIN (a no-op after abort)
                    self._writers.discard(writer)
            self._handlers.discard(task)


def _no_delay(writer: asyncio.StreamWriter) -> None:
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


_REQUEST_LINE = re.compile(rb"(GET|POST|PUT|DELETE|HEAD|OPTIONS) ([^ ?\r\n]+)[^\r\n]* HTTP/1\.[01]\r\n")


class _Link:
    """What both directions of one connection share: its two ends and the request in flight."""

    def __init__(self, ends: tuple[asyncio.StreamWriter, asyncio.StreamWriter]) -> None:
        self.ends = ends
        self.request = ""
        self._tail = b""

    def saw(self, data: bytes) -> None:
        """Note the last HTTP request line the client sent (for :attr:`ProxyStats.hits` only)."""
        self._tail = (self._tail + data)[-4096:]
        lines = _REQUEST_LINE.findall(self._tail)
        if lines:
            self.request = b" ".join(lines[-1]).decode("ascii", "replace")


class _Armed:
    """One toxic on one pump: where its byte count starts, and its threshold if a terminator."""

    def __init__(self, toxic: Toxic, rng: random.Random) -> None:
        self.toxic = toxic
        self.start: int | None = None  # bytes passed when it became active; None: not yet
        self.after = 0
        effect = toxic.effect
        if isinstance(effect, (ResetPeer, LimitData, Stall)):
            self.after = effect.after if isinstance(effect.after, int) else rng.randint(*effect.after)

    @property
    def terminates(self) -> bool:
        return isinstance(self.toxic.effect, (ResetPeer, LimitData, Stall))


class _Pump:
    """One direction of one connection: read, shape, forward; fire the earliest terminator once."""

    def __init__(self, proxy: FaultProxy, direction: str, seed: str, link: _Link,
                 toxics: list[Toxic]) -> None:
        self.proxy, self.direction, self.link = proxy, direction, link
        rng = random.Random(seed)  # one per direction: its draws never depend on timing
        self.rng = rng
        self.armed = [_Armed(t, rng) for t in toxics]
        self.waiting = list(self.armed)

    def _activate(self, passed: int) -> None:
        for armed in list(self.waiting):
            trigger = armed.toxic.trigger
            if trigger is None or trigger in self.link.request:
                self.waiting.remove(armed)
                if self.proxy._claim(armed.toxic):
                    armed.start = passed

    def _end(self) -> tuple[_Armed, int] | None:
        """The active terminator that fires first, and the byte count where it does."""
        ends = [(a.start + a.after, i) for i, a in enumerate(self.armed)
                if a.terminates and a.start is not None]
        if not ends:
            return None
        end, i = min(ends)
        return self.armed[i], end

    async def run(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Forward until EOF or a fault; True when the connection is over."""
        # A separate reader stamps each chunk on arrival, so latency counts from then and
        # not from when the previous chunk was let through.
        chunks: asyncio.Queue[tuple[bytes, float]] = asyncio.Queue()
        feeder = asyncio.ensure_future(_feed(reader, chunks))
        try:
            passed = 0
            while True:
                data, arrived = await chunks.get()
                if not data:
                    if self.direction == DOWNSTREAM or not writer.can_write_eof():
                        return True
                    writer.write_eof()
                    return False
                if self.direction == UPSTREAM:
                    self.link.saw(data)
                if self.waiting:
                    self._activate(passed)
                end = self._end()
                if end is not None and passed + len(data) >= end[1]:
                    await self._send(data[: end[1] - passed], arrived, writer)
                    await self._fire(end[0].toxic, chunks)
                    return True
                passed += len(data)
                await self._send(data, arrived, writer)
        finally:
            feeder.cancel()
            await asyncio.gather(feeder, return_exceptions=True)

    async def _send(self, data: bytes, arrived: float, writer: asyncio.StreamWriter) -> None:
        if not data:
            return
        loop = asyncio.get_running_loop()
        segments = [data]
        pause, rate = 0.0, 0.0
        for armed in self.armed:
            effect, label = armed.toxic.effect, armed.toxic.label
            if armed.start is None:
                continue
            if isinstance(effect, Latency):
                hold = effect.seconds + self.rng.uniform(-effect.jitter, effect.jitter)
                await asyncio.sleep(max(0.0, arrived + hold - loop.time()))
                self.proxy._count("fired", label)
            elif isinstance(effect, Slicer):
                segments = _slices(data, effect.sizes, self.rng)
                pause = effect.delay
                self.proxy._count("fired", label, len(segments))
            elif isinstance(effect, Bandwidth):
                rate = effect.rate * 1024
                self.proxy._count("fired", label)
        if rate and len(segments) == 1:  # pace a big chunk in 10 ms steps
            step = max(1, int(rate / 100))
            segments = [data[i:i + step] for i in range(0, len(data), step)]
        for i, segment in enumerate(segments):
            writer.write(segment)
            await writer.drain()
            self.proxy._count("bytes", self.direction, len(segment))
            wait = (len(segment) / rate if rate else 0.0) + (pause if i < len(segments) - 1 else 0.0)
            if wait or len(segments) > 1:
                await asyncio.sleep(wait)  # sleep(0) still gives the peer a chance to read

    async def _fire(self, toxic: Toxic, chunks: asyncio.Queue[tuple[bytes, float]]) -> None:
        self.proxy._count("fired", toxic.label)
        self.proxy._count("hits", f"{toxic.label} {self.link.request or '(before any request)'}")
        effect = toxic.effect
        if isinstance(effect, ResetPeer):
            for writer in self.link.ends:
                sock = writer.get_extra_info("socket")
                if sock is not None:  # linger 0: close() sends RST, not FIN
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.transport.abort()
        elif isinstance(effect, LimitData):
            for writer in self.link.ends:
                with contextlib.suppress(ConnectionError):
                    await writer.drain()
                writer.close()
        elif isinstance(effect, Stall):  # swallow what comes until the peer leaves or close_after passes
            async def swallow() -> None:
                while (await chunks.get())[0]:
                    pass

            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(swallow(), effect.close_after)


async def _feed(reader: asyncio.StreamReader, chunks: asyncio.Queue[tuple[bytes, float]]) -> None:
    loop = asyncio.get_running_loop()
    try:
        while data := await reader.read(_READ_SIZE):
            chunks.put_nowait((data, loop.time()))
    finally:  # EOF, a reset or cancellation: the pump sees the end
        chunks.put_nowait((b"", loop.time()))


def _slices(data: bytes, sizes: tuple[int, int], rng: random.Random) -> list[bytes]:
    out, pos = [], 0
    while pos < len(data):
        size = rng.randint(*sizes)
        out.append(data[pos:pos + size])
        pos += size
    return out


class ThreadedFaultProxy(ThreadedServer):
    """A :class:`FaultProxy` on its own event loop in a thread (for CliRunner callers)."""

    name = "the fault proxy"

    def __init__(self, upstream: str, toxics: Sequence[Toxic] = (), seed: int = 0) -> None:
        super().__init__()
        self.proxy = FaultProxy(upstream, toxics, seed)
        self.leaked: set[asyncio.Task[object]] = set()

    @property
    def url(self) -> str:
        return self.proxy.url

    def snapshot(self) -> ProxyStats:
        return self.proxy.snapshot()

    def running(self) -> FaultProxy:
        return self.proxy

    def stopped(self) -> None:
        self.leaked = asyncio.all_tasks() - {asyncio.current_task()}
