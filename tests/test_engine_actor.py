"""The Ray engine's per-actor callable, called directly (no Ray) against the fake Space.

``PromptBatchCallable`` is what every Ray actor runs: these tests give it batches (one,
or several at once on one event loop) and check that results come out in tables while
the batch runs (the flush rule), the in-flight bound across batches, the error, down
and stats rows, and that its records are exactly the local engine's. The last tests
drive :class:`~pipeline.engines.stream.StreamingCallable`, the synchronous generator
Ray Data is given, the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from run_options import run_options

from pipeline.app import run
from pipeline.client import Timeouts
from pipeline.engines.actor import RESULT_SCHEMA, ROW_COLUMN, ActorConfig, PromptBatchCallable
from pipeline.engines.codec import encode_row, failure_from_record, success_from_record
from pipeline.engines.stream import (
    PACKET_COLUMN,
    StreamingCallable,
    block_packets,
    pack,
    packet_blocks,
    unpack,
)
from pipeline.fake_space import FakeSpaceConfig, fake_answer, run_fake_space
from pipeline.fake_space.server import RunningFakeSpace
from pipeline.jobs import KeySet, plan_rows
from pipeline.jsonl import iter_jsonl_records
from pipeline.models import PromptRow
from pipeline.prompts import DEFAULT_SYSTEM_PROMPT
from pipeline.readers import read_records
from pipeline.records import failure_record, success_record
from pipeline.rowspec import RowSpec
from pipeline.runner import run_batch
from pipeline.settings import ClientSettings

TIMEOUTS = Timeouts(connect=5, read=5, idle=2, total=20)
VOLATILE = {"session_hash", "event_id", "started_at", "finished_at", "queue_ms", "ttft_ms",
            "duration_ms", "failed_at", "url"}


@pytest.fixture
async def space() -> AsyncIterator[RunningFakeSpace]:
    config = FakeSpaceConfig(gradio_major=4, latency=0.25, chunks=3, heartbeat_interval=0.1)
    async with run_fake_space(config) as running:
        yield running


def config_for(url: str, **changes: Any) -> ActorConfig:
    """An actor's config; ``changes`` name the fields of ActorConfig or of its settings."""
    flat: dict[str, Any] = {"urls": (url,), "concurrency": 3, "adaptive": False,
                            "timeouts": TIMEOUTS, "max_attempts": 3, "base_delay": 0.01,
                            "max_delay": 0.02, **changes}
    own = {name: flat.pop(name) for name in ("deadline_at", "flush_rows", "flush_interval",
                                              "driver_pid") if name in flat}
    settings = run_options(input="-", output="-", errors="-", **flat)
    return ActorConfig(client=settings.client, batch=settings.batch, **own)


def batch(rows: list[PromptRow]) -> pa.Table:
    return pa.table({ROW_COLUMN: pa.array([encode_row(r) for r in rows], pa.string())})


def rows_of(n: int, prefix: str = "r", **extra: str) -> list[PromptRow]:
    return [PromptRow(f"{prefix}{i}", i, f"question {prefix}{i}" + extra.get(f"{prefix}{i}", ""))
            for i in range(n)]


async def answer(udf: PromptBatchCallable, table: pa.Table) -> list[pa.Table]:
    """Every table one call yields, in order."""
    return [part async for part in udf(table)]


def joined(tables: list[pa.Table]) -> pa.Table:
    assert all(t.schema == RESULT_SCHEMA for t in tables)
    return pa.concat_tables(tables)


def kinds(table: pa.Table) -> list[str]:
    return [str(k) for k in table.column("kind").to_pylist()]


def records(table: pa.Table, kind: str) -> list[dict[str, Any]]:
    return [json.loads(r) for k, r in zip(table.column("kind").to_pylist(),
                                          table.column("record").to_pylist(), strict=True)
            if k == kind]


