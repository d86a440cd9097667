"""`qwen-batch` through Click's runner against the fake Space on loopback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import click
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from pipeline.cli import main
from pipeline.errors import CHECK_HINT, remedy
from pipeline.fake_space import FAULT_NAMES, fake_answer
from pipeline.prompts import DEFAULT_SYSTEM_PROMPT
from pipeline.rowspec import content_id

FAST = ["--no-progress", "--retry-delay", "0.01", "--retry-max-delay", "0.05"]
SECRET_TOKEN = "hf_SeCrEtToKeN1234567890"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def prompts(n: int, prefix: str = "p") -> list[dict]:
    return [{"id": f"{prefix}{i}", "prompt": f"question {i}: say no no no, café"} for i in range(n)]


def invoke(*args: str, env: dict | None = None, input: str | None = None):
    runner = CliRunner()
    return runner.invoke(main, list(args), env=env, input=input, catch_exceptions=False)


def by_id(records: list[dict]) -> dict[str, dict]:
    assert len({r["id"] for r in records}) == len(records), "duplicate ids in output"
    return {r["id"]: r for r in records}


@pytest.mark.parametrize("command", [[], ["run"], ["check"], ["demo"], ["fake-space"], ["sort"],
                                     ["report"]])
def test_every_command_has_help(command: list[str]) -> None:
    result = invoke(*command, "--help")
    assert result.exit_code == 0
    assert "Usage:" in result.output


def test_every_command_is_listed_in_a_section() -> None:
    text = invoke("--help").output
    assert "Batch jobs:" in text and "Endpoints:" in text and "Trying it out (no network):" in text
    listed = {name for section in main.list_sections(click.Context(main)) for name in section.commands}
    assert listed == set(main.commands)


@pytest.mark.parametrize("name", [None, *sorted(main.commands)])
def test_every_option_has_a_help_line(name: str | None) -> None:
    command = main if name is None else main.commands[name]
    missing = [p.opts[0] for p in command.params
               if isinstance(p, click.Option) and not (p.help or "").strip()]
    assert missing == [], f"options of {name or 'qwen-batch'} without help: {missing}"


@pytest.mark.parametrize("name", sorted(main.commands))
def test_options_are_grouped_by_purpose(name: str) -> None:
    command = main.commands[name]
    grouped = [o.name for group in getattr(command, "option_groups", []) for o in group.options]
    options = [p.name for p in command.params if isinstance(p, click.Option) and p.name != "help"]
    assert sorted(grouped) == sorted(options), f"{name}: options outside a group"
    assert len(grouped) == len(set(grouped))


def test_run_help_has_the_groups_in_order() -> None:
    text = invoke("run", "--help").output
    titles = ["Input:", "Prompt building:", "Output:", "Endpoint:", "Retries and timeouts:",
              "Pacing:", "Run control:", "Engine:"]
    at = [text.index(f"\n{t}\n") for t in titles]
    assert at == sorted(at)
    assert text.index("--prompt-field") > text.index("Prompt building:") > text.index("--csv-infer-types")


def test_fake_space_help_lists_every_fault() -> None:
    text = invoke("fake-space", "--help").output
    for fault in sorted(FAULT_NAMES):
        assert re.search(rf"^ +{fault} +\S", text, re.MULTILINE), fault


def test_run_help_shows_an_example_and_exit_codes() -> None:
    text = invoke("run", "--help").output
    assert "Example:" in text and "qwen-batch run prompts.jsonl" in text
    assert "130 interrupted" in text
    assert "QWEN_BATCH_CONCURRENCY" in text


def test_jsonl_in_jsonl_out_beside_the_input(tmp_path: Path, threaded_space) -> None:
    source = write_jsonl(tmp_path / "job.jsonl", [*prompts(6), {"prompt": "no id here"}])
    result = invoke("run", str(source), "--url", threaded_space.url, *FAST)
    assert result.exit_code == 0, result.stderr
    out = tmp_path / "job.jsonl.completions.jsonl"
    records = by_id(read_jsonl(out))
    derived = content_id("no id here", None)  # the request stands in for a missing id
    assert set(records) == {f"p{i}" for i in range(6)} | {derived}
    first = records["p0"]
    assert first["completion"] == fake_answer(first["prompt"], DEFAULT_SYSTEM_PROMPT)
    for key in ("id", "prompt", "system", "completion", "model", "attempts", "session_hash",
                "event_id", "started_at", "finished_at", "queue_ms", "ttft_ms", "duration_ms",
                "chunks"):
        assert key in first, key
    assert first["model"] == "qwen-qwen2-72b-instruct"
    assert first["started_at"].endswith("Z") and first["finished_at"] >= first["started_at"]
    assert first["chunks"] == 4 and first["attempts"] == 1
    assert "qwen-batch summary" in result.stderr
    assert result.stdout == ""  # data goes to a file, reports to stderr


def test_parquet_in_parquet_out_and_both_crossings(tmp_path: Path, threaded_space) -> None:
    rows = prompts(5)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    write_jsonl(tmp_path / "in.jsonl", rows)
    for source, target in [("in.parquet", "a.parquet"), ("in.jsonl", "b.parquet"),
                           ("in.parquet", "c.jsonl")]:
        result = invoke("run", str(tmp_path / source), "-o", str(tmp_path / target),
                        "--url", threaded_space.url, *FAST)
        assert result.exit_code == 0, result.stderr
        if target.endswith(".parquet"):
            records = pq.read_table(tmp_path / target).to_pylist()
            assert not (tmp_path / (target + ".journal.jsonl")).exists()
        else:
            records = read_jsonl(tmp_path / target)
        got = by_id(records)
        assert set(got) == {r["id"] for r in rows}
        assert all(got[r["id"]]["completion"] == fake_answer(r["prompt"], DEFAULT_SYSTEM_PROMPT)
                   for r in rows)


def test_stdin_to_stdout(tmp_path: Path, monkeypatch, threaded_space) -> None:
    monkeypatch.chdir(tmp_path)
    lines = "".join(json.dumps(r) + "\n" for r in prompts(3))
    result = invoke("run", "-", "-o", "-", "--errors", "pipe.errors.jsonl",
                    "--url", threaded_space.url, *FAST, input=lines)
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert sorted(r["id"] for r in records) == ["p0", "p1", "p2"]
    assert "qwen-batch summary" in result.stderr and "summary" not in result.stdout
    assert (tmp_path / "pipe.errors.jsonl").read_text() == ""


def test_template_keep_system_and_messages(tmp_path: Path, threaded_space) -> None:
    source = write_jsonl(tmp_path / "t.jsonl", [
        {"id": "a", "text": "cats", "lang": "fr"},
        {"id": "b", "text": "dogs", "lang": "de", "system": "Row system."},
    ])
    result = invoke("run", str(source), "--url", threaded_space.url, *FAST,
                    "--template", "Summarise in {lang}: {text}", "--system", "Default system.",
                    "--keep", "lang", "--keep", "text")
    assert result.exit_code == 0, result.stderr
    got = by_id(read_jsonl(tmp_path / "t.jsonl.completions.jsonl"))
    assert got["a"]["prompt"] == "Summarise in fr: cats"
    assert got["a"]["completion"] == fake_answer("Summarise in fr: cats", "Default system.")
    assert got["b"]["completion"] == fake_answer("Summarise in de: dogs", "Row system.")
    assert got["a"]["lang"] == "fr" and got["b"]["text"] == "dogs"

    chat = write_jsonl(tmp_path / "chat.jsonl", [{"id": "c", "messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"},
        {"role": "user", "content": "times 3?"}]}])
    result = invoke("run", str(chat), "--url", threaded_space.url, *FAST)
    assert result.exit_code == 0, result.stderr
    record = read_jsonl(tmp_path / "chat.jsonl.completions.jsonl")[0]
    assert record["completion"] == fake_answer(
        "User: 2+2?\nAssistant: 4\nUser: times 3?\nAssistant:", "Be brief.")


def test_custom_field_names(tmp_path: Path, threaded_space) -> None:
    source = write_jsonl(tmp_path / "f.jsonl", [{"key": "k1", "q": "hello", "sys": "S"}])
    result = invoke("run", str(source), "--url", threaded_space.url, *FAST, "--id-field", "key",
                    "--prompt-field", "q", "--system-field", "sys")
    assert result.exit_code == 0, result.stderr
    record = read_jsonl(tmp_path / "f.jsonl.completions.jsonl")[0]
    assert record["id"] == "k1" and record["completion"] == fake_answer("hello", "S")


def test_samples_and_limit_and_resume(tmp_path: Path, threaded_space) -> None:
    source = write_jsonl(tmp_path / "s.jsonl", prompts(5))
    out = tmp_path / "s.out.jsonl"
    args = ["run", str(source), "-o", str(out), "--url", threaded_space.url, *FAST, "--samples", "2"]
    result = invoke(*args, "--limit", "2")
    assert result.exit_code == 0, result.stderr
    records = read_jsonl(out)
    assert sorted((r["id"], r["sample"]) for r in records) == [
        ("p0", 0), ("p0", 1), ("p1", 0), ("p1", 1)]
    joins_before = threaded_space.space.stats.joins
    result = invoke(*args)  # resume: only the 3 remaining rows, twice each
    assert result.exit_code == 0, result.stderr
    assert threaded_space.space.stats.joins - joins_before == 6
    keys = [(r["id"], r["sample"]) for r in read_jsonl(out)]
    assert len(keys) == len(set(keys)) == 10
    assert "skipped     2" in result.stderr
    result = invoke(*args)  # nothing left
    assert result.exit_code == 0 and threaded_space.space.stats.joins - joins_before == 6
    result = invoke(*args, "--overwrite", "--limit", "1")
    assert result.exit_code == 0
    assert len(read_jsonl(out)) == 2


def test_bad_rows_become_error_records_and_the_batch_goes_on(tmp_path: Path, threaded_space) -> None:
    messy = Path(__file__).parents[1] / "data" / "samples" / "messy.jsonl"
    out = tmp_path / "messy.out.jsonl"
    result = invoke("run", str(messy), "-o", str(out), "--url", threaded_space.url, *FAST)
    assert result.exit_code == 3, result.stderr
    assert sorted(r["id"] for r in read_jsonl(out)) == ["ok-1", "ok-2"]
    errors = read_jsonl(tmp_path / "messy.out.errors.jsonl")
    assert all(e["error_type"] == "input" for e in errors)
    text = "\n".join(e["error"] for e in errors)
    assert "messy.jsonl:2" in text  # bad JSON, with its line
    assert "messy.jsonl:3" in text and "object" in text
    assert "'prompt'" in text  # missing and wrong-type prompt name the field
    assert "duplicate id 'ok-1'" in text
    assert len(errors) == 5
    # A second run re-reports the same bad rows once each, not twice.
    result = invoke("run", str(messy), "-o", str(out), "--url", threaded_space.url, *FAST)
    assert result.exit_code == 3
    assert len(read_jsonl(tmp_path / "messy.out.errors.jsonl")) == 5


@pytest.mark.parametrize("fault", ["queue_full", "cut", "app_error", "unexpected_error",
                                   "bad_json", "stall"])
def test_every_fault_ends_exact_after_retries(tmp_path: Path, threaded_space, fault: str) -> None:
    threaded_space.space.config.heartbeat_interval = 0.1
    rows = [{"id": f"r{i}", "prompt": f"[fault:{fault}:2] row {i}"} for i in range(3)]
    source = write_jsonl(tmp_path / "f.jsonl", rows + prompts(3))
    result = invoke("run", str(source), "--url", threaded_space.url, *FAST,
                    "--idle-timeout", "0.5", "--max-attempts", "3")
    assert result.exit_code == 0, result.stderr
    got = by_id(read_jsonl(tmp_path / "f.jsonl.completions.jsonl"))
    assert len(got) == 6
    for row in rows:
        assert got[row["id"]]["completion"] == fake_answer(row["prompt"], DEFAULT_SYSTEM_PROMPT)
        assert got[row["id"]]["attempts"] == 3


def test_exhausted_attempts_fail_the_row_with_exit_3(tmp_path: Path, threaded_space) -> None:
    source = write_jsonl(tmp_path / "x.jsonl", [{"id": "bad", "prompt": "[fault:app_error:9] x"},
                                                *prompts(2)])
    result = invoke("run", str(source), "--url", threaded_space.url, *FAST, "--max-attempts", "2",
                    "--errors", str(tmp_path / "custom-errors.jsonl"))
    assert result.exit_code == 3
    (error,) = read_jsonl(tmp_path / "custom-errors.jsonl")
    assert error["id"] == "bad" and error["error_type"] == "app_error" and error["attempts"] == 2
    assert error["position"] == 0 and error["duration_ms"] is not None
    # Resume retries the failed row; once the Space behaves, it succeeds and leaves the errors file.
    result = invoke("run", str(source), "--url", threaded_space.url, *FAST, "--max-attempts", "9",
                    "--errors", str(tmp_path / "custom-errors.jsonl"))
    assert result.exit_code == 0, result.stderr
    assert read_jsonl(tmp_path / "custom-errors.jsonl") == []
    assert len(read_jsonl(tmp_path / "x.jsonl.completions.jsonl")) == 3


def test_unreachable_endpoint_exits_4_early(tmp_path: Path) -> None:
    source = write_jsonl(tmp_path / "u.jsonl", prompts(50))
    result = invoke("run", str(source), "--url", "http://127.0.0.1:9", *FAST,
                    "--max-attempts", "1", "--max-consecutive-failures", "5", "--concurrency", "1",
                    "--max-outage", "1")
    assert result.exit_code == 4, result.stderr
    assert "STOPPED EARLY" in result.stderr
    assert len(read_jsonl(tmp_path / "u.jsonl.completions.errors.jsonl")) < 50


def test_down_space_exits_4(tmp_path: Path, threaded_space) -> None:
    threaded_space.space.config.down = True
    source = write_jsonl(tmp_path / "d.jsonl", prompts(40))
    result = invoke("run", str(source), "--url", threaded_space.url, *FAST, "--max-attempts", "2",
                    "--max-outage", "1.5")
    assert result.exit_code == 4
    assert "no endpoint has worked" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["missing.jsonl"], "missing.jsonl"),
        (["data.txt"], "suffix"),
        (["ok.jsonl", "--template", "{a.b}"], "template"),
        (["ok.jsonl", "--model", "gpt-4"], "gpt-4"),
        (["ok.jsonl", "--concurrency", "0"], "concurrency"),
        (["ok.jsonl", "--config", "bad.toml"], "bad.toml"),
    ],
)
def test_usage_and_input_file_errors_exit_2(tmp_path: Path, monkeypatch, args, message) -> None:
    monkeypatch.chdir(tmp_path)
    write_jsonl(tmp_path / "ok.jsonl", prompts(1))
    (tmp_path / "data.txt").write_text("x")
    (tmp_path / "bad.toml").write_text("concurrency = [unclosed")
    result = invoke("run", *args, "--url", "http://127.0.0.1:9", "--no-progress")
    assert result.exit_code == 2
    assert message in result.output + result.stderr


def test_input_format_can_be_forced(tmp_path: Path, threaded_space) -> None:
    source = tmp_path / "prompts.txt"
    write_jsonl(source, prompts(2))
    result = invoke("run", str(source), "--input-format", "jsonl", "-o", str(tmp_path / "o.jsonl"),
                    "--url", threaded_space.url, *FAST)
    assert result.exit_code == 0, result.stderr
    assert len(read_jsonl(tmp_path / "o.jsonl")) == 2


def test_config_precedence_cli_over_env_over_file_over_default(tmp_path: Path, threaded_space) -> None:
    source = write_jsonl(tmp_path / "c.jsonl", prompts(6))
    config = tmp_path / "job.toml"
    config.write_text(f'url = "{threaded_space.url}"\nno-progress = true\n[run]\nlimit = 4\n'
                      'retry_delay = 0.01\n')

    def done_after(*extra: str, env: dict | None = None) -> int:
        out = tmp_path / "c.out.jsonl"
        result = invoke("run", str(source), "-o", str(out), "--config", str(config),
                        "--overwrite", *extra, env=env)
        assert result.exit_code == 0, result.stderr
        return len(read_jsonl(out))

    assert done_after() == 4  # file
    assert done_after(env={"QWEN_BATCH_LIMIT": "3"}) == 3  # env over file
    assert done_after("--limit", "2", env={"QWEN_BATCH_LIMIT": "3"}) == 2  # CLI over env
    config.write_text(f'url = "{threaded_space.url}"\n')
    assert done_after("--no-progress") == 6  # default: no limit


def test_unknown_config_key_is_a_usage_error(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("concurency = 3\n")
    write_jsonl(tmp_path / "in.jsonl", prompts(1))
    result = invoke("run", str(tmp_path / "in.jsonl"), "--config", str(config))
    assert result.exit_code == 2
    assert "concurency" in result.stderr


def test_default_config_file_is_valid_and_documents_every_option(tmp_path: Path) -> None:
    default = Path(__file__).parents[1] / "configs" / "default.toml"
    text = default.read_text()
    long_names = [opt[2:] for p in main.commands["run"].params if p.name not in ("config",)
                  for opt in p.opts if opt.startswith("--")]
    for name in long_names:
        assert f"# {name} = " in text, name
    write_jsonl(tmp_path / "in.jsonl", prompts(1))
    result = invoke("run", str(tmp_path / "in.jsonl"), "--config", str(default), "--limit", "0")
    assert result.exit_code == 0, result.stderr


def test_default_config_file_follows_the_help_groups() -> None:
    text = (Path(__file__).parents[1] / "configs" / "default.toml").read_text()
    parts = re.split(r"^# --- ([a-z ]+?)(?: \(.*\))? -+$", text, flags=re.MULTILINE)
    sections = dict(zip(parts[1::2], parts[2::2], strict=True))
    groups = main.commands["run"].option_groups
    assert list(sections) == [g.title.lower() for g in groups]
    for group in groups:
        for option in group.options:
            name = next(o for o in option.opts if o.startswith("--"))[2:]
            if name != "config":
                assert f"# {name} = " in sections[group.title.lower()], (group.title, name)


def test_secrets_never_reach_output_errors_summary_or_logs(tmp_path: Path, threaded_space) -> None:
    source = write_jsonl(tmp_path / "s.jsonl", [*prompts(2), {"id": "f", "prompt": "[fault:app_error:9] x"}])
    summary = tmp_path / "summary.json"
    result = invoke("-vv", "run", str(source), "--url", threaded_space.url, *FAST,
                    "--max-attempts", "2", "--summary", str(summary),
                    env={"HF_TOKEN": SECRET_TOKEN})
    assert result.exit_code == 3
    assert json.loads(summary.read_text())["succeeded"] == 2
    unreachable_proxy = "http://user:pr0xyPa55word@127.0.0.1:9"
    result2 = invoke("-vv", "run", str(source), "-o", str(tmp_path / "p.jsonl"), "--url",
                     threaded_space.url, *FAST, "--max-attempts", "1", "--proxy", unreachable_proxy,
                     "--hf-token", SECRET_TOKEN, "--connect-grace", "0.5")
    assert result2.exit_code == 4  # the proxy was never reached: stopped, no row failed
    everything = result.output + result.stderr + result2.output + result2.stderr + "".join(
        p.read_text(errors="replace") for p in tmp_path.iterdir() if p.is_file())
    assert SECRET_TOKEN not in everything
    assert "pr0xyPa55word" not in everything
    assert "cannot reach the proxy" in result2.stderr
    assert (tmp_path / "p.errors.jsonl").read_text() == ""


def test_summary_file_has_counts_and_percentiles(tmp_path: Path, threaded_space) -> None:
    source = write_jsonl(tmp_path / "m.jsonl", prompts(8))
    summary = tmp_path / "s.json"
    result = invoke("run", str(source), "--url", threaded_space.url, *FAST, "--summary", str(summary),
                    "--rate", "50", "--timeout", "30", "--concurrency", "3")
    assert result.exit_code == 0
    data = json.loads(summary.read_text())
    assert data["succeeded"] == 8 and data["failed"] == 0
    assert data["latency_ms"]["p50"] > 0 and data["ttft_ms"]["p95"] >= data["ttft_ms"]["p50"]
    assert data["throughput_per_s"] > 0
    assert "p50" in result.stderr and "p95" in result.stderr


def test_a_fixed_bad_line_leaves_the_errors_file(tmp_path: Path, threaded_space) -> None:
    source = tmp_path / "fix.jsonl"
    source.write_text('{"id": "a", "prompt": "fine"}\n{"prompt": broken\n{"id": "c", "prompt": 3}\n')
    args = ["run", str(source), "--url", threaded_space.url, *FAST]
    assert invoke(*args).exit_code == 3
    errors_file = tmp_path / "fix.jsonl.completions.errors.jsonl"
    assert len(read_jsonl(errors_file)) == 2
    source.write_text('{"id": "a", "prompt": "fine"}\n{"prompt": "mended"}\n{"id": "c", "prompt": 3}\n')
    assert invoke(*args).exit_code == 3
    (left,) = read_jsonl(errors_file)  # line 2 now works; line 3 is still bad
    assert left["id"] == "c" and "expected a string" in left["error"]
    assert sorted(r["id"] for r in read_jsonl(tmp_path / "fix.jsonl.completions.jsonl")) == \
        sorted(["a", content_id("mended", None)])


def test_a_sleeping_space_is_waited_for(tmp_path: Path, threaded_space) -> None:
    threaded_space.space.config.wake_after = 1.0
    threaded_space.space.config.hf_state = "sleeping"
    source = write_jsonl(tmp_path / "w.jsonl", prompts(6))
    result = invoke("run", str(source), "--url", threaded_space.url, *FAST, "--max-outage", "20")
    assert result.exit_code == 0, result.stderr
    assert "the Space is sleeping" in result.stderr  # told, not silent
    assert len(read_jsonl(tmp_path / "w.jsonl.completions.jsonl")) == 6


@pytest.mark.parametrize("state", ["gone", "error"])
def test_a_gone_or_broken_space_stops_at_once_with_exit_4(tmp_path: Path, threaded_space, state) -> None:
    threaded_space.space.config.hf_state = state
    source = write_jsonl(tmp_path / "g.jsonl", prompts(30))
    result = invoke("run", str(source), "--url", threaded_space.url, *FAST, "--max-outage", "60")
    assert result.exit_code == 4, result.stderr
    assert "gone" in result.stderr or state in result.stderr
    assert threaded_space.space.stats.joins == 0


def test_check_reports_a_working_endpoint(threaded_space) -> None:
    result = invoke("check", "--url", threaded_space.url)
    assert result.exit_code == 0, result.output
    assert "gradio      4.44.1" in result.output and "sse_v3" in result.output
    assert "model_chat  found, fn_index 0, tuples history" in result.output
    assert "probe" in result.output and " ms" in result.output


@pytest.mark.parametrize("setup", ["down", "gone", "unreachable"])
def test_check_fails_with_exit_4(threaded_space, setup: str) -> None:
    url = threaded_space.url
    if setup == "down":
        threaded_space.space.config.down = True
    elif setup == "gone":
        threaded_space.space.config.hf_state = "gone"
    else:
        url = "http://127.0.0.1:9"
    result = invoke("check", "--url", url, "--timeout", "5")
    assert result.exit_code == 4, result.output
    assert result.stdout.startswith("FAIL") and "error" in result.stdout
    # ... and what to do about it: the remedy of the error's type, as in the errors file,
    # less the advice to run check.
    error_type = result.stdout.split("  error       ", 1)[1].split(":", 1)[0]
    fix = remedy(error_type).replace(CHECK_HINT, "")
    assert f"  fix         {fix}\n" in result.stdout + "\n"
    assert "qwen-batch check" not in result.stdout


def test_response_and_record_size_caps(tmp_path: Path, threaded_space) -> None:
    long_prompt = "x" * 400
    source = write_jsonl(tmp_path / "caps.jsonl", [
        {"id": "long-answer", "prompt": long_prompt}, {"id": "short", "prompt": "hi"},
        {"id": "huge-row", "prompt": "y" * 5000}])
    result = invoke("run", str(source), "--url", threaded_space.url, *FAST,
                    "--max-response-chars", "300", "--max-record-bytes", "2000")
    assert result.exit_code == 3
    errors = {e["id"] or e["position"]: e for e in read_jsonl(tmp_path / "caps.jsonl.completions.errors.jsonl")}
    assert errors["long-answer"]["error_type"] == "response_too_large"
    assert errors["long-answer"]["attempts"] == 1  # not retried: it would only grow again
    assert "300 characters" in errors["long-answer"]["error"]
    huge = next(e for e in errors.values() if e["position"] == 2)
    assert huge["error_type"] == "input" and "2000" in huge["error"]
    assert [r["id"] for r in read_jsonl(tmp_path / "caps.jsonl.completions.jsonl")] == ["short"]


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_rows_per_file_writes_bounded_parts_and_resumes_into_them(
        tmp_path: Path, threaded_space, fmt: str) -> None:
    source = write_jsonl(tmp_path / "big.jsonl", prompts(11))
    out = tmp_path / "parts"
    args = ["run", str(source), "-o", f"{out}/", "--output-format", fmt, "--rows-per-file", "4",
            "--url", threaded_space.url, *FAST]
    result = invoke(*args, "--limit", "6")
    assert result.exit_code == 0, result.stderr
    joins_before = threaded_space.space.stats.joins
    result = invoke(*args)  # resume: the 5 remaining rows fill part 1, then part 2
    assert result.exit_code == 0, result.stderr
    assert threaded_space.space.stats.joins - joins_before == 5
    parts = sorted(out.iterdir())
    assert [p.name for p in parts] == [f"part-00000{i}.{fmt}" for i in range(3)]
    if fmt == "jsonl":
        rows = [read_jsonl(p) for p in parts]
    else:
        import pyarrow.parquet as pq

        rows = [pq.read_table(p).to_pylist() for p in parts]
    assert [len(r) for r in rows] == [4, 4, 3]
    assert sorted(by_id([r for part in rows for r in part])) == sorted(f"p{i}" for i in range(11))
    assert not (tmp_path / "parts.lock").exists() and not (out / ".lock").exists()
    (out / "notes.txt").write_text("mine")
    result = invoke(*args, "--overwrite", "--limit", "1")
    assert result.exit_code == 0, result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt", f"part-000000.{fmt}"]
