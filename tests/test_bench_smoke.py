"""Smoke test of the benchmark suite (bench/): tiny runs that prove the scripts still work.

Not a benchmark: 50 prompts against a fake Space at 0.05 s. It checks that the
reference client writes correct answers, that the process measurement reports
sane figures, and that the CI regression check passes a lenient threshold and
FAILS (exit 1) an impossible one.
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


def test_regression_check_passes_and_can_fail(tmp_path: Path) -> None:
    args = ["--n", str(N), "--latency", "0.05", "--chunks", "4", "--reps", "1",
            "--workdir", str(tmp_path)]
    assert check_regression.main([*args, "--threshold", "0", "--json",
                                  str(tmp_path / "ok.json")]) == 0
    figures = json.loads((tmp_path / "ok.json").read_text())
    assert figures["clean"] and figures["wall_ratio_ref_over_ours"] > 0
    # Ours can never be 100x faster than the reference: this threshold must fail.
    assert check_regression.main([*args, "--threshold", "100"]) == 1


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
