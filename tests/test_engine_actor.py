"""The Ray engine's per-actor callable, called directly (no Ray) against the fake Space.

``PromptBatchCallable`` is what every Ray actor runs: these tests give it batches the way
Ray Data does (several at once on one event loop) and check the in-flight bound across
them, the error rows, and that its records are exactly the local engine's.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from pipeline.app import RunOptions, run
from pipeline.client import Timeouts
from pipeline.engines.actor import RESULT_SCHEMA, ROW_COLUMN, ActorConfig, PromptBatchCallable
from pipeline.engines.codec import encode_row, failure_from_record, success_from_record
from pipeline.fake_space import FakeSpaceConfig, fake_answer, run_fake_space
from pipeline.fake_space.server import RunningFakeSpace
from pipeline.jobs import KeySet, plan_rows
from pipeline.models import PromptRow
from pipeline.prompts import DEFAULT_SYSTEM_PROMPT
from pipeline.readers import RowSpec, read_records
from pipeline.records import failure_record, success_record
from pipeline.writers import iter_jsonl_records

TIMEOUTS = Timeouts(connect=5, read=5, idle=2, total=20)
VOLATILE = {"session_hash", "event_id", "started_at", "finished_at", "queue_ms", "ttft_ms",
            "duration_ms", "failed_at", "url"}


@pytest.fixture
async def space() -> AsyncIterator[RunningFakeSpace]:
    config = FakeSpaceConfig(gradio_major=4, latency=0.25, chunks=3, heartbeat_interval=0.1)
    async with run_fake_space(config) as running:
        yield running


def config_for(url: str, **changes: Any) -> ActorConfig:
    base: dict[str, Any] = {"urls": (url,), "concurrency": 3, "adaptive": False,
                            "timeouts": TIMEOUTS, "max_attempts": 3, "retry_base_delay": 0.01,
                            "retry_max_delay": 0.02}
    return ActorConfig(**{**base, **changes})


def batch(rows: list[PromptRow]) -> pa.Table:
    return pa.table({ROW_COLUMN: pa.array([encode_row(r) for r in rows], pa.string())})


def rows_of(n: int, prefix: str = "r", **extra: str) -> list[PromptRow]:
    return [PromptRow(f"{prefix}{i}", i, f"question {prefix}{i}" + extra.get(f"{prefix}{i}", ""))
            for i in range(n)]


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
        started = time.monotonic()
        tables = await asyncio.gather(*(udf(batch(p)) for p in parts))
        elapsed = time.monotonic() - started
    finally:
        await udf.aclose()
    assert space.space.stats.max_running == 3
    assert elapsed >= 24 / 3 * 0.25 * 0.9  # 24 answers, 3 at a time
    for part, table in zip(parts, tables, strict=True):
        assert table.schema == RESULT_SCHEMA
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
        table = await udf(batch(rows))
    finally:
        await udf.aclose()
    assert sorted(kinds(table)) == ["error", "ok", "ok", "ok", "ok", "stats"]
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
        table = await udf(batch(rows))
    finally:
        await udf.aclose()
    keys = sorted((r["id"], r["sample"]) for r in records(table, "ok"))
    assert keys == [("a", 0), ("a", 1), ("a", 2), ("b", 2)]


async def test_endpoints_down_give_a_down_row_not_an_exception() -> None:
    config = FakeSpaceConfig(gradio_major=4, hf_state="gone")
    async with run_fake_space(config) as gone:
        udf = PromptBatchCallable(config_for(gone.url))
        try:
            first = await udf(batch(rows_of(3)))
            later = await udf(batch(rows_of(2, prefix="x")))  # the actor stays stopped
        finally:
            await udf.aclose()
    # The requests already sent fail as rows (as on the local engine); once the pool
    # knows the endpoint is gone, the actor answers nothing more and says why.
    assert "ok" not in kinds(first)
    assert kinds(later) == ["down", "stats"]
    assert "gone" in records(later, "down")[0]["reason"]


async def test_past_the_deadline_no_request_starts(space: RunningFakeSpace) -> None:
    udf = PromptBatchCallable(config_for(space.url, deadline_at=time.time() - 1))
    try:
        table = await udf(batch(rows_of(4)))
    finally:
        await udf.aclose()
    assert kinds(table) == ["stats"]
    assert space.space.stats.joins == 0


async def test_the_deadline_stops_new_requests_and_keeps_those_in_flight(
        space: RunningFakeSpace) -> None:
    udf = PromptBatchCallable(config_for(space.url, concurrency=2, deadline_at=time.time() + 0.1,
                                         grace=5))
    try:
        table = await udf(batch(rows_of(8)))
    finally:
        await udf.aclose()
    assert kinds(table) == ["ok", "ok", "stats"]  # the two started before the deadline


def test_the_config_repr_hides_secrets() -> None:
    config = ActorConfig(urls=("http://127.0.0.1:1",), hf_token="hf_secret",
                         proxy="http://u:pw@127.0.0.1:3128")
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
    options = RunOptions(input=str(source), output=str(out), errors=str(tmp_path / "local.err"),
                         spec=spec, urls=(space.url,), progress=False, max_attempts=2,
                         retry_base_delay=0.01, retry_max_delay=0.02, timeouts=TIMEOUTS)
    outcome = await run(options)
    assert outcome.exit_code == 3
    local_ok = {r["id"]: r for r in iter_jsonl_records(str(out))}
    local_err = {r["id"]: r for r in iter_jsonl_records(str(tmp_path / "local.err"))}

    planned = [r for r in plan_rows(read_records(str(source)), spec, done=KeySet())
               if isinstance(r, PromptRow)]
    udf = PromptBatchCallable(config_for(space.url, max_attempts=2))
    try:
        table = await udf(batch(planned))
    finally:
        await udf.aclose()
    actor_ok = {r["id"]: r for r in records(table, "ok")}
    actor_err = {r["id"]: r for r in records(table, "error")}
    assert set(actor_ok) == set(local_ok) == {"a", "7", "c"}
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
