"""run_batch over real loopback sockets: the real GradioQueueClient against the fake Space."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import aclosing

import pytest
from fake_clock import FakeClock

from pipeline.client import GradioQueueClient, Timeouts
from pipeline.clock import LOOP_CLOCK, Clock
from pipeline.errors import EndpointDownError
from pipeline.fake_space import FakeSpaceConfig, fake_answer, run_fake_space
from pipeline.fake_space.server import RunningFakeSpace
from pipeline.models import Completion, Failure, PromptRow, RequestTrace, Result, Success
from pipeline.prompts import DEFAULT_SYSTEM_PROMPT
from pipeline.retry import RetryPolicy
from pipeline.runner import BatchSettings, BatchState, run_batch

FAST = RetryPolicy(max_attempts=4, base_delay=0.01, max_delay=0.02)
TIMEOUTS = Timeouts(connect=5, read=5, idle=0.4, total=20)


@pytest.fixture(params=[4, 6], ids=lambda m: f"gradio{m}")
async def space(request: pytest.FixtureRequest) -> AsyncIterator[RunningFakeSpace]:
    config = FakeSpaceConfig(gradio_major=request.param, chunks=4, heartbeat_interval=0.1)
    async with run_fake_space(config) as running:
        yield running


@pytest.fixture
async def space4() -> AsyncIterator[RunningFakeSpace]:
    config = FakeSpaceConfig(gradio_major=4, chunks=4, heartbeat_interval=0.1)
    async with run_fake_space(config) as running:
        yield running


@pytest.fixture
async def client(space4: RunningFakeSpace) -> AsyncIterator[GradioQueueClient]:
    async with GradioQueueClient(space4.url, timeouts=TIMEOUTS) as c:
        yield c


class Recorder:
    """Wraps a completer: records each attempt's prompt, session hash and start time."""

    def __init__(self, inner: GradioQueueClient,
                 raise_for: Callable[[str], BaseException | None] = lambda _p: None,
                 clock: Clock = LOOP_CLOCK) -> None:
        self.inner = inner
        self.raise_for = raise_for
        self.clock = clock
        self.calls: list[tuple[str, str, float]] = []

    async def complete(self, prompt: str, system: str | None = None, *,
                       trace: RequestTrace | None = None) -> Completion:
        assert trace is not None, "the runner must pass a trace for every attempt"
        self.calls.append((prompt, trace.session_hash, self.clock.now()))
        error = self.raise_for(prompt)
        if error is not None:
            raise error
        return await self.inner.complete(prompt, system, trace=trace)


def make_rows(n: int, prefix: str = "prompt", system: str | None = None) -> list[PromptRow]:
    return [PromptRow(id=f"r{i}", position=i, prompt=f"{prefix} {i}", system=system)
            for i in range(n)]


def expected(row: PromptRow) -> str:
    return fake_answer(row.prompt, DEFAULT_SYSTEM_PROMPT if row.system is None else row.system)


