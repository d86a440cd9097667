"""Exact results through a fault-injecting TCP proxy (``tests/fault_proxy.py``).

First the proxy itself, against a loopback echo server: each toxic does what it says.
Then real batches (``qwen-batch run`` through Click's runner) whose ``--url`` is the
proxy in front of the fake Space, one kind of fault per run: latency, bandwidth, 1–3
byte slicing (Gradio 4 and 6), resets (4 and 6), cuts (JSONL and Parquet output) and
stalls aimed at answer streams and joins, faults on what the client sends, and on a
Gradio 6 Space's ``/config``. Every run must end with exit 0, every input id exactly
once with the fake model's exact answer, every output line whole, no error record,
and proof that the faults fired where aimed and rows were retried.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from click.testing import Result as ClickResult
from conftest import ThreadedFakeSpace
from fault_proxy import (
    UPSTREAM,
    Bandwidth,
    Effect,
    FaultProxy,
    Latency,
    LimitData,
    ProxyStats,
    ResetPeer,
    Slicer,
    Stall,
    ThreadedFaultProxy,
    Toxic,
    every,
    first,
    seeded,
)

import pipeline.client
from pipeline.fake_space import FakeSpaceConfig, FakeSpaceStats, fake_answer
from pipeline.prompts import DEFAULT_SYSTEM_PROMPT
from pipeline.sse import SSEDecoder, SSEEvent

WAIT = 5.0  # bound of every wait of the unit tests

# -- the proxy itself, against an echo server ------------------------------------------------------


@asynccontextmanager
async def echo_server() -> AsyncIterator[str]:
    """A loopback server that sends back every byte it gets and closes on EOF."""

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass  # the proxy reset us: nothing left to echo
        finally:
            writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    try:
        yield f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


@asynccontextmanager
async def proxied(*toxics: Toxic, seed: int = 0) -> AsyncIterator[FaultProxy]:
    async with echo_server() as upstream, FaultProxy(upstream, toxics, seed) as proxy:
        yield proxy


async def connect(proxy: FaultProxy) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    port = int(proxy.url.rsplit(":", 1)[1])
    return await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), WAIT)


async def read_to_eof(reader: asyncio.StreamReader) -> bytes:
    return await asyncio.wait_for(reader.read(), WAIT)


PAYLOAD = bytes(range(256)) * 8  # 2048 bytes, every byte value


async def until(cond: Callable[[], bool]) -> None:
    for _ in range(int(WAIT / 0.01)):
        if cond():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met in time")


async def round_trip(proxy: FaultProxy, payload: bytes = PAYLOAD) -> bytes:
    reader, writer = await connect(proxy)
    writer.write(payload)
    await writer.drain()
    got = await asyncio.wait_for(reader.readexactly(len(payload)), WAIT)
    writer.close()
    return got


async def test_clean_proxy_forwards_every_byte_both_ways() -> None:
    async with proxied() as proxy:
        assert await round_trip(proxy) == PAYLOAD
        assert await round_trip(proxy, b"x") == b"x"
    stats = proxy.snapshot()
    assert stats.connections == 2
    assert stats.bytes == {"upstream": len(PAYLOAD) + 1, "downstream": len(PAYLOAD) + 1}
    assert not stats.fired and not stats.applied


async def test_slicer_delivers_identical_bytes_in_one_to_three_byte_segments() -> None:
    async with proxied(Toxic(Slicer((1, 3)))) as proxy:
        reader, writer = await connect(proxy)
        writer.write(PAYLOAD)
        reads: list[bytes] = []
        while sum(map(len, reads)) < len(PAYLOAD):
            reads.append(await asyncio.wait_for(reader.read(65536), WAIT))
            assert reads[-1], "EOF before the whole payload came back"
        writer.close()
    assert b"".join(reads) == PAYLOAD
    stats = proxy.snapshot()
    assert stats.fired["slicer"] >= len(PAYLOAD) // 3  # at most 3 bytes a segment
    assert stats.applied["slicer"] == 1
    assert len(reads) > 1  # the client saw the payload in pieces, not at once


async def test_reset_peer_gives_the_client_a_connection_reset() -> None:
    async with proxied(Toxic(ResetPeer(after=100))) as proxy:
        reader, writer = await connect(proxy)
        writer.write(PAYLOAD)
        with pytest.raises(ConnectionResetError):
            while await asyncio.wait_for(reader.read(65536), WAIT):
                pass  # whatever came before the reset; a clean EOF ends the loop and fails
        writer.close()
    assert proxy.snapshot().fired["reset_peer"] == 1


async def test_limit_data_cuts_cleanly_after_exactly_n_bytes() -> None:
    async with proxied(Toxic(LimitData(after=100))) as proxy:
        reader, writer = await connect(proxy)
        writer.write(PAYLOAD)
        got = await read_to_eof(reader)  # a clean EOF, no reset
        writer.close()
    assert got == PAYLOAD[:100]
    assert proxy.snapshot().fired["limit_data"] == 1


async def test_stall_keeps_the_connection_open_and_silent() -> None:
    async with proxied(Toxic(Stall(after=100))) as proxy:
        reader, writer = await connect(proxy)
        writer.write(PAYLOAD)
        assert await asyncio.wait_for(reader.readexactly(100), WAIT) == PAYLOAD[:100]
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.read(1), 0.3)
        assert not reader.at_eof()
        writer.close()
    stats = proxy.snapshot()
    assert stats.fired["timeout"] == 1 and stats.bytes["downstream"] == 100


async def test_stall_with_close_after_ends_in_eof() -> None:
    async with proxied(Toxic(Stall(after=10, close_after=0.1))) as proxy:
        reader, writer = await connect(proxy)
        writer.write(PAYLOAD)
        assert await read_to_eof(reader) == PAYLOAD[:10]
        writer.close()


async def test_upstream_toxic_acts_on_what_the_client_sends() -> None:
    async with proxied(Toxic(LimitData(after=7), stream=UPSTREAM)) as proxy:
        reader, writer = await connect(proxy)
        writer.write(PAYLOAD)
        got = await read_to_eof(reader)
        writer.close()
    # the server saw 7 bytes, so at most 7 came back before the cut
    assert len(got) <= 7 and PAYLOAD.startswith(got)
    assert proxy.snapshot().bytes["upstream"] == 7


async def test_latency_and_bandwidth_delay_but_never_change_the_bytes() -> None:
    loop = asyncio.get_running_loop()
    async with proxied(Toxic(Latency(0.1, jitter=0.02), stream=UPSTREAM),
                       Toxic(Latency(0.1, jitter=0.02))) as proxy:
        start = loop.time()
        assert await round_trip(proxy) == PAYLOAD
        assert loop.time() - start >= 0.16  # two holds of at least 0.08 s; sleep never ends early
    assert proxy.snapshot().fired["latency"] >= 2
    payload = PAYLOAD * 5  # 10 KB at 50 KB/s
    async with proxied(Toxic(Bandwidth(50))) as proxy:
        start = loop.time()
        assert await round_trip(proxy, payload) == payload
        assert loop.time() - start >= len(payload) / (50 * 1024) * 0.9
    assert proxy.snapshot().fired["bandwidth"] >= 1


async def cut_lengths(*toxics: Toxic, n: int = 6) -> list[int]:
    """Bytes echoed on each of ``n`` connections opened one after another (10 sent each)."""
    lengths = []
    async with proxied(*toxics) as proxy:
        for _ in range(n):
            reader, writer = await connect(proxy)
            writer.write(b"0123456789")
            writer.write_eof()
            lengths.append(len(await read_to_eof(reader)))
            writer.close()
    return lengths


async def test_selectors_pick_connections_deterministically() -> None:
    cut = LimitData(after=4)
    assert await cut_lengths(Toxic(cut, select=first(2))) == [4, 4, 10, 10, 10, 10]
    assert await cut_lengths(Toxic(cut, select=every(3))) == [10, 10, 4, 10, 10, 4]
    assert await cut_lengths(Toxic(cut, select=every(2), limit=2)) == [10, 4, 10, 4, 10, 10]
    picks = [seeded(0.3)(i, 7) for i in range(1, 201)]
    assert picks == [seeded(0.3)(i, 7) for i in range(1, 201)]  # same seed, same picks
    assert picks != [seeded(0.3)(i, 8) for i in range(1, 201)]
    assert 30 <= sum(picks) <= 90


async def test_thresholds_drawn_from_a_range_repeat_with_the_seed() -> None:
    async def cuts(seed: int) -> list[int]:
        lengths = []
        async with proxied(Toxic(LimitData(after=(1, 2000))), seed=seed) as proxy:
            for _ in range(4):
                reader, writer = await connect(proxy)
                writer.write(PAYLOAD)
                lengths.append(len(await read_to_eof(reader)))
                writer.close()
        return lengths

    once = await cuts(3)
    assert once == await cuts(3) and once != await cuts(4)
    assert all(1 <= n <= 2000 for n in once)


async def test_closing_drops_open_connections() -> None:
    async with echo_server() as upstream:
        proxy = FaultProxy(upstream, [Toxic(Stall(after=0))])
        await proxy.start()
        reader, writer = await connect(proxy)
        writer.write(b"ping")
        await writer.drain()
        idle = await connect(proxy)
        await until(lambda: proxy.snapshot().bytes["upstream"] == 4
                    and proxy.snapshot().connections == 2)
        await proxy.close()
        assert await read_to_eof(reader) == b""  # dropped, not left hanging
        assert await read_to_eof(idle[0]) == b""
        writer.close()
        idle[1].close()
    assert proxy.snapshot().fired["timeout"] == 1


def test_threaded_proxy_stops_with_a_connection_open_and_leaks_no_task() -> None:
    with ThreadedFakeSpace(FakeSpaceConfig()) as space:
        with ThreadedFaultProxy(space.url) as proxy:
            held = socket.create_connection(("127.0.0.1", int(proxy.url.rsplit(":", 1)[1])), WAIT)
            held.sendall(b"GET /config HTTP/1.1\r\nHost: x\r\n\r\n")  # keep-alive: stays open
            held.settimeout(WAIT)
            assert held.recv(12) == b"HTTP/1.1 200"
        with held:
            assert proxy.leaked == set()
            while held.recv(65536):  # the rest of the answer, then EOF: dropped at exit
                pass


# -- real batches through the proxy ----------------------------------------------------------------

N_ROWS = 12
# Small bounds so a reset, cut or stall costs a fraction of a second before it is retried.
FAST = ["--no-progress", "--concurrency", "4", "--max-attempts", "8", "--retry-delay", "0.01",
        "--retry-max-delay", "0.05", "--connect-timeout", "2", "--request-timeout", "1",
        "--read-timeout", "1", "--idle-timeout", "2", "--timeout", "10",
        # a run that cannot work (a broken proxy or client) ends in seconds, not 600 s
        "--max-outage", "20", "--connect-grace", "20"]
# Faults aimed at the answer streams (headers or body: 1 to 2500 bytes in) and at the joins.
# Fewer faults in all than attempts per row: no row can run out of attempts, so a pass is
# exact, not lucky.
AFTER = (1, 2500)
# Shaping alone must cause no retry; roomy bounds keep a loaded machine from causing one.
ROOMY = ("--request-timeout", "10", "--read-timeout", "10")


def aimed(fault: type[ResetPeer | LimitData | Stall], on_data: int = 5,
          on_join: int = 2) -> list[Toxic]:
    """``fault`` on the first ``on_data`` answer streams and the first ``on_join`` joins."""
    return [Toxic(fault(after=AFTER), trigger="/queue/data", limit=on_data),
            Toxic(fault(after=(1, 200)), trigger="/queue/join", limit=on_join,
                  name=f"{fault.kind} join")]


def write_prompts(path: Path, n: int = N_ROWS) -> list[str]:
    rows = [{"id": f"r{i}", "prompt": f"question {i}: no no no, café 日本語 {'x' * (i * 37)}"}
            for i in range(n)]
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                    encoding="utf-8")
    return [r["id"] for r in rows]


def read_jsonl_strict(path: Path) -> list[dict[str, Any]]:
    """Every line of ``path``, each a whole JSON object ending in a newline."""
    text = path.read_text(encoding="utf-8")
    assert text.endswith("\n"), "the last line is half-written"
    records = []
    for number, line in enumerate(text.split("\n")[:-1], 1):
        record = json.loads(line)  # a half-written or spliced line fails here
        assert isinstance(record, dict), f"line {number} is not an object"
        records.append(record)
    return records


def assert_exact(records: list[dict[str, Any]], ids: list[str]) -> None:
    """Every id exactly once, each with the fake model's exact answer to its prompt."""
    counts = Counter(r["id"] for r in records)
    assert not {k: v for k, v in counts.items() if v > 1}, f"duplicates: {counts.most_common(3)}"
    assert sorted(counts) == sorted(ids), f"missing {sorted(set(ids) - set(counts))}"
    for r in records:
        assert r["completion"] == fake_answer(r["prompt"], DEFAULT_SYSTEM_PROMPT), r["id"]


