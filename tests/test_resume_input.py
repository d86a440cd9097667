"""Resume never skips the wrong row: content ids, one output per input, the input note checked."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner, Result

from pipeline.cli import main
from pipeline.provenance import note_path

FAST = ["--no-progress", "--retry-delay", "0.01", "--retry-max-delay", "0.05",
        "--concurrency", "16"]


def write_prompts(path: Path, prompts: list[str], **extra: object) -> Path:
    path.write_text("".join(json.dumps({"prompt": p, **extra}) + "\n" for p in prompts))
    return path


def records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def run(*args: str) -> Result:
    return CliRunner().invoke(main, ["run", *args, *FAST], catch_exceptions=False)


def prompt_counts(path: Path) -> Counter[str]:
    return Counter(r["prompt"] for r in records(path))


def test_a_line_inserted_at_the_top_is_done_and_nothing_is_done_twice(
    tmp_path: Path, threaded_space
) -> None:
    source = write_prompts(tmp_path / "in.jsonl", [f"question {i}" for i in range(5)])
    out = tmp_path / "out.jsonl"
    assert run(str(source), "-o", str(out), "--url", threaded_space.url).exit_code == 0
    joins = threaded_space.space.stats.joins
    # Without an id column the row number was the id: this made "skipped 3"-style runs
    # that never sent the new prompt and did the last one again.
    write_prompts(source, ["a new first line"] + [f"question {i}" for i in range(5)])
    result = run(str(source), "-o", str(out), "--url", threaded_space.url)
    assert result.exit_code == 0, result.stderr
    assert prompt_counts(out) == Counter(["a new first line"] + [f"question {i}" for i in range(5)])
    assert threaded_space.space.stats.joins == joins + 1  # exactly one request: the new line
    assert "skipped     5" in result.stderr


def test_deleted_reordered_and_identical_lines_resume_by_content(
    tmp_path: Path, threaded_space
) -> None:
    source = write_prompts(tmp_path / "in.jsonl", ["a", "b", "c", "c"])
    out = tmp_path / "out.jsonl"
    assert run(str(source), "-o", str(out), "--url", threaded_space.url).exit_code == 0
    assert prompt_counts(out) == Counter({"a": 1, "b": 1, "c": 2})  # identical rows: both done
    joins = threaded_space.space.stats.joins
    # b deleted, the rest reordered, one more "c" and a new line: only those two are new.
    write_prompts(source, ["c", "new", "a", "c", "c"])
    result = run(str(source), "-o", str(out), "--url", threaded_space.url)
    assert result.exit_code == 0, result.stderr
    assert prompt_counts(out) == Counter({"a": 1, "b": 1, "c": 3, "new": 1})
    assert threaded_space.space.stats.joins == joins + 2
    assert len({r["id"] for r in records(out)}) == 6
    # And once more: nothing left.
    assert run(str(source), "-o", str(out), "--url", threaded_space.url).exit_code == 0
    assert threaded_space.space.stats.joins == joins + 2


def test_jsonl_and_parquet_of_one_folder_get_outputs_of_their_own(
    tmp_path: Path, threaded_space
) -> None:
    write_prompts(tmp_path / "data.jsonl", ["from jsonl 0", "from jsonl 1"])
    pq.write_table(pa.Table.from_pylist([{"prompt": f"from parquet {i}"} for i in range(3)]),
                   tmp_path / "data.parquet")
    for name in ("data.jsonl", "data.parquet"):
        result = run(str(tmp_path / name), "--url", threaded_space.url)
        assert result.exit_code == 0, result.stderr
    assert set(prompt_counts(tmp_path / "data.jsonl.completions.jsonl")) == {
        "from jsonl 0", "from jsonl 1"}
    assert set(prompt_counts(tmp_path / "data.parquet.completions.jsonl")) == {
        f"from parquet {i}" for i in range(3)}
    assert (tmp_path / "data.parquet.completions.errors.jsonl").read_text() == ""
    assert not (tmp_path / "data.completions.jsonl").exists()


def test_the_same_rows_in_jsonl_and_parquet_have_the_same_ids(
    tmp_path: Path, threaded_space
) -> None:
    rows = [{"prompt": f"q {i}", "system": "S"} for i in range(3)] + [{"prompt": "q 0"}]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    out = tmp_path / "out.jsonl"
    assert run(str(tmp_path / "a.jsonl"), "-o", str(out), "--url", threaded_space.url).exit_code == 0
    joins = threaded_space.space.stats.joins
    result = run(str(tmp_path / "a.parquet"), "-o", str(out), "--url", threaded_space.url)
    assert result.exit_code == 0, result.stderr
    assert threaded_space.space.stats.joins == joins  # every row already done
    assert "nothing to do: all 4 rows already done" in result.stderr


def test_the_old_default_output_is_not_silently_left_behind(tmp_path: Path) -> None:
    source = write_prompts(tmp_path / "data.jsonl", ["q"])
    (tmp_path / "data.completions.jsonl").write_text("")
    result = run(str(source), "--url", "http://127.0.0.1:9")
    assert result.exit_code == 2
    assert "data.completions.jsonl exists" in result.stderr
    assert "-o " + str(tmp_path / "data.completions.jsonl") in result.stderr
    assert not (tmp_path / "data.jsonl.completions.jsonl").exists()


# -- another input is refused -----------------------------------------------------------------


def test_another_input_with_the_same_ids_is_refused_and_resume_any_overrides(
    tmp_path: Path, threaded_space
) -> None:
    first = tmp_path / "monday.jsonl"
    first.write_text("".join(json.dumps({"id": i, "prompt": f"monday {i}"}) + "\n"
                             for i in range(4)))
    other = tmp_path / "tuesday.jsonl"
    other.write_text("".join(json.dumps({"id": i, "prompt": f"tuesday {i}"}) + "\n"
                             for i in range(6)))
    out = tmp_path / "out.jsonl"
    assert run(str(first), "-o", str(out), "--url", threaded_space.url).exit_code == 0
    before, joins = out.read_bytes(), threaded_space.space.stats.joins
    result = run(str(other), "-o", str(out), "--url", threaded_space.url)
    # Before: ids 0-3 were "done", so 4 of tuesday's rows were skipped, never sent.
    assert result.exit_code == 2, result.stderr
    assert str(first) in result.stderr and str(other) in result.stderr
    assert "--resume-any" in result.stderr and "Traceback" not in result.stderr
    assert out.read_bytes() == before and threaded_space.space.stats.joins == joins
    assert json.loads(Path(note_path(str(out))).read_text())["path"] == str(first)
    result = run(str(other), "-o", str(out), "--url", threaded_space.url, "--resume-any")
    assert result.exit_code == 0, result.stderr
    assert threaded_space.space.stats.joins == joins + 2  # ids 4 and 5: what --resume-any means
    assert json.loads(Path(note_path(str(out))).read_text())["path"] == str(other)
    # The note now names tuesday: resuming tuesday is the normal case.
    assert run(str(other), "-o", str(out), "--url", threaded_space.url).exit_code == 0


def test_appended_edited_and_many_inserted_rows_still_resume(
    tmp_path: Path, threaded_space
) -> None:
    source = tmp_path / "grows.jsonl"
    base = [{"id": f"r{i}", "prompt": f"row {i}"} for i in range(10)]
    source.write_text("".join(json.dumps(r) + "\n" for r in base))
    out = tmp_path / "out.jsonl"
    assert run(str(source), "-o", str(out), "--url", threaded_space.url).exit_code == 0
    joins = threaded_space.space.stats.joins
    # 150 new rows on top (past the 100 first rows the note keeps), 3 rows edited, 5 appended.
    edited = [dict(r, prompt=r["prompt"] + " (fixed)") if i < 3 else r for i, r in enumerate(base)]
    new = [{"id": f"n{i}", "prompt": f"new {i}"} for i in range(150)]
    tail = [{"id": f"t{i}", "prompt": f"tail {i}"} for i in range(5)]
    source.write_text("".join(json.dumps(r) + "\n" for r in new + edited + tail))
    result = run(str(source), "-o", str(out), "--url", threaded_space.url)
    assert result.exit_code == 0, result.stderr
    assert threaded_space.space.stats.joins == joins + 155  # edited rows keep their ids: done


def test_an_output_from_before_the_note_with_row_number_ids_is_refused(
    tmp_path: Path, threaded_space
) -> None:
    source = write_prompts(tmp_path / "in.jsonl", ["x", "y", "z"])
    out = tmp_path / "out.jsonl"
    # What an earlier version wrote for an input without ids: ids 0, 1, 2, and no note.
    out.write_text("".join(json.dumps({"id": str(i), "sample": 0, "prompt": p}) + "\n"
                           for i, p in enumerate(["x", "y", "z"])))
    result = run(str(source), "-o", str(out), "--url", threaded_space.url)
    assert result.exit_code == 2
    assert "earlier qwen-batch" in result.stderr and threaded_space.space.stats.joins == 0
    assert not Path(note_path(str(out))).exists()
    result = run(str(source), "-o", str(out), "--url", threaded_space.url, "--resume-any")
    assert result.exit_code == 0 and threaded_space.space.stats.joins == 3


def test_an_output_from_before_the_note_with_real_ids_resumes(
    tmp_path: Path, threaded_space
) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"k{i}", "prompt": f"p {i}"}) + "\n"
                              for i in range(4)))
    out = tmp_path / "out.jsonl"
    out.write_text(json.dumps({"id": "k1", "sample": 0, "prompt": "p 1"}) + "\n")
    result = run(str(source), "-o", str(out), "--url", threaded_space.url)
    assert result.exit_code == 0, result.stderr
    assert threaded_space.space.stats.joins == 3
    assert Path(note_path(str(out))).exists()


def test_stdin_resumes_against_its_first_rows(tmp_path: Path, threaded_space) -> None:
    out = tmp_path / "out.jsonl"
    lines = "".join(json.dumps({"prompt": f"s {i}"}) + "\n" for i in range(4))
    runner = CliRunner()
    args = ["run", "-", "-o", str(out), "--url", threaded_space.url, *FAST]
    assert runner.invoke(main, args, input=lines).exit_code == 0
    result = runner.invoke(main, args, input=json.dumps({"prompt": "more"}) + "\n" + lines)
    assert result.exit_code == 0, result.stderr
    assert threaded_space.space.stats.joins == 5
    other = "".join(json.dumps({"prompt": f"other {i}"}) + "\n" for i in range(4))
    assert runner.invoke(main, args, input=other).exit_code == 2
    assert threaded_space.space.stats.joins == 5


def test_rows_per_file_output_keeps_its_note_beside_the_directory(
    tmp_path: Path, threaded_space
) -> None:
    source = write_prompts(tmp_path / "in.jsonl", [f"q {i}" for i in range(5)])
    out = tmp_path / "parts"
    args = ["-o", str(out), "--rows-per-file", "2", "--url", threaded_space.url]
    assert run(str(source), *args).exit_code == 0
    assert (tmp_path / "parts.input.json").exists() and not (out / "parts.input.json").exists()
    other = write_prompts(tmp_path / "other.jsonl", [f"z {i}" for i in range(5)])
    assert run(str(other), *args).exit_code == 2
    assert run(str(source), *args).exit_code == 0