async def collect(gen: AsyncIterator[Result]) -> list[Result]:
    return [r async for r in gen]


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    """Poll ``cond`` until it holds; fail the test (not hang) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


def runner_tasks() -> list[asyncio.Task[object]]:
    """Unfinished tasks created by run_batch (its workers and watchers, all named so)."""
    return [task for task in asyncio.all_tasks()
            if not task.done() and task.get_name().startswith("run_batch")]


# -- the happy path ------------------------------------------------------------------------


async def test_every_row_answered_once_with_the_exact_text(space: RunningFakeSpace) -> None:
    rows = make_rows(12) + make_rows(6, "custom «sys» 日本語", system="Be terse.")
    rows = [PromptRow(id=f"x{i}", position=i, prompt=r.prompt, system=r.system)
            for i, r in enumerate(rows)]
    state = BatchState()
    async with GradioQueueClient(space.url, timeouts=TIMEOUTS) as client:
        results = await collect(run_batch(rows, client, BatchSettings(concurrency=4, policy=FAST),
                                          state=state))
        assert not runner_tasks()  # not even the stop watcher outlives a finished run
    assert all(isinstance(r, Success) for r in results)
    assert Counter(r.row.id for r in results) == Counter(r.id for r in rows)
    for r in results:
        assert isinstance(r, Success)
        assert r.text == expected(r.row)
        assert r.attempts == 1 and r.sample == 0
        assert r.trace.session_hash and r.trace.event_id
    assert state.succeeded == len(rows) and state.failed == 0 and state.in_flight == 0
    assert space.space.stats.completed == len(rows) == space.space.stats.joins


async def test_async_iterable_input_is_accepted(space4: RunningFakeSpace,
                                                client: GradioQueueClient) -> None:
    async def rows() -> AsyncIterator[PromptRow]:
        for row in make_rows(5):
            await asyncio.sleep(0)
            yield row

    results = await collect(run_batch(rows(), client, BatchSettings(concurrency=2, policy=FAST)))
    answered = sorted(r.row.id for r in results if isinstance(r, Success))
    assert answered == [f"r{i}" for i in range(5)]


async def test_input_failures_pass_straight_through(space4: RunningFakeSpace,
                                                   client: GradioQueueClient) -> None:
    bad1 = Failure(None, 1, "input", "data.jsonl:2: invalid JSON", 0)
    bad2 = Failure("dup", 4, "input", "duplicate id 'dup'", 0)
    good = make_rows(4)
    items: list[PromptRow | Failure] = [good[0], bad1, good[1], good[2], bad2, good[3]]
    state = BatchState()
    results = await collect(run_batch(items, client, BatchSettings(concurrency=2, policy=FAST),
                                      state=state))
    assert len(results) == 6
    passed = [r for r in results if isinstance(r, Failure)]
    assert len(passed) == 2 and passed[0] is bad1 and passed[1] is bad2
    assert sum(isinstance(r, Success) for r in results) == 4
    # bad input is not a request failure: it neither counts nor trips the endpoint check
    assert state.failed == 0 and state.consecutive_failures == 0 and state.succeeded == 4
    assert space4.space.stats.joins == 4


# -- retries ---------------------------------------------------------------------------------


async def test_retries_recover_every_fault_kind(space4: RunningFakeSpace,
                                               client: GradioQueueClient) -> None:
    kinds = ["queue_full", "cut", "app_error", "unexpected_error", "stall", "bad_json"]
    rows = [PromptRow(id=k, position=i, prompt=f"[fault:{k}:2] row {k}")
            for i, k in enumerate(kinds)]
    rows.append(PromptRow(id="ok", position=len(rows), prompt="no fault here"))
    recorder = Recorder(client)
    state = BatchState()
    results = await collect(run_batch(rows, recorder, BatchSettings(concurrency=8, policy=FAST),
                                      state=state))
    by_id = {r.row.id: r for r in results if isinstance(r, Success)}
    assert set(by_id) == {r.id for r in rows}, [r for r in results if isinstance(r, Failure)]
    stats = space4.space.stats
    for row in rows:
        want = 1 if row.id == "ok" else 3
        assert by_id[row.id].attempts == want, row.id
        assert by_id[row.id].text == expected(row)
        assert stats.attempts_by_prompt[row.prompt] == want
    assert state.retries == 2 * len(kinds)
    for kind in kinds:
        assert stats.faults[kind] == 2
    # a fresh session hash for every attempt, rejected joins included
    hashes = [h for _, h, _ in recorder.calls]
    assert len(hashes) == 2 * len(kinds) + len(rows) == len(set(hashes))
    assert len(stats.sessions) == stats.joins == len(hashes) - stats.rejected
    # the session of the winning attempt is the one recorded on the result
    assert all(by_id[r.id].trace.session_hash in stats.sessions for r in rows)


async def test_non_retryable_failure_fails_at_once(space4: RunningFakeSpace) -> None:
    state = BatchState()
    async with GradioQueueClient(space4.url, timeouts=TIMEOUTS, max_answer_chars=10) as client:
        results = await collect(run_batch(make_rows(2), client,
                                          BatchSettings(concurrency=2, policy=FAST), state=state))
    assert len(results) == 2
    for r in results:
        assert isinstance(r, Failure)
        assert r.error_type == "response_too_large"
        assert r.attempts == 1 and r.retryable is False
        assert r.row is not None and r.id == r.row.id and r.position == r.row.position
        assert r.trace is not None and r.trace.session_hash
    assert state.retries == 0 and state.failed == 2
    assert all(n == 1 for n in space4.space.stats.attempts_by_prompt.values())


@pytest.mark.parametrize("fault", ["app_error", "queue_full"])
async def test_exhausted_attempts_give_a_retryable_failure(space4: RunningFakeSpace,
                                                          client: GradioQueueClient,
                                                          fault: str) -> None:
    row = PromptRow(id="x", position=7, prompt=f"[fault:{fault}:99] never", system="S")
    policy = RetryPolicy(max_attempts=3, base_delay=0.01, max_delay=0.02)
    state = BatchState()
    results = await collect(run_batch([row], client, BatchSettings(policy=policy), state=state))
    assert len(results) == 1
    failure = results[0]
    assert isinstance(failure, Failure)
    assert failure.error_type == fault
    assert failure.attempts == 3 and failure.retryable is True
    assert failure.row == row and failure.id == "x" and failure.position == 7
    assert space4.space.stats.attempts_by_prompt[row.prompt] == 3
    assert state.retries == 2 and state.failed == 1


async def test_completer_bug_is_an_internal_failure_for_that_row_only(
    space4: RunningFakeSpace, client: GradioQueueClient
) -> None:
    recorder = Recorder(client, lambda p: RuntimeError("kaboom") if p == "prompt 3" else None)
    rows = make_rows(6)
    results = await collect(run_batch(rows, recorder, BatchSettings(concurrency=3, policy=FAST)))
    failures = [r for r in results if isinstance(r, Failure)]
    assert len(failures) == 1
    f = failures[0]
    assert f.id == "r3" and f.error_type == "internal" and f.attempts == 1
    assert "RuntimeError" in f.error and "kaboom" in f.error
    assert sorted(r.row.id for r in results if isinstance(r, Success)) == [
        "r0", "r1", "r2", "r4", "r5"]
    # a bug is not retried
    assert sum(1 for p, _, _ in recorder.calls if p == "prompt 3") == 1


# -- bounds ----------------------------------------------------------------------------------


async def test_concurrency_bound_holds_at_the_server(space4: RunningFakeSpace,
                                                    client: GradioQueueClient) -> None:
    space4.space.config.latency = 0.05
    state = BatchState()
    peak = 0

    results = []
    async for r in run_batch(make_rows(40), client, BatchSettings(concurrency=3, policy=FAST),
                             state=state):
        peak = max(peak, state.in_flight)
        results.append(r)
    assert len(results) == 40 and all(isinstance(r, Success) for r in results)
    assert space4.space.stats.max_running == 3  # reached, never exceeded
    assert peak <= 3


async def test_window_is_bounded_on_a_huge_input(space4: RunningFakeSpace,
                                                client: GradioQueueClient) -> None:
    concurrency = 4
    pulled = 0
    received = 0
    worst = 0

    def rows() -> Iterator[PromptRow]:
        nonlocal pulled, worst
        for i in range(10_000):
            pulled += 1
            worst = max(worst, pulled - received)
            yield PromptRow(id=str(i), position=i, prompt=f"row {i}")

    settings = BatchSettings(concurrency=concurrency, policy=FAST)
    async with aclosing(run_batch(rows(), client, settings)) as gen:
        async for result in gen:
            assert isinstance(result, Success)
            received += 1
            worst = max(worst, pulled - received)
            if received == 150:
                break
    assert worst <= 2 * concurrency
    assert worst == 2 * concurrency  # the window is actually used
    assert pulled <= received + 2 * concurrency


async def test_samples_run_each_row_several_times(space4: RunningFakeSpace,
                                                 client: GradioQueueClient) -> None:
    rows = [PromptRow(id="a", position=0, prompt="alpha"),
            PromptRow(id="b", position=1, prompt="beta", samples=(1,)),
            PromptRow(id="c", position=2, prompt="gamma", samples=(0, 2))]
    recorder = Recorder(client)
    results = await collect(run_batch(rows, recorder,
                                      BatchSettings(concurrency=2, samples=3, policy=FAST)))
    keys = sorted((r.row.id, r.sample) for r in results if isinstance(r, Success))
    assert keys == [("a", 0), ("a", 1), ("a", 2), ("b", 1), ("c", 0), ("c", 2)]
    assert len(results) == 6
    for r in results:
        assert isinstance(r, Success) and r.text == expected(r.row)
    stats = space4.space.stats
    assert stats.attempts_by_prompt == {"alpha": 3, "beta": 1, "gamma": 2}
    assert len({h for _, h, _ in recorder.calls}) == 6


async def test_rate_limit_spaces_request_starts(space4: RunningFakeSpace,
                                               client: GradioQueueClient) -> None:
    clock = FakeClock()
    recorder = Recorder(client, clock=clock)
    started = clock.now()
    async with clock.autojump():
        results = await collect(run_batch(make_rows(10), recorder,
                                          BatchSettings(concurrency=10, rate=20, policy=FAST),
                                          clock=clock))
    assert len(results) == 10 and all(isinstance(r, Success) for r in results)
    # On the run's clock the limiter hands out starts 1/20 s apart from the first.
    starts = sorted(t for _, _, t in recorder.calls)
    assert [round(t - started, 9) for t in starts] == [round(k / 20, 9) for k in range(10)]


# -- stopping --------------------------------------------------------------------------------


async def test_stop_event_cancels_in_flight_and_returns(space4: RunningFakeSpace,
                                                       client: GradioQueueClient) -> None:
    rows = make_rows(6) + [PromptRow(id=f"s{i}", position=6 + i, prompt=f"[fault:stall:9] {i}")
                           for i in range(30)]
    stop = asyncio.Event()
    stats = space4.space.stats
    stalled_client = GradioQueueClient(space4.url, timeouts=Timeouts(read=30, idle=30, total=60))

    async def trigger() -> float:
        await until(lambda: stats.faults.get("stall", 0) >= 4)
        stop.set()
        return time.monotonic()

    watcher = asyncio.create_task(trigger())
    state = BatchState()
    results = await collect(run_batch(rows, stalled_client,
                                      BatchSettings(concurrency=4, policy=FAST), stop=stop,
                                      state=state))
    ended = time.monotonic()
    stopped_at = await watcher
    assert ended - stopped_at < 5.0  # not the 30 s idle timeout of the stalled requests
    assert len(results) == 6
    for r in results:
        assert isinstance(r, Success) and r.text == expected(r.row)
    assert not runner_tasks()
    # the cancelled attempts gave their endpoint back; the jobs they held are unfinished
    assert state.pool is not None and state.pool.endpoints[0].in_flight == 0
    assert state.in_flight == 0 and state.unfinished >= 4
    await stalled_client.close()
    await until(lambda: stats.running == 0)
    assert stats.cancelled + stats.abandoned >= 4
    assert stats.faults["stall"] == 4  # no request started after the stop


async def test_closing_the_generator_early_leaves_nothing_running(
    space4: RunningFakeSpace, client: GradioQueueClient
) -> None:
    rows = make_rows(2) + [PromptRow(id=f"s{i}", position=2 + i, prompt=f"[fault:stall:9] {i}")
                           for i in range(20)]
    stats = space4.space.stats
    slow = GradioQueueClient(space4.url, timeouts=Timeouts(read=30, idle=30, total=60))
    gen = run_batch(rows, slow, BatchSettings(concurrency=3, policy=FAST))
    first = await gen.__anext__()
    assert isinstance(first, Success)
    await until(lambda: stats.faults.get("stall", 0) >= 3)
    assert runner_tasks()
    await gen.aclose()
    assert not runner_tasks()
    await slow.close()
    await until(lambda: stats.running == 0)
    assert stats.cancelled + stats.abandoned >= 3


async def test_endpoint_down_stops_the_run_after_the_failures(space4: RunningFakeSpace,
                                                             client: GradioQueueClient) -> None:
    space4.space.config.down = True
    recorder = Recorder(client)
    policy = RetryPolicy(max_attempts=2, base_delay=0.01, max_delay=0.02)
    settings = BatchSettings(concurrency=2, policy=policy, max_consecutive_failures=3)
    state = BatchState()
    results: list[Result] = []
    with pytest.raises(EndpointDownError) as info:
        async for r in run_batch(make_rows(200), recorder, settings, state=state):
            results.append(r)
    assert len(results) >= 3
    assert all(isinstance(r, Failure) and r.error_type == "http_status" and r.retryable
               for r in results)
    assert "3 rows failed in a row" in str(info.value)
    assert state.down_reason is not None
    attempted = {p for p, _, _ in recorder.calls}
    assert len(attempted) < 20  # far fewer than the 200 rows
    assert not runner_tasks()


async def test_a_success_resets_the_consecutive_failure_count(space4: RunningFakeSpace,
                                                             client: GradioQueueClient) -> None:
    # 2 failing rows, 1 good, 2 failing... never 3 in a row: no EndpointDownError.
    policy = RetryPolicy(max_attempts=1)
    rows = [PromptRow(id=str(i), position=i,
                      prompt=f"[fault:app_error:9] {i}" if i % 3 else f"good {i}")
            for i in range(9)]
    settings = BatchSettings(concurrency=1, policy=policy, max_consecutive_failures=3)
    results = await collect(run_batch(rows, client, settings))
    assert len(results) == 9
    assert sum(isinstance(r, Success) for r in results) == 3


async def test_closing_with_nothing_in_flight_leaves_nothing_and_closes_the_input(
    space4: RunningFakeSpace, client: GradioQueueClient
) -> None:
    closed: list[bool] = []

    class Rows:
        def __iter__(self) -> Iterator[PromptRow]:
            try:
                yield from make_rows(1)
            finally:
                closed.append(True)

    gen = run_batch(Rows(), client, BatchSettings(policy=FAST))
    first = await gen.__anext__()
    assert isinstance(first, Success)
    await gen.aclose()
    assert not runner_tasks()
    assert closed == [True]  # the input is released at once, not whenever GC gets to it


# -- an endpoint never reached: no row is burnt -------------------------------------------------


class Unreachable:
    """A completer whose first ``refusals`` requests cannot connect; then it answers."""

    def __init__(self, refusals: int, error: Exception | None = None) -> None:
        self.display_url = "http://127.0.0.1:1"
        self.refusals = refusals
        self.calls = 0
        self.error = error

    async def complete(self, prompt: str, system: str | None = None, *,
                       trace: RequestTrace | None = None) -> Completion:
        from pipeline.errors import ConnectError

        self.calls += 1
        if self.calls <= self.refusals:
            raise self.error or ConnectError("cannot connect: Connect call failed")
        assert trace is not None
        return Completion(f"answer to {prompt}", trace)


async def test_rows_are_not_failed_while_no_endpoint_was_ever_reached() -> None:
    rows = make_rows(3)
    state = BatchState()
    clock = FakeClock()
    settings = BatchSettings(concurrency=2, connect_grace=0.2, probe_cooldown=0.01,
                             policy=RetryPolicy(max_attempts=1, base_delay=0.0))
    with pytest.raises(EndpointDownError) as info:
        await clock.run(collect(run_batch(rows, Unreachable(10_000), settings, state=state,
                                          clock=clock)))
    assert "http://127.0.0.1:1" in str(info.value) and "Connect call failed" in str(info.value)
    assert state.failed == 0 and state.succeeded == 0
    assert state.unfinished == 3  # every row left for the next run


async def test_refusals_before_the_endpoint_comes_up_cost_a_row_no_attempt() -> None:
    rows = make_rows(2)
    completer = Unreachable(3)
    clock = FakeClock()
    settings = BatchSettings(concurrency=1, connect_grace=30.0, probe_cooldown=0.01,
                             policy=RetryPolicy(max_attempts=1, base_delay=0.0))
    results = await clock.run(collect(run_batch(rows, completer, settings, clock=clock)))
    assert all(isinstance(r, Success) for r in results)
    assert sorted(r.attempts for r in results) == [1, 1]  # with max_attempts=1 they would fail


async def test_a_wrong_proxy_password_fails_no_row() -> None:
    from pipeline.errors import AccessDeniedError

    state = BatchState()
    denied = AccessDeniedError("HTTP 407 from the proxy", status=407)
    with pytest.raises(EndpointDownError) as info:
        await collect(run_batch(make_rows(10), Unreachable(10_000, denied),
                                BatchSettings(concurrency=4, connect_grace=600.0), state=state))
    assert "407" in str(info.value)
    assert state.failed == 0 and state.retries == 0


# -- the run's clock and its workers ---------------------------------------------------------------


class Slow:
    """A completer that takes ``seconds`` on ``clock`` to answer."""

    def __init__(self, clock: FakeClock, seconds: float) -> None:
        self.display_url = "http://slow"
        self.clock = clock
        self.seconds = seconds
        self.started = 0

    async def complete(self, prompt: str, system: str | None = None, *,
                       trace: RequestTrace | None = None) -> Completion:
        assert trace is not None
        self.started += 1
        await self.clock.sleep(self.seconds)
        return Completion(f"answer to {prompt}", trace)


async def test_the_deadline_and_the_grace_run_on_the_runs_clock() -> None:
    # Answers take 1.5 s; the deadline comes at 0.3 s with 0.3 s of grace: the first wave
    # is cancelled at 0.6 s exactly, and every job taken in is counted unfinished.
    clock = FakeClock()
    completer = Slow(clock, 1.5)
    state = BatchState()
    stop = asyncio.Event()
    settings = BatchSettings(concurrency=4, deadline=0.3, grace=0.3, policy=FAST)
    t0 = clock.now()
    results = await clock.run(collect(run_batch(make_rows(20), completer, settings, stop=stop,
                                                state=state, clock=clock)))
    assert results == []
    assert clock.now() - t0 == pytest.approx(0.6)
    assert state.deadline_hit and stop.is_set()
    assert completer.started == 4
    assert state.unfinished == 8  # 4 cancelled in flight + 4 waiting in the window
    assert not runner_tasks()


async def test_answers_within_the_grace_are_kept_and_no_timer_outlives_the_run() -> None:
    clock = FakeClock()
    completer = Slow(clock, 0.5)
    state = BatchState()
    stop = asyncio.Event()
    settings = BatchSettings(concurrency=2, deadline=0.3, grace=0.6, policy=FAST)
    t0 = clock.now()
    results = await clock.run(collect(run_batch(make_rows(6), completer, settings, stop=stop,
                                                state=state, clock=clock)))
    assert len(results) == 2 and all(isinstance(r, Success) for r in results)
    assert clock.now() - t0 == pytest.approx(0.5)  # the run ends with its last answer
    assert state.deadline_hit and state.unfinished == 2  # the rest of the window of 4
    assert clock.next_wake() is None and not stop.is_set()  # the grace timer went with the run


async def test_a_run_is_concurrency_workers_not_a_task_per_job() -> None:
    clock = FakeClock()
    completer = Slow(clock, 1.0)
    seen: list[int] = []

    async def run() -> list[Result]:
        results = []
        async for result in run_batch(make_rows(30), completer,
                                      BatchSettings(concurrency=3, policy=FAST), clock=clock):
            seen.append(len(runner_tasks()))
            results.append(result)
        return results

    results = await clock.run(run())
    assert len(results) == 30 and all(isinstance(r, Success) for r in results)
    assert max(seen) == 3 + 1  # the workers and the stop watcher, however many jobs
    assert clock.now() == pytest.approx(1000.0 + 10.0)  # 30 answers of 1 s, 3 at a time


async def test_retry_delays_are_waited_on_the_runs_clock() -> None:
    clock = FakeClock()
    completer = Unreachable(0)
    calls = 0

    class Flaky:
        display_url = "http://flaky"

        async def complete(self, prompt: str, system: str | None = None, *,
                           trace: RequestTrace | None = None) -> Completion:
            nonlocal calls
            from pipeline.errors import AppError

            calls += 1
            if calls <= 2:
                raise AppError("the app failed")
            return await completer.complete(prompt, system, trace=trace)

    policy = RetryPolicy(max_attempts=3, base_delay=40.0, max_delay=40.0)
    state = BatchState()
    t0 = clock.now()
    results = await clock.run(collect(run_batch(make_rows(1), Flaky(), BatchSettings(
        policy=policy, seed=7), state=state, clock=clock)))
    assert len(results) == 1 and isinstance(results[0], Success) and results[0].attempts == 3
    assert state.retries == 2 and len(clock.sleeps) == 2
    assert all(0 <= s <= 40.0 for s in clock.sleeps)  # jittered within the policy's ceiling
    assert clock.now() - t0 == pytest.approx(sum(clock.sleeps))  # waited out, on the clock


# -- a retry goes to another endpoint ----------------------------------------------------------


class Flaky:
    """A completer that answers in ``ms`` (as the trace says) or fails every request with 502."""

    def __init__(self, url: str, *, ms: float = 0.0, failing: bool = False) -> None:
        self.display_url = url
        self.ms = ms
        self.failing = failing
        self.prompts: list[str] = []

    async def complete(self, prompt: str, system: str | None = None, *,
                       trace: RequestTrace | None = None) -> Completion:
        from pipeline.errors import HTTPStatusError

        assert trace is not None
        self.prompts.append(prompt)
        if self.failing:
            raise HTTPStatusError("HTTP 502: Bad Gateway", status=502)
        trace.duration_ms = self.ms
        return Completion(f"answer to {prompt}", trace)


async def test_a_row_that_failed_on_one_endpoint_is_retried_on_another() -> None:
    # a fails fast and is never benched (a high threshold); b answers but is slow, so a
    # always scores better. Two attempts are enough for every row: the second goes to b.
    bad, good = Flaky("http://a", failing=True), Flaky("http://b", ms=50_000.0)
    rows = make_rows(12)
    settings = BatchSettings(concurrency=3, failure_threshold=1000, max_consecutive_failures=1000,
                             policy=RetryPolicy(max_attempts=2, base_delay=0.0))
    results = await collect(run_batch(rows, [bad, good], settings))
    assert [type(r) for r in results] == [Success] * 12, results
    assert Counter(bad.prompts) == Counter(r.prompt for r in rows)  # each failed there once
    assert sorted(good.prompts) == sorted(r.prompt for r in rows)