def invoke(*args: str) -> ClickResult:
    from pipeline.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


@dataclass
class Run:
    records: list[dict[str, Any]]
    proxy: ProxyStats
    space: FakeSpaceStats

    @property
    def retried(self) -> int:
        """Rows that needed more than one attempt."""
        return sum(r["attempts"] > 1 for r in self.records)


def run_through(tmp_path: Path, toxics: list[Toxic], *, major: int = 4,
                output: str = "out.jsonl", options: tuple[str, ...] = ()) -> Run:
    """A batch of N_ROWS through a proxy with ``toxics`` in front of a fake Space, checked exact."""
    source = tmp_path / "in.jsonl"
    ids = write_prompts(source)
    out, errors = tmp_path / output, tmp_path / "errors.jsonl"
    config = FakeSpaceConfig(gradio_major=major, latency=0.1, chunks=4)
    with ThreadedFakeSpace(config) as space, ThreadedFaultProxy(space.url, toxics) as proxy:
        started = time.monotonic()
        result = invoke("run", str(source), "-o", str(out), "--errors", str(errors),
                        "--url", proxy.url, *FAST, *options)
        elapsed = time.monotonic() - started
        assert space.space is not None
        space_stats = space.space.stats
    stats = proxy.snapshot()
    assert proxy.leaked == set()
    print(f"\n{'+'.join(t.label for t in toxics)} G{major}: exit {result.exit_code} in "
          f"{elapsed:.1f} s; {stats.connections} connections, applied {dict(stats.applied)}, "
          f"fired {dict(stats.fired)}, on {dict(stats.hits)}; Space: {space_stats.joins} joins, "
          f"{space_stats.abandoned} abandoned")
    assert result.exit_code == 0, result.stderr
    assert stats.applied and stats.fired, "no toxic acted: the run proves nothing"
    assert not errors.exists() or errors.read_text(encoding="utf-8") == "", errors.read_text()
    records = (pq.read_table(out).to_pylist() if output.endswith(".parquet")
               else read_jsonl_strict(out))
    assert_exact(records, ids)
    run = Run(records, stats, space_stats)
    print(f"  attempts per row: {dict(Counter(r['attempts'] for r in records))}")
    return run


