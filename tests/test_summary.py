"""Reservoir percentiles and the end-of-run summary (counts, report, JSON)."""

from __future__ import annotations

import json
import random

import pytest

from pipeline.models import Failure, PromptRow, RequestTrace, Success
from pipeline.summary import Reservoir, RunSummary

# -- Reservoir -------------------------------------------------------------------------------


def filled(values: list[float], size: int = 20_000, seed: int = 0) -> Reservoir:
    r = Reservoir(size=size, seed=seed)
    for v in values:
        r.add(v)
    return r


def nearest_rank(values: list[float], q: float) -> float:
    """The textbook nearest-rank percentile, by counting (no rounding formula)."""
    ordered = sorted(values)
    n = len(ordered)
    for k in range(1, n + 1):  # the smallest k with k/n >= q/100
        if k * 100 >= q * n:
            return ordered[k - 1]
    return ordered[-1]


def test_empty_reservoir_has_no_percentiles() -> None:
    r = Reservoir()
    assert r.percentile(50) is None and r.count == 0
    r.add(None)  # a timing that never came is not a sample
    assert r.percentile(50) is None and r.count == 0 and r.values == []


@pytest.mark.parametrize(("q", "want"), [(0, 1), (10, 1), (25, 3), (50, 5), (90, 9), (95, 10),
                                         (99, 10), (100, 10)])
def test_percentiles_are_exact_nearest_rank_for_small_inputs(q: float, want: float) -> None:
    values = [7.0, 3.0, 10.0, 1.0, 5.0, 9.0, 2.0, 8.0, 4.0, 6.0]  # 1..10, shuffled
    assert filled(values).percentile(q) == want


def test_percentiles_of_two_and_one_values() -> None:
    assert filled([20.0, 10.0]).percentile(50) == 10.0
    assert filled([20.0, 10.0]).percentile(51) == 20.0
    assert filled([4.5]).percentile(0) == filled([4.5]).percentile(100) == 4.5


def test_percentiles_match_the_definition_for_every_small_size() -> None:
    rng = random.Random(3)
    for n in range(1, 41):
        values = [rng.uniform(0, 1000) for _ in range(n)]
        r = filled(values)
        for q in (1, 5, 10, 25, 50, 75, 90, 95, 99, 99.9):
            assert r.percentile(q) == nearest_rank(values, q), (n, q)


def test_large_input_keeps_memory_flat_and_percentiles_close() -> None:
    r = Reservoir(size=2_000, seed=7)
    n = 200_000
    for v in range(n):
        r.add(float(v))
        if v % 50_000 == 0:
            assert len(r.values) <= 2_000
    assert r.count == n and len(r.values) == 2_000
    assert len(set(r.values)) == 2_000  # a sample of distinct inputs, not one value repeated
    # A uniform sample: percentiles within a few percent of the truth, and late values
    # made it in (algorithm R keeps replacing, it does not freeze after the first fill).
    assert abs(r.percentile(50) - n * 0.50) < n * 0.04
    assert abs(r.percentile(95) - n * 0.95) < n * 0.02
    assert max(r.values) > n * 0.95 and min(r.values) < n * 0.05


def test_default_size_is_bounded() -> None:
    r = Reservoir()
    for v in range(r.size + 5_000):
        r.add(v)
    assert len(r.values) == r.size == 20_000


# -- RunSummary ------------------------------------------------------------------------------


def success(i: int, duration: float, ttft: float, queue: float) -> Success:
    trace = RequestTrace(f"h{i}", duration_ms=duration, ttft_ms=ttft, queue_ms=queue)
    return Success(PromptRow(str(i), i, "p"), "answer", trace, 1, "m")


def failure(i: int, error_type: str) -> Failure:
    row = PromptRow(str(i), i, "p")
    return Failure(str(i), i, error_type, "boom", 3, row=row, trace=RequestTrace(f"f{i}"),
                   retryable=True)


def input_error(i: int) -> Failure:
    return Failure(None, i, "input", "in.jsonl:3: invalid JSON", 0)


def sample_summary() -> RunSummary:
    s = RunSummary(output="out.jsonl", errors_file="out.errors.jsonl")
    for i, ms in enumerate([100.0, 200.0, 300.0, 400.0]):
        s.add(success(i, ms, ms / 4, ms / 10))
    s.add(failure(10, "app_error"))
    s.add(failure(11, "queue_full"))
    s.add(failure(12, "app_error"))
    s.add(input_error(13))
    s.add(input_error(14))
    s.skipped_done = s.jobs_skipped = 5
    s.rows_to_do = s.jobs_to_do = 7
    s.retries = 7
    s.elapsed_s = 2.0
    return s