async def test_the_in_flight_bound_holds_across_batches_run_at_once(space: RunningFakeSpace) -> None:
    # Ray runs 4 batches of one actor at once; each is a run_batch with its own window of 3.
    # Without the actor's shared limit that would be 12 requests in flight, not 3.
    udf = PromptBatchCallable(config_for(space.url, concurrency=3))
    try:
        parts = [rows_of(6, prefix=f"b{b}-") for b in range(4)]
        streams = await asyncio.gather(*(answer(udf, batch(p)) for p in parts))
    finally:
        await udf.aclose()
    assert space.space.stats.max_running == 3  # the server saw at most 3 at once
    tables = [joined(stream) for stream in streams]
    # Each batch came out in several tables (1 row per table by default at 3 in flight).
    assert all(len(stream) >= 2 for stream in streams)
    for part, table in zip(parts, tables, strict=True):
        assert kinds(table) == ["ok"] * 6 + ["stats"]
        got = records(table, "ok")
        assert sorted(r["id"] for r in got) == sorted(r.id for r in part)
        for record in got:
            assert record["completion"] == fake_answer(record["prompt"], DEFAULT_SYSTEM_PROMPT)
    stats = records(tables[-1], "stats")[0]
    assert stats["ceiling"] == 3 and stats["cuts"] == 0 and stats["retries"] == 0


async def test_a_failing_row_is_an_error_row_and_the_batch_goes_on(space: RunningFakeSpace) -> None:
    udf = PromptBatchCallable(config_for(space.url, max_attempts=2))
    rows = rows_of(5, r2=" [fault:app_error:9]", r3=" [fault:cut:1]")
    try:
        table = joined(await answer(udf, batch(rows)))
    finally:
        await udf.aclose()
    assert sorted(kinds(table)) == ["error", "ok", "ok", "ok", "ok", "stats"]
    assert kinds(table)[-1] == "stats"
    [error] = records(table, "error")
    assert error["id"] == "r2" and error["error_type"] == "app_error" and error["attempts"] == 2
    assert error["position"] == 2 and error["retryable"] is True
    assert list(error) == list(failure_record(failure_from_record(error)))
    ok = {r["id"]: r for r in records(table, "ok")}
    assert ok["r3"]["attempts"] == 2  # the cut was retried, as locally
    assert records(table, "stats")[0]["retries"] == 2  # r2 once, r3 once
    # The job key travels beside the record, for the driver.
    keyed = {(i, s) for i, s, k in zip(table.column("id").to_pylist(),
                                        table.column("sample").to_pylist(), kinds(table),
                                        strict=True) if k in ("ok", "error")}
    assert keyed == {(f"r{i}", 0) for i in range(5)}


async def test_samples_and_partly_done_rows(space: RunningFakeSpace) -> None:
    udf = PromptBatchCallable(config_for(space.url, samples=3))
    rows = [PromptRow("a", 0, "alpha"), PromptRow("b", 1, "beta", samples=(2,))]
    try:
        table = joined(await answer(udf, batch(rows)))
    finally:
        await udf.aclose()
    keys = sorted((r["id"], r["sample"]) for r in records(table, "ok"))
    assert keys == [("a", 0), ("a", 1), ("a", 2), ("b", 2)]


async def test_endpoints_down_give_a_down_row_not_an_exception() -> None:
    config = FakeSpaceConfig(gradio_major=4, hf_state="gone")
    async with run_fake_space(config) as gone:
        udf = PromptBatchCallable(config_for(gone.url))
        try:
            first = joined(await answer(udf, batch(rows_of(3))))
            later_tables = await answer(udf, batch(rows_of(2, prefix="x")))  # stays stopped
        finally:
            await udf.aclose()
    # The requests already sent fail as rows (as on the local engine); once the pool
    # knows the endpoint is gone, the actor answers nothing more and says why.
    assert "ok" not in kinds(first)
    [later] = later_tables  # nothing to wait for: one table, down then stats
    assert kinds(later) == ["down", "stats"]
    assert "gone" in records(later, "down")[0]["reason"]


async def test_past_the_deadline_no_request_starts(space: RunningFakeSpace) -> None:
    udf = PromptBatchCallable(config_for(space.url, deadline_at=time.time() - 1))
    try:
        tables = await answer(udf, batch(rows_of(4)))
    finally:
        await udf.aclose()
    assert [kinds(t) for t in tables] == [["stats"]]
    assert space.space.stats.joins == 0


