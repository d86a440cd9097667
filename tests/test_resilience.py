"""Resilience end to end, on loopback fake Spaces whose behaviour changes mid-run.

* adaptive concurrency converges when the Space's capacity drops and rises;
* the circuit breaker stops a run whose only Space went away within ``--max-outage``,
  and a rerun finishes the rows it left;
* traffic shifts away from a failing endpoint (and back when it recovers), no row lost;
* a deadline run stops on time and the next run finishes the rest.

Run with ``-s`` to see the concurrency traces. Timings are asserted as ranges: the
machine may be a loaded 2-core CI runner.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from click.testing import Result as ClickResult
from conftest import ThreadedFakeSpace

from pipeline.client import GradioQueueClient, Timeouts
from pipeline.fake_space import FakeSpaceConfig, fake_answer, run_fake_space
from pipeline.models import PromptRow, Success
from pipeline.prompts import DEFAULT_SYSTEM_PROMPT
from pipeline.retry import RetryPolicy
from pipeline.runner import BatchSettings, BatchState, run_batch

TIMEOUTS = Timeouts(connect=5, read=10, idle=5, total=60)
CLI_FAST = ["--no-progress", "--retry-delay", "0.05", "--retry-max-delay", "0.3"]


# -- helpers -----------------------------------------------------------------------------------


def rows_of(n: int, prefix: str) -> list[PromptRow]:
    return [PromptRow(id=f"{prefix}{i}", position=i, prompt=f"{prefix} question {i}")
            for i in range(n)]


def write_prompts(path: Path, n: int, prefix: str) -> Path:
    lines = (json.dumps({"id": f"{prefix}{i}", "prompt": f"{prefix} q {i} café"}) + "\n"
             for i in range(n))
    path.write_text("".join(lines), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


def assert_exact_once(records: list[dict[str, Any]], ids: list[str]) -> dict[str, dict[str, Any]]:
    """Every id of ``ids`` exactly once, each with the fake model's exact answer."""
    counts = Counter(r["id"] for r in records)
    dupes = {k: v for k, v in counts.items() if v > 1}
    assert not dupes, f"ids written more than once: {dupes}"
    assert set(counts) == set(ids), f"missing {sorted(set(ids) - set(counts))[:10]}"
    for r in records:
        assert r["completion"] == fake_answer(r["prompt"], DEFAULT_SYSTEM_PROMPT), r["id"]
    return {r["id"]: r for r in records}