def test_counts() -> None:
    s = sample_summary()
    assert (s.succeeded, s.failed, s.input_errors) == (4, 3, 2)
    assert s.errors_by_type == {"app_error": 2, "queue_full": 1, "input": 2}
    assert s.latency.count == s.ttft.count == s.queue.count == 4
    assert s.latency.percentile(50) == 200.0 and s.latency.percentile(95) == 400.0


def test_success_without_timings_adds_no_samples() -> None:
    s = RunSummary()
    s.add(Success(PromptRow("a", 0, "p"), "x", RequestTrace("h"), 1, "m"))
    assert s.succeeded == 1 and s.latency.count == 0
    d = s.to_dict()
    assert d["latency_ms"] == {"p50": None, "p95": None}
    assert "latency     n/a" in s.render()


def test_to_json_has_the_documented_keys() -> None:
    data = json.loads(sample_summary().to_json())
    assert set(data) == {
        "succeeded", "failed", "input_errors", "skipped_already_done", "retries", "remaining",
        "remaining_estimated", "rows", "jobs", "interrupted", "endpoint_down", "stalled",
        "elapsed_s", "throughput_per_s", "latency_ms", "ttft_ms", "queue_ms", "errors_by_type",
        "output", "errors_file", "deadline_hit",
        "concurrency", "endpoints",
    }
    assert data["succeeded"] == 4 and data["failed"] == 3 and data["input_errors"] == 2
    assert data["skipped_already_done"] == 5 and data["retries"] == 7
    assert data["throughput_per_s"] == 2.0 and data["elapsed_s"] == 2.0
    assert data["latency_ms"] == {"p50": 200.0, "p95": 400.0}
    assert data["ttft_ms"] == {"p50": 50.0, "p95": 100.0}
    assert data["queue_ms"] == {"p50": 20.0, "p95": 40.0}
    assert data["errors_by_type"] == {"app_error": 2, "input": 2, "queue_full": 1}
    assert list(data["errors_by_type"]) == sorted(data["errors_by_type"])
    assert data["remaining"] is None and data["interrupted"] is False
    assert data["endpoint_down"] is None and data["stalled"] is None
    assert data["output"] == "out.jsonl" and data["errors_file"] == "out.errors.jsonl"


def test_to_json_without_elapsed_time_has_no_throughput() -> None:
    data = json.loads(RunSummary().to_json())
    assert data["throughput_per_s"] is None and data["succeeded"] == 0


def test_to_json_keeps_non_ascii_paths_readable() -> None:
    text = RunSummary(output="résumé/日本.jsonl").to_json()
    assert "日本" in text and text.endswith("\n")
    assert json.loads(text)["output"] == "résumé/日本.jsonl"


def test_render_shows_every_count() -> None:
    text = sample_summary().render()
    lines = text.splitlines()
    assert lines[0] == "qwen-batch summary"
    assert "  to do       7 rows" in lines
    assert "  done        4 rows" in lines
    # the breakdown covers the 3 request failures; bad input has its own line
    assert "  failed      3 rows (app_error 2, queue_full 1)" in lines
    assert "  bad input   2 rows" in lines
    assert "  skipped     5 rows (already in the output)" in lines
    assert "  retries     7" in lines
    assert "  latency     p50 200 ms, p95 400 ms" in lines
    assert "  first token p50 50 ms, p95 100 ms" in lines
    assert "  throughput  2.00 rows/s over 2.0 s" in lines
    assert "  output      out.jsonl" in lines
    assert "  errors      out.errors.jsonl" in lines
    assert "remaining" not in text and "INTERRUPTED" not in text and "STOPPED" not in text


def test_render_bad_input_shows_no_failure_breakdown() -> None:
    s = RunSummary(rows_to_do=1, jobs_to_do=1)
    s.add(input_error(0))
    s.add(success(1, 100.0, 10.0, 1.0))
    lines = s.render().splitlines()
    assert "  failed      0 rows" in lines and "  bad input   1 row" in lines


def test_render_flags_remaining_interrupted_and_endpoint_down() -> None:
    s = RunSummary(remaining=12, rows_remaining=12, rows_to_do=20, jobs_to_do=20,
                   interrupted=True, endpoint_down="20 rows failed in a row")
    text = s.render()
    assert "  remaining   12 rows (left for the next run)" in text
    assert "INTERRUPTED" in text
    assert "STOPPED EARLY, endpoint failing: 20 rows failed in a row" in text
    assert "  elapsed     0.0 s" in text  # no throughput without elapsed time