async def test_the_deadline_stops_new_requests_and_keeps_those_in_flight(
        space: RunningFakeSpace) -> None:
    udf = PromptBatchCallable(config_for(space.url, concurrency=2, deadline_at=time.time() + 0.1,
                                         grace=5))
    try:
        table = joined(await answer(udf, batch(rows_of(8))))
    finally:
        await udf.aclose()
    assert kinds(table) == ["ok", "ok", "stats"]  # the two started before the deadline


def test_the_config_repr_hides_secrets() -> None:
    config = ActorConfig(client=ClientSettings(urls=("http://127.0.0.1:1",), hf_token="hf_secret",
                                               proxy="http://u:pw@127.0.0.1:3128"))
    assert "hf_secret" not in repr(config) and "pw" not in repr(config)


async def test_records_are_exactly_the_local_engines(tmp_path: Path,
                                                     space: RunningFakeSpace) -> None:
    source = tmp_path / "in.jsonl"
    lines = [
        {"id": "a", "prompt": "plain", "title": "T", "model": "kept-model"},
        {"id": 7, "messages": [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "hi ✓"}], "title": None,
         "model": {"nested": [1, 2.5, "x"]}},
        {"id": "c", "prompt": "tab\tand ünïcode", "title": 3, "model": None},
        {"id": "d", "prompt": "fails [fault:app_error:9]", "title": "x", "model": 1},
    ]
    source.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    spec = RowSpec(keep=("title", "model"))
    out = tmp_path / "local.jsonl"
    options = run_options(input=str(source), output=str(out), errors=str(tmp_path / "local.err"),
                         spec=spec, urls=(space.url,), progress=False, max_attempts=2,
                         base_delay=0.01, max_delay=0.02, timeouts=TIMEOUTS)
    outcome = await run(options)
    assert outcome.exit_code == 3
    local_ok = {r["id"]: r for r in iter_jsonl_records(str(out))}
    local_err = {r["id"]: r for r in iter_jsonl_records(str(tmp_path / "local.err"))}

    planned = [r for r in plan_rows(read_records(str(source)), spec, done=KeySet())
               if isinstance(r, PromptRow)]
    udf = PromptBatchCallable(config_for(space.url, max_attempts=2))
    try:
        tables = await answer(udf, batch(planned))
    finally:
        await udf.aclose()
    table = joined(tables)
    actor_ok = {r["id"]: r for r in records(table, "ok")}
    actor_err = {r["id"]: r for r in records(table, "error")}
    assert set(actor_ok) == set(local_ok) == {"a", 7, "c"}  # an integer id stays one
    assert set(actor_err) == set(local_err) == {"d"}
    for mine, theirs in [*((actor_ok[k], local_ok[k]) for k in local_ok),
                         (actor_err["d"], local_err["d"])]:
        assert list(mine) == list(theirs)  # the same keys, in the same order
        for key in mine:
            if key in VOLATILE:
                assert type(mine[key]) is type(theirs[key]) or None in (mine[key], theirs[key])
            else:
                assert mine[key] == theirs[key], key
    assert actor_ok["a"]["input_model"] == "kept-model"
    assert actor_ok["c"]["prompt"] == "tab\tand ünïcode"
    # The driver rebuilds results whose records are the actor's, to the byte.
    for record in actor_ok.values():
        assert success_record(success_from_record(record)) == record
    rebuilt = failure_record(failure_from_record(actor_err["d"]))
    assert {k: v for k, v in rebuilt.items() if k != "failed_at"} == \
        {k: v for k, v in actor_err["d"].items() if k != "failed_at"}


async def wait_until_idle(space: RunningFakeSpace, timeout: float = 5.0) -> int:
    """Wait until the Space has no job running; return how many still run."""
    end = time.monotonic() + timeout
    while space.space.stats.running and time.monotonic() < end:
        await asyncio.sleep(0.05)
    return space.space.stats.running


