"""Smoke test of the benchmark suite (bench/): tiny runs that prove the scripts still work.

Not a benchmark: 50 prompts against a fake Space at 0.05 s. It checks that the
reference client writes correct answers, that the process measurement reports
sane figures, and that the CI regression check (both legs, every output checked
record by record) passes lenient limits and FAILS (exit 1) impossible ones.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench"
sys.path.insert(0, str(BENCH))

import check_regression  # noqa: E402
import common  # noqa: E402

from pipeline.fake_space.model import fake_answer  # noqa: E402
from pipeline.prompts import DEFAULT_SYSTEM_PROMPT  # noqa: E402

N = 50


@pytest.fixture(scope="module")
def space() -> Iterator[common.FakeSpaceProc]:
    with common.FakeSpaceProc(0.05, 4) as running:
        yield running


def test_clients_run_under_the_venv_running_the_tests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A second venv (e.g. .ci/lowest-deps.sh's) must test its own packages, not those of
    # the checkout's .venv that happens to sit beside it; outside any venv, .venv is used.
    beside = tmp_path / ".venv" / "bin" / "python"
    beside.parent.mkdir(parents=True)
    beside.touch()
    monkeypatch.setattr(common, "REPO", tmp_path)
    monkeypatch.setattr(sys, "base_prefix", sys.prefix + "-base")
    assert common.python_exe() == sys.executable
    monkeypatch.setattr(sys, "base_prefix", sys.prefix)
    assert common.python_exe() == str(beside)


def test_verdict_logic() -> None:
    assert check_regression.verdict([(1.0, 1.0)], 0.9) == (1.0, True)
    ratio, passed = check_regression.verdict([(1.0, 1.25), (1.0, 1.2), (1.0, 1.3)], 0.9)
    assert ratio == pytest.approx(1 / 1.25) and not passed
    assert check_regression.verdict([], 0.9)[1] is False
    # CPU: ours / reference, at most the limit.
    ratio, passed = check_regression.cpu_verdict([(1.0, 1.4), (1.0, 1.6), (2.0, 2.2)], 1.5)
    assert ratio == pytest.approx(1.4) and passed
    ratio, passed = check_regression.cpu_verdict([(1.0, 1.6), (1.0, 1.7), (1.0, 1.2)], 1.5)
    assert ratio == pytest.approx(1.6) and not passed
    assert check_regression.cpu_verdict([], 1.5)[1] is False


def test_output_check_wants_every_answer_exactly_once(tmp_path: Path) -> None:
    prompts = {"r0": "first", "r1": "second", "r2": "third"}
    check = check_regression.output_checker(prompts)
    out = tmp_path / "out.jsonl"

    def write(*records: dict[str, str]) -> list[str]:
        out.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
        return check(out)

    right = [{"id": i, "prompt": p, "completion": fake_answer(p, DEFAULT_SYSTEM_PROMPT)}
             for i, p in prompts.items()]
    assert write(*right) == []
    assert write(*reversed(right)) == []  # any order
    wrong = dict(right[1], completion=right[1]["completion"][:-1])
    assert write(right[0], wrong, right[2]) == [
        "id 'r1': the completion is not the fake Space's answer: "
        + repr(wrong["completion"][:80])]
    assert write(right[0], right[1], right[1], right[2]) == ["line 3: id 'r1' written twice"]
    assert write(right[0], right[2]) == ["1 ids missing from the output"]
    assert write(*right, {"id": "r9", "prompt": "x", "completion": "y"}) == [
        "line 4: id 'r9' is not in the input"]
    assert write(right[0], dict(right[1], prompt="other"), right[2]) == [
        "id 'r1': the prompt differs from the input's"]
    assert check(tmp_path / "none.jsonl") == ["no output file none.jsonl"]


def test_reference_client_answers_every_prompt(space: common.FakeSpaceProc,
                                               tmp_path: Path) -> None:
    inp = common.make_jsonl(tmp_path / "in.jsonl", N, prompt_chars=120)
    run = common.run_client("reference", inp, N, space.url, 16, workdir=tmp_path / "w",
                            timeout=60, server=space)
    assert run.ok, run.proc.stderr_tail
    assert run.proc.cpu_s > 0 and run.proc.maxrss_mb > 5
    assert run.proc.maxrss_mb >= run.proc.parent_rss_mb
    # run_client deletes its output: run it again by hand to check the answers.
    out = tmp_path / "ref.jsonl"
    res = common.run_measured(common.reference_cmd(inp, out, space.url, 16), timeout=60)
    assert res.returncode == 0, res.stderr_tail
    prompts = {json.loads(line)["id"]: json.loads(line)["prompt"]
               for line in inp.read_text(encoding="utf-8").splitlines()}
    records = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(records) == N
    for record in records:
        assert record["completion"] == fake_answer(prompts[record["id"]], DEFAULT_SYSTEM_PROMPT)


def test_our_cli_runs_under_the_harness(space: common.FakeSpaceProc, tmp_path: Path) -> None:
    inp = common.make_jsonl(tmp_path / "in.jsonl", N, prompt_chars=120)
    run = common.run_client("ours", inp, N, space.url, 16, workdir=tmp_path / "w", timeout=60,
                            server=space)
    assert run.ok, run.proc.stderr_tail
    assert run.extra.get("elapsed_s") is not None


def test_a_run_with_a_wrong_answer_is_not_ok(space: common.FakeSpaceProc, tmp_path: Path) -> None:
    inp = common.make_jsonl(tmp_path / "in.jsonl", N, prompt_chars=120)
    prompts = check_regression.read_prompts(inp)
    for client in ("ours", "reference"):
        right = common.run_client(client, inp, N, space.url, 16, workdir=tmp_path / "w",
                                  timeout=60, adaptive=True,
                                  verify=check_regression.output_checker(prompts))
        assert right.ok and right.problems == [], right.problems
        # The answers are checked against another system prompt: every one is now wrong.
        wrong = common.run_client(client, inp, N, space.url, 16, workdir=tmp_path / "w",
                                  timeout=60, adaptive=True,
                                  verify=check_regression.output_checker(prompts, "other"))
        assert not wrong.ok and wrong.rows_out == N
        assert wrong.problems[-1] == f"... and {N - 5} more"


def test_regression_check_passes_and_can_fail(tmp_path: Path) -> None:
    args = ["--n", str(N), "--zero-n", str(N), "--latency", "0.05", "--chunks", "4",
            "--reps", "1", "--workdir", str(tmp_path)]
    lenient = ["--threshold", "0", "--cpu-max", "100", "--zero-threshold", "0",
               "--zero-cpu-max", "100"]
    assert check_regression.main([*args, *lenient, "--json", str(tmp_path / "ok.json")]) == 0
    figures = json.loads((tmp_path / "ok.json").read_text())
    assert figures["clean"] and figures["adaptive"] and set(figures["legs"]) == {"latency", "zero"}
    for leg in figures["legs"].values():
        assert leg["clean"] and leg["n"] == N
        assert leg["wall_ratio_ref_over_ours"] > 0 and leg["cpu_ratio_ours_over_ref"] > 0
    # Ours can never be 100x faster, nor use a hundredth of the reference's CPU: these fail.
    assert check_regression.main([*args, *lenient, "--threshold", "100"]) == 1
    assert check_regression.main([*args, *lenient, "--cpu-max", "0.01"]) == 1
    assert check_regression.main([*args, *lenient, "--zero-cpu-max", "0.01"]) == 1


def test_our_default_path_runs_adaptive(tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    assert "--fixed-concurrency" not in common.ours_cmd(tmp_path / "i.jsonl", out, "u", 4,
                                                        adaptive=True)
    assert "--fixed-concurrency" in common.ours_cmd(tmp_path / "i.jsonl", out, "u", 4)


def test_parquet_memory_probe_and_output_check(tmp_path: Path) -> None:
    inp = common.make_parquet(tmp_path / "in.parquet", N, prompt_chars=300)
    figures = tmp_path / "probe.json"
    res = common.run_measured(
        [common.python_exe(), str(BENCH / "mem_probe.py"), str(inp), "--stage", "parquet",
         "--output", str(tmp_path / "out.parquet"), "--result", str(figures)], timeout=120)
    assert res.returncode == 0, res.stderr_tail
    probe = json.loads(figures.read_text())
    assert probe["rows"] == N and 0 < probe["hwm_before_merge_mb"] <= probe["vm_hwm_mb"]
    assert not (tmp_path / "out.parquet").exists()  # the probe cleans up after itself
    import pyarrow as pa
    import pyarrow.parquet as pq

    prompts = [f"p{i}" for i in range(3)]
    out = tmp_path / "checked.parquet"
    pq.write_table(pa.table({"position": [0, 1, 2], "prompt": prompts,
                             "completion": [f"Echo: {p}\nSystem: s" for p in prompts]}), out)
    assert common._check_parquet(out, 3)["checked"]
    pq.write_table(pa.table({"position": [0, 2, 1], "prompt": prompts,
                             "completion": [f"Echo: {p}\nSystem: s" for p in prompts]}), out)
    assert not common._check_parquet(out, 3)["checked"]


def test_runner_overhead_measures_every_job(capsys: pytest.CaptureFixture[str]) -> None:
    import runner_overhead

    assert runner_overhead.main(["--jobs", "300", "--concurrency", "4", "--repeats", "1"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert list(figures) == ["cpu_us_per_job_c4"] and figures["cpu_us_per_job_c4"] > 0