def wall(iso: str) -> float:
    """Epoch seconds of a record's ISO ``...Z`` timestamp."""
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def invoke(*args: str) -> ClickResult:
    from pipeline.cli import main

    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def control(url: str, **changes: Any) -> None:
    """Change a running fake Space's config through its HTTP control route (no proxy)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    request = urllib.request.Request(url + "/_fake/control", data=json.dumps(changes).encode(),
                                     headers={"Content-Type": "application/json"})
    with opener.open(request, timeout=5) as resp:
        assert resp.status == 200


class Watcher:
    """Runs ``script`` in a thread beside a blocking CLI run; re-raises its errors on exit."""

    def __init__(self, script: Callable[[threading.Event], None]) -> None:
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._script = script
        self._thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            self._script(self.done)
        except BaseException as exc:  # reported by __exit__
            self.error = exc

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.done.set()
        self._thread.join(10)
        if self.error is not None and exc[0] is None:
            raise self.error


def wait_for(cond: Callable[[], bool], done: threading.Event, timeout: float = 30.0) -> bool:
    """Poll ``cond`` from a watcher thread; False if the run ended (or time ran out) first."""
    end = time.monotonic() + timeout
    while not cond():
        if done.is_set() or time.monotonic() > end:
            return False
        time.sleep(0.01)
    return True


def show_trace(title: str, history: list[tuple[float, int]], marks: dict[str, float]) -> None:
    print(f"\n{title}: concurrency level trace (t s -> level)")
    events = sorted([(t, f"level {lvl}") for t, lvl in history]
                    + [(t, f"** {name}") for name, t in marks.items()])
    print("  " + ", ".join(f"{t:.2f}:{what}" for t, what in events))


# -- 1. adaptive concurrency -------------------------------------------------------------------


async def test_adaptive_concurrency_follows_the_space_capacity_down_and_up() -> None:
    # The Space runs 3 jobs and lets 1 wait; more joins get 503 "queue full". Midway its
    # capacity rises to 10 running. The run starts at its ceiling of 12.
    config = FakeSpaceConfig(latency=0.2, chunks=4, concurrency_limit=3, max_size=1,
                             track_prompts=False)
    policy = RetryPolicy(max_attempts=60, base_delay=0.05, max_delay=0.3)
    settings = BatchSettings(concurrency=12, policy=policy, max_consecutive_failures=1000)
    rows = rows_of(170, "a")
    state = BatchState()
    results: list[Success] = []
    marks: dict[str, float] = {}
    mark = -1
    async with run_fake_space(config) as running, \
            GradioQueueClient(running.url, timeouts=TIMEOUTS) as client:
        stats = running.space.stats
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        max_running_low = 0
        async for result in run_batch(rows, client, settings, state=state):
            assert isinstance(result, Success), result
            results.append(result)
            if mark < 0 and len(results) >= 45:
                max_running_low = stats.max_running
                running.space.update_config(concurrency_limit=10)
                assert state.limit is not None
                mark = len(state.limit.history)
                level_at_change = state.limit.level
                marks["capacity 3->10"] = loop.time() - t0
        elapsed = loop.time() - t0
    limit = state.limit
    assert limit is not None
    show_trace("adaptive", limit.history, marks)
    print(f"  ceiling {limit.ceiling}, lowest {limit.lowest}, cuts {limit.cuts}, final "
          f"{limit.level}; server: max running {stats.max_running}, 503s {stats.rejected}, "
          f"{elapsed:.1f} s")

    # every row exactly once, exact text; nothing failed or left behind
    assert Counter(r.row.id for r in results) == Counter(r.id for r in rows)
    assert all(r.text == fake_answer(r.row.prompt, DEFAULT_SYSTEM_PROMPT) for r in results)
    assert state.failed == 0 and state.unfinished == 0

    before = [lvl for _, lvl in limit.history[:mark]]
    after = [lvl for _, lvl in limit.history[mark:]]
    # low capacity (3 running + 1 waiting): the level was cut well below the ceiling of 12
    assert before and min(before) <= 5, before
    assert limit.cuts >= 1 and limit.lowest <= 5
    assert max_running_low <= 3
    # high capacity: it grew past what fitted before the change, and the server saw it
    assert after, "the level never changed after the capacity rose"
    assert max(after) >= max(8, level_at_change + 2), (level_at_change, after)
    assert stats.max_running >= 6
    assert max(after) <= limit.ceiling


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed", "adaptive"])
def test_fixed_concurrency_never_changes_level(tmp_path: Path, fixed: bool) -> None:
    source = write_prompts(tmp_path / "in.jsonl", 30, "f")
    out, summary = tmp_path / "out.jsonl", tmp_path / "summary.json"
    with ThreadedFakeSpace(FakeSpaceConfig(latency=0.1, chunks=2, concurrency_limit=2,
                                           max_size=1)) as space:
        result = invoke("run", str(source), "-o", str(out), "--url", space.url, *CLI_FAST,
                        "--concurrency", "6", "--max-attempts", "60", "--retry-delay", "0.02",
                        "--max-consecutive-failures", "1000", "--summary", str(summary),
                        *(["--fixed-concurrency"] if fixed else []))
        assert space.space is not None
        rejected = space.space.stats.rejected
    assert result.exit_code == 0, result.stderr
    assert_exact_once(read_jsonl(out), [f"f{i}" for i in range(30)])
    conc = json.loads(summary.read_text())["concurrency"]
    print(f"\n{'fixed' if fixed else 'adaptive'}: {conc}, server 503s {rejected}")
    assert rejected > 0  # the Space pushed back in both runs
    assert conc["ceiling"] == 6 and conc["adaptive"] is not fixed
    if fixed:
        assert conc["trace"] == [] and conc["cuts"] == 0
        assert conc["final"] == conc["lowest"] == 6
    else:  # the same pushback moves an adaptive run
        assert conc["cuts"] >= 1 and conc["lowest"] < 6 and conc["trace"]


# -- 2. the circuit breaker: the only Space goes away ------------------------------------------


def test_a_space_that_goes_away_stops_the_run_within_max_outage_and_a_rerun_finishes(
    tmp_path: Path,
) -> None:
    n, max_outage = 60, 2.0
    ids = [f"c{i}" for i in range(n)]
    source = write_prompts(tmp_path / "in.jsonl", n, "c")
    out, errors = tmp_path / "out.jsonl", tmp_path / "out.errors.jsonl"
    summary = tmp_path / "s1.json"
    went_down: list[float] = []
    with ThreadedFakeSpace(FakeSpaceConfig(latency=0.15, chunks=3)) as space:
        assert space.space is not None
        stats = space.space.stats

        def script(done: threading.Event) -> None:
            if wait_for(lambda: stats.completed >= 12, done):
                control(space.url, down=True)
                went_down.append(time.monotonic())

        with Watcher(script):
            result = invoke("run", str(source), "-o", str(out), "--errors", str(errors),
                            "--url", space.url, *CLI_FAST, "--concurrency", "4",
                            "--max-attempts", "10", "--max-outage", str(max_outage),
                            "--summary", str(summary))
            ended = time.monotonic()
        assert went_down, "the Space never went down: the run was too quick"
        stopped_after = ended - went_down[0]
        report = json.loads(summary.read_text())
        print(f"\nbreaker: exit {result.exit_code} {stopped_after:.2f} s after the Space went "
              f"down (max outage {max_outage} s); done {report['succeeded']}, failed "
              f"{report['failed']}; endpoints {report['endpoints']}")
        assert result.exit_code == 4, result.stderr
        # it waited for the Space (bounded by max_outage), then gave up promptly
        assert max_outage - 0.3 <= stopped_after <= max_outage + 3.0
        assert report["endpoint_down"] and "no endpoint has worked" in report["endpoint_down"]
        assert report["endpoints"][0]["state"] in ("open", "half_open")
        # attempts made while the circuit was open are few: it does not hammer a dead Space
        assert report["endpoints"][0]["failed"] <= 20
        first = read_jsonl(out)
        assert 12 <= len(first) < n
        assert_exact_once(first, [r["id"] for r in first])  # what was done is intact
        failed_ids = {r["id"] for r in read_jsonl(errors)}
        assert not failed_ids & {r["id"] for r in first}

        # The Space comes back: the same command finishes the rest, every id once.
        control(space.url, down=False)
        joins_before = stats.joins
        result = invoke("run", str(source), "-o", str(out), "--errors", str(errors),
                        "--url", space.url, *CLI_FAST, "--concurrency", "4",
                        "--max-outage", str(max_outage))
        assert result.exit_code == 0, result.stderr
        assert stats.joins - joins_before == n - len(first)  # done rows were not re-asked
    assert_exact_once(read_jsonl(out), ids)
    assert read_jsonl(errors) == []  # no row stays marked as failed


# -- 3. several endpoints: traffic shifts away from a failing one ------------------------------


def test_traffic_shifts_off_a_failing_endpoint_and_back_when_it_recovers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    n = 140
    ids = [f"s{i}" for i in range(n)]
    source = write_prompts(tmp_path / "in.jsonl", n, "s")
    out, summary = tmp_path / "out.jsonl", tmp_path / "s.json"
    config = dict(latency=0.3, chunks=3)
    timeline: dict[str, float] = {}
    caplog.set_level(logging.WARNING, logger="pipeline.endpoints")
    with ThreadedFakeSpace(FakeSpaceConfig(**config)) as a, \
            ThreadedFakeSpace(FakeSpaceConfig(**config)) as b:
        assert a.space is not None and b.space is not None
        sa, sb = a.space.stats, b.space.stats
        served_b_before = 0

        def script(done: threading.Event) -> None:
            nonlocal served_b_before
            if not wait_for(lambda: sa.completed + sb.completed >= 20 and sb.completed >= 5, done):
                return
            control(b.url, down=True)
            timeline["down"] = time.monotonic()
            time.sleep(0.05)  # streams already open on b finish; count after them
            if not wait_for(lambda: sb.running == 0, done):
                return
            served_b_before = sb.completed
            time.sleep(1.0)  # b is out for a while; the first probe comes ~2 s after it opened
            timeline["up_wall"] = time.time()  # before: nothing of b's can succeed earlier
            control(b.url, down=False)
            timeline["up"] = time.monotonic()

        t0 = time.monotonic()
        with Watcher(script):
            result = invoke("run", str(source), "-o", str(out), "--url", a.url, "--url", b.url,
                            *CLI_FAST, "--concurrency", "6", "--summary", str(summary))
        elapsed = time.monotonic() - t0
        completed_a, completed_b = sa.completed, sb.completed
    assert "down" in timeline and "up" in timeline, f"run too short: {timeline}"
    report = json.loads(summary.read_text())
    endpoints = {ep["url"]: ep for ep in report["endpoints"]}
    print(f"\nshift: {elapsed:.1f} s; b down at +{timeline['down'] - t0:.2f}, up at "
          f"+{timeline['up'] - t0:.2f}; b served {served_b_before} before, {completed_b} in all; "
          f"endpoints {report['endpoints']}")
    assert result.exit_code == 0, result.stderr

    records = assert_exact_once(read_jsonl(out), ids)  # no row lost, none twice
    by_url = Counter(r["url"] for r in records.values())
    assert set(by_url) == {a.url, b.url}
    # each record names the endpoint that served it: the counts match each Space's own
    # (b may have finished a job or two more: joined just before it went down, their
    # answer streams got 502 and were retried elsewhere)
    assert by_url[a.url] == completed_a == endpoints[a.url]["served"]
    assert by_url[b.url] == endpoints[b.url]["served"]
    assert 0 <= completed_b - by_url[b.url] <= 6

    # b's circuit opened after a few failures instead of failing row after row...
    messages = [r.getMessage() for r in caplog.records]
    assert any(f"endpoint {b.url} benched" in m for m in messages), messages
    assert 5 <= endpoints[b.url]["failed"] <= 20
    assert endpoints[a.url]["failed"] == 0
    # ...a carried the load while b was out...
    assert completed_a > n / 2
    # ...and b, probed after it came back, was used again
    assert any(f"endpoint {b.url} is back" in m for m in messages), messages
    # (never on the late answers of streams open when it went down: only a probe sent
    # after it came up can say so)
    back = [r.created for r in caplog.records if f"endpoint {b.url} is back" in r.getMessage()]
    assert min(back) > timeline["up_wall"], (back, timeline)
    assert completed_b >= served_b_before + 5
    after_up = [r for r in records.values() if r["url"] == b.url
                and wall(r["started_at"]) > timeline["up_wall"]]
    assert len(after_up) >= 5
    assert endpoints[b.url]["state"] == "closed"


async def test_a_stopped_endpoint_stays_benched_and_the_other_serves_every_row() -> None:
    # b's server goes away for good (connection refused): its circuit stays open, a does
    # the rest; the pool's report says so; every Success names its endpoint.
    rows = rows_of(60, "g")
    policy = RetryPolicy(max_attempts=6, base_delay=0.02, max_delay=0.1)
    settings = BatchSettings(concurrency=4, policy=policy, probe_cooldown=0.3)
    state = BatchState()
    results: list[Success] = []
    async with run_fake_space(FakeSpaceConfig(latency=0.1, chunks=2)) as a, \
            GradioQueueClient(a.url, timeouts=TIMEOUTS) as ca:
        b_cm = run_fake_space(FakeSpaceConfig(latency=0.1, chunks=2))
        b = await b_cm.__aenter__()
        b_open = True
        try:
            async with GradioQueueClient(b.url, timeouts=TIMEOUTS) as cb:
                async for result in run_batch(rows, [ca, cb], settings, state=state):
                    assert isinstance(result, Success), result
                    results.append(result)
                    if b_open and b.space.stats.completed >= 5:
                        b_open = False
                        await b_cm.__aexit__(None, None, None)
        finally:
            if b_open:
                await b_cm.__aexit__(None, None, None)
    assert state.pool is not None
    report = {ep["url"]: ep for ep in state.pool.report()}
    print(f"\nstopped endpoint: {state.pool.report()}")
    assert Counter(r.row.id for r in results) == Counter(r.id for r in rows)
    assert all(r.text == fake_answer(r.row.prompt, DEFAULT_SYSTEM_PROMPT) for r in results)
    by_url = Counter(r.trace.url for r in results)
    assert by_url[a.url] == report[a.url]["served"] and by_url[b.url] == report[b.url]["served"]
    assert report[b.url]["state"] in ("open", "half_open")
    assert report[b.url]["failed"] >= 5
    assert report[a.url]["state"] == "closed" and report[a.url]["served"] >= 45


# -- 4. deadline ---------------------------------------------------------------------------------


def test_a_deadline_run_stops_on_time_and_the_next_run_finishes(tmp_path: Path) -> None:
    n, deadline, grace = 80, 1.0, 2.0
    ids = [f"d{i}" for i in range(n)]
    source = write_prompts(tmp_path / "in.jsonl", n, "d")
    out, summary = tmp_path / "out.jsonl", tmp_path / "s.json"
    with ThreadedFakeSpace(FakeSpaceConfig(latency=0.3, chunks=3)) as space:
        assert space.space is not None
        stats = space.space.stats
        t0 = time.monotonic()
        result = invoke("run", str(source), "-o", str(out), "--url", space.url, *CLI_FAST,
                        "--concurrency", "4", "--deadline", f"{deadline:g}s",
                        "--grace", f"{grace:g}", "--summary", str(summary))
        elapsed = time.monotonic() - t0
        report = json.loads(summary.read_text())
        first = read_jsonl(out)
        print(f"\ndeadline: {elapsed:.2f} s, done {len(first)}, remaining {report['remaining']}, "
              f"deadline_hit {report['deadline_hit']}")
        assert result.exit_code == 0, result.stderr
        assert elapsed < deadline + grace + 30.0  # a hang guard; the timing is test_runner's
        assert report["deadline_hit"] is True
        assert 4 <= len(first) < n
        assert report["succeeded"] == len(first)
        assert report["remaining"] > 0 and report["remaining"] == n - len(first)
        assert "remaining" in result.stderr
        # the requests in flight at the deadline finished within the grace: none was cut
        assert stats.cancelled == 0 and stats.abandoned == 0
        assert stats.completed == len(first)
        assert_exact_once(first, [r["id"] for r in first])

        result = invoke("run", str(source), "-o", str(out), "--url", space.url, *CLI_FAST,
                        "--concurrency", "8", "--summary", str(summary))
        assert result.exit_code == 0, result.stderr
        report = json.loads(summary.read_text())
        assert report["deadline_hit"] is False and report["remaining"] == 0
        assert report["skipped_already_done"] == len(first)
        assert report["succeeded"] == n - len(first)
    assert_exact_once(read_jsonl(out), ids)


async def test_grace_cancels_what_is_still_running_and_counts_it_unfinished() -> None:
    # Answers take 1.5 s; the deadline comes at 0.3 s with 0.3 s of grace: the first wave
    # is cancelled, and every row is either done or unfinished. (When it ends, to the
    # millisecond, is checked on a virtual clock in test_runner.)
    rows = rows_of(20, "u")
    settings = BatchSettings(concurrency=4, deadline=0.3, grace=0.3,
                             policy=RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02))
    state = BatchState()
    async with run_fake_space(FakeSpaceConfig(latency=1.5, chunks=3)) as running, \
            GradioQueueClient(running.url, timeouts=TIMEOUTS) as client:
        t0 = time.monotonic()
        results = [r async for r in run_batch(rows, client, settings, state=state)]
        elapsed = time.monotonic() - t0
        for _ in range(100):  # the cancels reach the server just after
            if running.space.stats.running == 0:
                break
            await asyncio.sleep(0.02)
        stats = running.space.stats
    assert results == []
    assert state.deadline_hit
    assert elapsed < 30.0  # a hang guard: the deadline and grace times are test_runner's
    # 4 cancelled in flight + 4 more jobs in the window; the rest was never read
    assert state.unfinished == 8
    assert stats.completed == 0 and stats.running == 0


async def test_a_run_that_ends_within_the_grace_leaves_no_timer_behind() -> None:
    # The deadline passes while the last answers arrive; the run ends soon after. The
    # caller's stop event must not be set later by a leftover grace timer.
    stop = asyncio.Event()
    settings = BatchSettings(concurrency=2, deadline=0.15, grace=0.6)
    async with run_fake_space(FakeSpaceConfig(latency=0.3, chunks=2)) as running, \
            GradioQueueClient(running.url, timeouts=TIMEOUTS) as client:
        results = [r async for r in run_batch(rows_of(2, "t"), client, settings, stop=stop)]
        assert len(results) == 2
        assert not stop.is_set()
        await asyncio.sleep(0.8)  # past the grace
        assert not stop.is_set(), "a timer of the finished run set the caller's stop event"