async def test_results_come_out_while_the_batch_runs(space: RunningFakeSpace) -> None:
    # r5 stalls (one chunk, then heartbeats): its request never ends by itself. The other
    # rows' results must still come out, in tables yielded while it is in flight.
    udf = PromptBatchCallable(config_for(space.url, concurrency=3))
    stream = udf(batch(rows_of(6, r5=" [fault:stall]")))
    seen: list[pa.Table] = []
    try:
        async for table in stream:
            seen.append(table)
            assert "stats" not in kinds(table)  # the stats row ends the last table only
            if len(records(joined(seen), "ok")) == 5:
                break
        running = space.space.stats.running
    finally:
        await stream.aclose()  # the caller stops early: the stalled request is cancelled
        await udf.aclose()
    assert running == 1, "r5 was still in flight when the other five results were out"
    assert sorted(r["id"] for r in records(joined(seen), "ok")) == [f"r{i}" for i in range(5)]
    assert len(seen) >= 2  # one row per table by default at 3 in flight (1 = 3 // 2)
    assert await wait_until_idle(space) == 0


async def test_a_table_waits_for_flush_rows_results(space: RunningFakeSpace) -> None:
    udf = PromptBatchCallable(config_for(space.url, concurrency=2, flush_rows=3,
                                         flush_interval=60))
    try:
        tables = await answer(udf, batch(rows_of(8)))
    finally:
        await udf.aclose()
    # Answers come two at a time every 0.25 s: a table goes out at the 3rd or 4th waiting
    # result, never earlier (the interval is out of reach); the last one takes the rest.
    assert len(tables) >= 2
    assert all(t.num_rows >= 3 and "stats" not in kinds(t) for t in tables[:-1])
    assert kinds(tables[-1])[-1] == "stats"
    assert len(records(joined(tables), "ok")) == 8


async def test_a_table_goes_out_after_flush_interval_below_flush_rows(
        space: RunningFakeSpace) -> None:
    udf = PromptBatchCallable(config_for(space.url, concurrency=2, flush_rows=100,
                                         flush_interval=0.2))
    try:
        tables = await answer(udf, batch(rows_of(6)))
    finally:
        await udf.aclose()
    # Three waves of 0.25 s: the first answer comes after the interval, so it goes out at
    # once, well before the last wave ends.
    assert len(tables) >= 2
    assert kinds(tables[0]) and set(kinds(tables[0])) == {"ok"}
    assert kinds(joined(tables)) == ["ok"] * 6 + ["stats"]