def test_endpoint_states_are_said_in_words_and_kept_as_they_are_in_the_json() -> None:
    states = ["closed", "open", "half_open", "gone"]
    s = RunSummary(endpoints=[{"url": f"http://e{i}", "state": state, "served": i, "failed": 0,
                               "avg_ms": None} for i, state in enumerate(states)])
    lines = [line for line in s.render().splitlines() if line.startswith("  endpoint")]
    assert lines == ["  endpoint    http://e0: 0 served, 0 failed, in use",
                     "  endpoint    http://e1: 1 served, 0 failed, benched",
                     "  endpoint    http://e2: 2 served, 0 failed, being probed",
                     "  endpoint    http://e3: 3 served, 0 failed, gone"]
    assert [ep["state"] for ep in s.to_dict()["endpoints"]] == states


# -- rows and jobs ---------------------------------------------------------------------------


def job(i: int, sample: int, ok: bool, samples: tuple[int, ...] = ()) -> Success | Failure:
    row = PromptRow(str(i), i, "p", samples=samples)
    trace = RequestTrace(f"h{i}-{sample}", duration_ms=10.0)
    if ok:
        return Success(row, "answer", trace, 1, "m", sample)
    return Failure(str(i), i, "app_error", "boom", 4, row=row, trace=trace, sample=sample)


def test_rows_and_jobs_are_counted_apart_with_samples() -> None:
    # 3 rows x 2 samples: row 0 both ok, row 1 one failed, row 2 (partly done before:
    # only sample 1 to do) ok; row 3 has one job still out when the run ends.
    s = RunSummary(samples=2, rows_to_do=4, jobs_to_do=7, skipped_done=5, jobs_skipped=11)
    for result in (job(0, 0, True), job(1, 0, True), job(0, 1, True), job(1, 1, False),
                   job(2, 1, True, samples=(1,)), job(3, 0, True)):
        s.add(result)
    assert (s.rows_done, s.rows_failed) == (2, 1)  # row 3 is neither: a job is still out
    assert (s.succeeded, s.failed) == (5, 1)
    data = s.to_dict()
    assert data["rows"] == {"read": 9, "bad_input": 0, "already_done": 5, "to_do": 4,
                            "done": 2, "failed": 1, "remaining": None}
    assert data["jobs"] == {"samples_per_row": 2, "already_done": 11, "to_do": 7, "done": 5,
                            "failed": 1, "retries": 0, "remaining": None}
    lines = s.render().splitlines()
    assert "  to do       4 rows, 7 jobs" in lines
    assert "  done        2 rows, 5 jobs" in lines
    assert "  failed      1 row, 1 job (app_error 1)" in lines
    assert "  skipped     5 rows, 11 jobs (already in the output)" in lines


def test_remaining_is_shown_in_both_units_and_zero_when_nothing_is_left() -> None:
    s = RunSummary(samples=3, rows_to_do=2, jobs_to_do=6, remaining=4, rows_remaining=2)
    assert "  remaining   2 rows, 4 jobs (left for the next run)" in s.render().splitlines()
    finished = RunSummary(rows_to_do=1, jobs_to_do=1, remaining=0, rows_remaining=0)
    finished.add(job(0, 0, True))
    assert "  remaining   0 rows" in finished.render().splitlines()
    assert finished.to_dict()["remaining"] == 0


def test_nothing_to_do_says_so_and_shows_no_throughput() -> None:
    # The issue: a finished run with nothing to do printed "throughput 0.00 rows/s".
    s = RunSummary(skipped_done=6, jobs_skipped=6, remaining=0, rows_remaining=0,
                   elapsed_s=0.4, output="out.jsonl", errors_file="out.errors.jsonl")
    text = s.render()
    assert text.splitlines()[1] == "  nothing to do: all 6 rows already done"
    assert "throughput" not in text and "latency" not in text and "done  " not in text
    assert "  output      out.jsonl" in text


def test_nothing_to_send_names_the_bad_input() -> None:
    s = RunSummary(skipped_done=2, remaining=0, rows_remaining=0, elapsed_s=0.1)
    s.add(input_error(2))
    assert s.render().splitlines()[1] == (
        "  nothing to send: 2 rows already done, 1 row of bad input (see the errors file)")
    assert "throughput" not in s.render()


def test_a_stopped_run_with_nothing_sent_is_not_nothing_to_do() -> None:
    for stopped in (RunSummary(interrupted=True), RunSummary(stalled="no row moved"),
                    RunSummary(endpoint_down="refused"), RunSummary(remaining=3)):
        assert "nothing to do" not in stopped.render()
