"""Honest counts on the progress bar: its total, what advances it, what its postfix says."""

from __future__ import annotations

import asyncio
import io
from collections.abc import Callable, Iterator
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st
from pty_screen import BAR, capture_run

from pipeline.errors import InputError, InputFileError
from pipeline.jobs import KeySet, PlanCounters, plan_rows
from pipeline.limits import AdaptiveLimit
from pipeline.models import Failure, PromptRow, RawRecord, RequestTrace, Success
from pipeline.progress import Progress
from pipeline.readers import count_jsonl_rows, count_rows, read_records
from pipeline.rowspec import RowSpec
from pipeline.runner import BatchState

LINES = [b'{"prompt": "a"}\n', b"\n", b"\r\n", b"  \t\n", b'{"prompt": "b"}\r\n', b"not json\n",
         b"   ", b'{"prompt": "c"}', b"\xef\xbb\xbf\n", b"\x0b\x0c\n"]


def _rows_read(path: Path) -> int:
    try:
        return sum(1 for _ in read_records(str(path), "jsonl"))
    except InputFileError:  # "the input has no rows"
        return 0


def test_blank_lines_are_not_rows_of_the_total(tmp_path: Path) -> None:
    # The case: 6 rows and 2 blank lines made a total of 8 ("75% 6/8" at the end).
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"".join([b'{"prompt": "p%d"}\n' % i for i in range(3)] + [b"\n", b"  \n"]
                              + [b'{"prompt": "q%d"}\n' % i for i in range(3)]))
    assert _rows_read(path) == 6
    assert count_rows(str(path), "jsonl") == 6


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(range(len(LINES))), max_size=12))
def test_the_count_is_what_the_reader_reads(picks: list[int]) -> None:
    import tempfile

    data = b"".join(LINES[i] for i in picks)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "in.jsonl"
        path.write_bytes(data)
        expected = _rows_read(path)
        assert count_rows(str(path), "jsonl") == expected, data
        for size in (3, 4, 5, 7, 16):  # block edges inside lines, at newlines, in CRLFs
            assert count_jsonl_rows(io.BytesIO(data), block_size=size) == expected, (data, size)


# -- the total: jobs the plan will send --------------------------------------------------------


def _records(n: int, bad: tuple[int, ...] = ()) -> list[RawRecord | InputError]:
    return [InputError("invalid JSON", location=f"in.jsonl:{i + 1}") if i in bad
            else RawRecord(position=i, location=f"in.jsonl:{i + 1}",
                           values={"id": f"r{i}", "prompt": f"p{i}"})
            for i in range(n)]


def _drain(plan: Iterator[PromptRow | Failure], counters: PlanCounters, expected: list[int | None],
           **kw: int | None) -> None:
    for _ in plan:
        expected.append(counters.expected_jobs(**kw))  # type: ignore[arg-type]


def test_the_total_starts_from_the_count_less_done_keys_capped_by_the_limit() -> None:
    counters = PlanCounters()
    done = KeySet([("r0", 0), ("r0", 1), ("r1", 0)])  # r0 done, r1 half done
    kw = {"input_rows": 6, "samples": 2, "done_keys": len(done), "limit": None}
    assert counters.expected_jobs(**kw) == 6 * 2 - 3  # type: ignore[arg-type]
    totals: list[int | None] = []
    plan = plan_rows(_records(6), RowSpec(), done=done, samples=2, counters=counters)
    _drain(plan, counters, totals, **kw)
    assert totals == [9] * 5  # exact all along: one row skipped, one yields only sample 1
    assert counters.jobs == 9 and counters.exhausted
    limited = PlanCounters()
    kw["limit"] = 2
    assert limited.expected_jobs(**kw) == 4  # type: ignore[arg-type]
    plan = plan_rows(_records(6), RowSpec(), done=done, samples=2, limit=2, counters=limited)
    assert [r.id for r in plan if isinstance(r, PromptRow)] == ["r1", "r2"]
    assert limited.expected_jobs(**kw) == limited.jobs == 3  # type: ignore[arg-type]


def test_bad_rows_leave_the_total_as_they_are_read() -> None:
    counters = PlanCounters()
    kw = {"input_rows": 5, "samples": 1, "done_keys": 0, "limit": None}
    plan = plan_rows(_records(5, bad=(1, 3)), RowSpec(), done=KeySet(), counters=counters)
    totals: list[int | None] = []
    _drain(plan, counters, totals, **kw)
    assert totals == [5, 4, 4, 3, 3] and counters.jobs == 3