def test_latency_both_ways(tmp_path: Path) -> None:
    run = run_through(tmp_path, [Toxic(Latency(0.03, jitter=0.01)),
                                 Toxic(Latency(0.03, jitter=0.01), stream=UPSTREAM)], options=ROOMY)
    assert run.proxy.applied["latency"] == 2 * run.proxy.connections
    assert run.proxy.fired["latency"] >= 2 * N_ROWS  # at least each join and its answer
    assert run.retried == 0  # shaping alone is no reason to retry


def test_bandwidth_limit(tmp_path: Path) -> None:
    run = run_through(tmp_path, [Toxic(Bandwidth(32))], options=ROOMY)
    assert run.proxy.applied["bandwidth"] == run.proxy.connections
    assert run.proxy.fired["bandwidth"] >= N_ROWS
    assert run.retried == 0


@pytest.mark.parametrize("major", [4, 6])
def test_one_to_three_byte_slices_both_ways(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, major: int
) -> None:
    feeds: list[int] = []

    class Recording(SSEDecoder):
        """The client's own decoder, noting the size of every piece of stream it is fed."""

        def feed(self, chunk: bytes) -> list[SSEEvent]:
            feeds.append(len(chunk))
            return super().feed(chunk)

    monkeypatch.setattr(pipeline.client, "SSEDecoder", Recording)
    run = run_through(tmp_path, [Toxic(Slicer()), Toxic(Slicer(), stream=UPSTREAM)], major=major,
                      options=ROOMY)
    tiny = sum(n <= 3 for n in feeds)
    print(f"  decoder fed {len(feeds)} pieces, {tiny} of 1-3 bytes")
    assert run.proxy.fired["slicer"] >= run.proxy.bytes["downstream"] // 3
    # the slices reached the client's stream parsing: not merged back into whole events
    assert tiny >= 100, Counter(feeds).most_common(5)
    assert run.retried == 0