async def test_a_bug_fails_only_the_jobs_not_answered_yet(space: RunningFakeSpace,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    real = run_batch

    async def breaks_after_two(*args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        async with contextlib.aclosing(real(*args, **kwargs)) as results:  # type: ignore[type-var]
            count = 0
            async for result in results:
                yield result
                count += 1
                if count == 2:
                    raise RuntimeError("boom")

    monkeypatch.setattr("pipeline.engines.actor.run_batch", breaks_after_two)
    udf = PromptBatchCallable(config_for(space.url, concurrency=2))
    try:
        tables = await answer(udf, batch(rows_of(6)))
    finally:
        await udf.aclose()
    table = joined(tables)
    ok = {r["id"] for r in records(table, "ok")}
    failed = records(table, "error")
    assert len(ok) == 2 and len(failed) == 4
    assert ok.isdisjoint(f["id"] for f in failed)
    assert ok | {f["id"] for f in failed} == {f"r{i}" for i in range(6)}
    assert all(f["error_type"] == "internal" and "boom" in f["error"] for f in failed)
    assert kinds(tables[-1])[-1] == "stats"
    assert await wait_until_idle(space) == 0


def test_packets_carry_blocks_in_and_tables_out() -> None:
    packets = block_packets(["a", "b", "c", "d", "e"], 2)
    assert packets.num_rows == 3
    assert [b.column(ROW_COLUMN).to_pylist() for b in packet_blocks(packets)] == \
        [["a", "b"], ["c", "d"], ["e"]]
    table = pa.Table.from_pylist([
        {"kind": "ok", "id": "x ✓", "sample": 0, "record": '{"a":1}'},
        {"kind": "stats", "id": None, "sample": None, "record": "{}"},
    ], schema=RESULT_SCHEMA)
    packet = pack(table)
    assert packet.num_rows == 1 and packet.schema.names == [PACKET_COLUMN]
    [back] = unpack(packet)
    assert back.equals(table) and back.schema == RESULT_SCHEMA


async def test_the_streaming_callable_passes_tables_on_as_they_come(
        space: RunningFakeSpace) -> None:
    # What Ray Data runs: a synchronous generator over input packets (blocks), yielding
    # one output packet per result table while the block is still being answered. It
    # runs in a thread here: the fake Space lives on this test's loop.
    udf = StreamingCallable(config_for(space.url, concurrency=3))
    stalled = block_packets([encode_row(r) for r in rows_of(6, r5=" [fault:stall]")], 16)
    blocks = block_packets([encode_row(r) for r in rows_of(10, prefix="b")], 4)

    def first_five() -> tuple[list[pa.Table], int]:
        got: list[pa.Table] = []
        stream = udf(stalled)
        try:
            for packet in stream:
                assert packet.num_rows == 1 and packet.schema.names == [PACKET_COLUMN]
                got.extend(unpack(packet))
                if len(records(joined(got), "ok")) == 5:
                    return got, space.space.stats.running
        finally:
            stream.close()  # Ray stops reading: the stalled request is cancelled
        raise AssertionError("the stream ended early")

    def everything() -> list[pa.Table]:
        return [t for packet in udf(blocks) for t in unpack(packet)]

    try:
        got, running = await asyncio.to_thread(first_five)
        assert running == 1, "r5 was still in flight when the other five results were out"
        assert await wait_until_idle(space) == 0
        tables = await asyncio.to_thread(everything)
    finally:
        await asyncio.to_thread(udf.close)
    assert len(got) >= 2
    # Three blocks (4 + 4 + 2 rows), one after another: each ends with its stats row.
    table = joined(tables)
    assert sorted(r["id"] for r in records(table, "ok")) == sorted(f"b{i}" for i in range(10))
    assert kinds(table).count("stats") == 3 and kinds(table)[-1] == "stats"
    assert space.space.stats.max_running <= 3


async def test_no_request_starts_while_the_consumer_holds_a_table(space: RunningFakeSpace) -> None:
    # Ray holds an actor's yield while the driver has not taken its tables (or is dead):
    # the actor then starts nothing new, however many of its requests end meanwhile.
    udf = StreamingCallable(config_for(space.url, concurrency=4))
    packets = block_packets([encode_row(r) for r in rows_of(16)], 16)

    def hold() -> tuple[int, int]:
        stream = udf(packets)
        try:
            next(stream)  # suspended at the yield, as Ray leaves it
            time.sleep(0.3)  # the pause is in place, and any join sent before it has landed
            joins = space.space.stats.joins
            time.sleep(1.0)  # four answers' worth
            return joins, space.space.stats.joins
        finally:
            stream.close()

    try:
        before, after = await asyncio.to_thread(hold)
    finally:
        await asyncio.to_thread(udf.close)
    assert before < 16 and after == before
    assert await wait_until_idle(space) == 0


@pytest.mark.parametrize("pidfd", [True, False], ids=["pidfd", "polling"])
async def test_an_actor_stops_the_moment_its_driver_ends(space: RunningFakeSpace,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         pidfd: bool) -> None:
    # A private Ray's actors outlive a killed driver by a second or two. With driver_pid
    # they cancel their requests and start no more as soon as the driver is gone.
    if not pidfd:
        monkeypatch.delattr(os, "pidfd_open", raising=False)
    driver = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    udf = StreamingCallable(config_for(space.url, concurrency=2, driver_pid=driver.pid))
    packets = block_packets([encode_row(r) for r in rows_of(20)], 20)

    def everything() -> list[pa.Table]:
        return [t for packet in udf(packets) for t in unpack(packet)]

    try:
        job = asyncio.ensure_future(asyncio.to_thread(everything))
        while space.space.stats.completed < 2:
            await asyncio.sleep(0.02)
        driver.kill()
        driver.wait()
        tables = await asyncio.wait_for(job, 10)
    finally:
        driver.kill()
        driver.wait()
        await asyncio.to_thread(udf.close)
    assert await wait_until_idle(space) == 0
    joins = space.space.stats.joins
    await asyncio.sleep(0.5)
    assert space.space.stats.joins == joins < 20  # the rest was never sent
    table = joined(tables)
    assert 2 <= len(records(table, "ok")) < 20 and kinds(table)[-1] == "stats"
