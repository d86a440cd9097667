"""Every error record says where (``location``) and what to do (a remedy per ``error_type``)."""

from __future__ import annotations

import inspect
import json
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import errors
from pipeline.errors import REMEDY_SEPARATOR, error_types, explain, remedy
from pipeline.jobs import plan_rows
from pipeline.models import Failure, PromptRow
from pipeline.readers import read_records
from pipeline.records import failure_record
from pipeline.rowspec import RowSpec

README = Path(__file__).resolve().parents[1] / "README.md"
TABLE_START = "<!-- error types: generated from pipeline/errors.py, see tests/test_remedies.py -->"
TABLE_END = "<!-- end of error types -->"


def meaning(cls: type) -> str:
    """The first paragraph of a class's docstring, on one line."""
    first = inspect.cleandoc(cls.__doc__ or "").split("\n\n")[0]
    return " ".join(first.split())


def remedy_table() -> str:
    """The README's table of error types, as the code defines them."""
    lines = ["| `error_type` | what happened | what to do |", "|---|---|---|"]
    for error_type, cls in error_types().items():
        lines.append(f"| `{error_type}` | {meaning(cls)} | {cls.remedy} |")  # type: ignore[attr-defined]
    return "\n".join(lines)


def test_error_types_cover_the_tree_and_the_records() -> None:
    found = error_types()
    assert {"input", "internal", "queue_full", "connect", "tls", "stream_ended", "idle_timeout",
            "space_unavailable", "discovery"} <= set(found)
    assert found["queue_full"] is errors.QueueFullError
    # Every class of the module that names an error_type is found.
    named = {vars(c)["error_type"] for c in vars(errors).values()
             if isinstance(c, type) and "error_type" in vars(c)}
    assert named == set(found)


@pytest.mark.parametrize("error_type", list(error_types()))
def test_every_error_type_has_its_own_one_line_remedy(error_type: str) -> None:
    cls = error_types()[error_type]
    text = vars(cls).get("remedy")  # its own: a subclass may not inherit its parent's advice
    assert isinstance(text, str) and text.strip(), f"{cls.__name__} has no remedy"
    assert "\n" not in text and "|" not in text and len(text) <= 130, text
    assert meaning(cls) and "|" not in meaning(cls), f"{cls.__name__} needs a docstring"


def test_the_readme_lists_every_error_type_with_the_same_remedy() -> None:
    text = README.read_text(encoding="utf-8")
    assert TABLE_START in text and TABLE_END in text
    table = text.split(TABLE_START, 1)[1].split(TABLE_END, 1)[0].strip()
    expected = remedy_table()
    assert table == expected, "README.md's table of error types is stale; paste this:\n" + expected


def test_explain_appends_the_remedy_once() -> None:
    said = explain("queue_full", "HTTP 503: Queue is full")
    assert said == "HTTP 503: Queue is full" + REMEDY_SEPARATOR + errors.QueueFullError.remedy
    assert explain("queue_full", said) == said
    assert explain("no_such_type", "odd").endswith(remedy("request"))


def test_a_failure_record_says_what_happened_and_what_to_do() -> None:
    row = PromptRow(id="r1", position=3, prompt="Hi", location="in.jsonl:4")
    record = failure_record(Failure("r1", 3, "connect", "cannot connect: refused", 4, row=row))
    assert record["error"] == ("cannot connect: refused — check --url, --proxy and the network "
                               "(qwen-batch check --url URL), then run again")
    assert failure_record(Failure("r1", 3, "internal", "KeyError: 'x'", 1, row=row))[
        "error"].endswith("report it with the -vv log")


def test_every_kind_of_input_error_record_has_a_location(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "a", "prompt": "ok"}\n'
                      'not json\n'
                      '{"id": "b", "prompt": 7}\n'
                      '{"id": "a", "prompt": "again"}\n'
                      '{"id": "c"}\n', encoding="utf-8")
    records = read_records(str(source), "jsonl")
    failures = [item for item in plan_rows(records, RowSpec(), done=set())
                if isinstance(item, Failure)]
    made = [failure_record(f) for f in failures]
    assert [r["location"] for r in made] == [f"{source}:{n}" for n in (2, 3, 4, 5)]
    assert all(r["error_type"] == "input" and r["error"].endswith(errors.InputError.remedy)
               for r in made)


def test_parquet_input_error_records_name_the_row(tmp_path: Path) -> None:
    source = tmp_path / "in.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "prompt": ["ok", None]}), source)
    failures = [item for item in plan_rows(read_records(str(source), "parquet"), RowSpec(),
                                           done=set()) if isinstance(item, Failure)]
    assert [failure_record(f)["location"] for f in failures] == [f"{source} row 1"]


def test_a_run_writes_locations_and_remedies(tmp_path: Path, threaded_space) -> None:
    from click.testing import CliRunner

    from pipeline.cli import main

    source = tmp_path / "in.jsonl"
    source.write_text('{"id": "bad", "prompt": null}\n'
                      '{"id": "f", "prompt": "[fault:queue_full:9] x"}\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["run", str(source), "--url", threaded_space.url,
                                       "--no-progress", "--max-attempts", "1",
                                       "--fixed-concurrency"], catch_exceptions=False)
    assert result.exit_code == 3, result.stderr
    errors_file = tmp_path / "in.jsonl.completions.errors.jsonl"
    by_id = {r["id"]: r for r in map(json.loads, errors_file.read_text().splitlines())}
    assert by_id["bad"]["location"] == f"{source}:1"
    assert by_id["f"]["location"] == f"{source}:2"
    assert by_id["f"]["error_type"] == "queue_full"
    assert re.search(r"503.* — the Space's queue stayed full: run again later",
                     by_id["f"]["error"]), by_id["f"]["error"]