def assert_faults_hit(run: Run, kind: str, on_data: int = 3) -> None:
    """The faults fired on answer streams and on joins, and rows were retried for them."""
    on_streams = sum(n for where, n in run.proxy.hits.items()
                     if where.startswith(f"{kind} GET ") and where.endswith("/queue/data"))
    assert on_streams >= on_data, run.proxy.hits
    assert run.proxy.fired[f"{kind} join"] >= 1, run.proxy.hits
    assert run.retried >= 1


@pytest.mark.parametrize("major", [4, 6])
def test_connection_resets(tmp_path: Path, major: int) -> None:
    run = run_through(tmp_path, aimed(ResetPeer), major=major)
    assert_faults_hit(run, "reset_peer")
    assert run.space.abandoned >= 1  # a reset hit a job in flight


def test_cut_streams(tmp_path: Path) -> None:
    run = run_through(tmp_path, aimed(LimitData))
    assert_faults_hit(run, "limit_data")
    assert run.space.abandoned >= 1


def test_cut_streams_into_parquet(tmp_path: Path) -> None:
    run = run_through(tmp_path, aimed(LimitData), output="out.parquet")
    assert_faults_hit(run, "limit_data")
    assert not (tmp_path / "out.parquet.journal.jsonl").exists()


def test_stalls_are_cut_by_the_read_timeouts_and_retried(tmp_path: Path) -> None:
    run = run_through(tmp_path, aimed(Stall, on_data=3, on_join=1))
    assert_faults_hit(run, "timeout", on_data=2)