def test_an_unknown_count_gives_no_total_until_the_input_ends() -> None:
    counters = PlanCounters()
    kw = {"input_rows": None, "samples": 3, "done_keys": 0, "limit": None}
    plan = plan_rows(_records(2), RowSpec(), done=KeySet(), samples=3, counters=counters)
    totals: list[int | None] = []
    _drain(plan, counters, totals, **kw)
    assert totals == [None, None] and counters.expected_jobs(**kw) == 6  # type: ignore[arg-type]


# -- the bar ---------------------------------------------------------------------------------


def _bar(total: Callable[[], int | None], state: BatchState) -> tuple[Progress, io.StringIO]:
    stream = io.StringIO()
    return Progress(True, state, total, file=stream), stream


def _screen(stream: io.StringIO) -> str:
    return stream.getvalue().split("\r")[-1].strip()


def _result(i: int, ok: bool) -> Success | Failure:
    row = PromptRow(f"r{i}", i, "p")
    if ok:
        return Success(row, "answer", RequestTrace("h"), 1, "m")
    return Failure(row.id, i, "app_error", "boom", 4, row=row, trace=RequestTrace("h"))


async def test_the_bar_shows_done_failed_retries_and_the_level() -> None:
    state = BatchState()
    state.limit = AdaptiveLimit(8)
    state.retries = 5
    progress, stream = _bar(lambda: 10, state)
    for i in range(7):
        progress.advance(_result(i, ok=i != 3))
    progress.advance(Failure(None, 9, "input", "bad", 0))  # bad input: never sent
    progress.tick()
    line = _screen(stream)
    assert "7/10" in line and " 70%" in line
    assert "done=6 failed=1 retries=5 conc=8/8 bad_input=1" in line
    state.limit.on_overload()  # AIMD cut: the level shows it at the next redraw
    progress.tick()
    assert f"conc={state.limit.level}/8" in _screen(stream) and state.limit.level < 8
    progress.close()


def test_results_only_count_until_the_next_tick() -> None:
    progress, stream = _bar(lambda: 1000, BatchState())
    before = stream.getvalue()
    for i in range(500):
        progress.advance(_result(i, ok=True))
    assert stream.getvalue() == before  # the hot path draws nothing
    progress.tick()
    assert "500/1000" in _screen(stream) and stream.getvalue().count("\r") == before.count("\r") + 1


def test_the_total_follows_the_plan_and_never_shows_over_100_percent() -> None:
    totals: list[int | None] = [None]
    progress, stream = _bar(lambda: totals[0], BatchState())
    progress.advance(_result(0, ok=True))
    progress.tick()
    assert "1 jobs" in _screen(stream) and "%" not in _screen(stream)  # unknown: no bar
    totals[0] = 3
    progress.tick()
    assert "1/3" in _screen(stream)
    totals[0] = 0  # a low estimate (bad rows ahead) never shows more than 100%
    progress.tick()
    assert "1/1" in _screen(stream) and "100%" in _screen(stream)
    progress.close()


def test_a_disabled_bar_counts_and_draws_nothing() -> None:
    calls: list[int] = []
    progress = Progress(False, BatchState(), lambda: calls.append(1) or 1)
    progress.advance(_result(0, ok=True))
    progress.tick()
    progress.close()
    assert progress.done == 1 and calls == []  # the total is not even asked for


async def test_ticking_redraws_while_the_block_runs() -> None:
    progress, stream = _bar(lambda: 4, BatchState())
    async with progress.ticking():
        progress.advance(_result(0, ok=True))
        for _ in range(200):  # bounded: 200 loop turns of at most the tick interval each
            await asyncio.sleep(0.01)
            if "1/4" in _screen(stream):
                break
    assert "1/4" in _screen(stream)
    progress.close()


# -- the screen --------------------------------------------------------------------------------


def test_a_screenshot_mid_run_shows_done_failed_retries_and_the_level(tmp_path: Path) -> None:
    # The real command on a pseudo-terminal against a slow fake Space (see tests/pty_screen.py,
    # which also writes docs/progress.txt): 40 rows, one failing for good, three retried.
    capture = capture_run(tmp_path)
    match = BAR.search(capture.mid_run)
    assert match is not None, capture.mid_run
    n, total, done, failed, retries, level, ceiling = (int(match.group(i)) for i in range(2, 9))
    assert total == 40 and 20 <= n < 40 and done + failed == n
    assert failed == 1 and retries >= 3 and 1 <= level <= ceiling == 4
    assert capture.exit_code == 3  # a row failed
    final = next(line for line in capture.final if line.startswith("qwen-batch: 100%"))
    assert "40/40, done=39 failed=1 retries=4" in final, capture.final
    assert "  failed      1 row (app_error 1)" in capture.final