def test_faults_on_what_the_client_sends(tmp_path: Path) -> None:
    # Joins cut off mid-request by a reset, or swallowed part-way: the Space never gets the
    # whole request (or the client never hears back), and the row is joined again.
    run = run_through(tmp_path, [
        Toxic(ResetPeer(after=(1, 300)), stream=UPSTREAM, trigger="/queue/join",
              select=every(2), limit=3),
        Toxic(Stall(after=(1, 300)), stream=UPSTREAM, trigger="/queue/join",
              select=every(2, offset=1), limit=2),
    ], major=6)
    assert run.proxy.hits["reset_peer POST /gradio_api/queue/join"] >= 2, run.proxy.hits
    assert run.proxy.hits["timeout POST /gradio_api/queue/join"] >= 1, run.proxy.hits
    assert run.retried >= 3


@pytest.mark.parametrize("effect", [Stall(after=(1, 3000)), ResetPeer(after=(1, 3000))],
                         ids=["stall", "reset"])
def test_faults_on_the_config_of_a_gradio_6_space(tmp_path: Path, effect: Effect) -> None:
    # A /config answer swallowed or reset: the client falls back to the default (root)
    # layout, whose joins a Gradio 6 Space answers 404; it must read /config again.
    # One fault per run: which pooled connection carries a later /config is up to aiohttp.
    run = run_through(tmp_path, [Toxic(effect, trigger="/config", limit=1)], major=6)
    assert run.proxy.hits[f"{effect.kind} GET /config"] == 1, run.proxy.hits
    assert run.retried >= 1
