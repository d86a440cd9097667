"""A wrong column is one usage error before any request, found from the schema or the first rows."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner, Result

import pipeline.columns as columns
from pipeline.cli import main
from pipeline.columns import HEAD_ROWS, check_columns, take_head
from pipeline.errors import ConfigError, InputError
from pipeline.models import RawRecord
from pipeline.rowspec import RowSpec

DEAD = "http://127.0.0.1:9"  # never reached: every run here stops before any request


def run(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(main, ["run", *args, "--no-progress"], env=env,
                              catch_exceptions=False)


@pytest.fixture
def rows_read(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """How many records the run read from its input (one counter per open)."""
    counts: list[int] = []
    real = columns.read_records

    def counting(*args: Any, **kwargs: Any) -> Iterator[Any]:
        records = real(*args, **kwargs)
        counts.append(0)

        def walk() -> Iterator[Any]:
            for item in records:
                counts[-1] += 1
                yield item

        return walk()

    monkeypatch.setattr(columns, "read_records", counting)
    return counts


def assert_nothing_written(folder: Path, *keep: str) -> None:
    assert sorted(p.name for p in folder.iterdir()) == sorted(keep)


# -- the check itself -------------------------------------------------------------------------


def test_a_schema_without_the_prompt_names_the_field_and_the_columns() -> None:
    with pytest.raises(ConfigError) as info:
        check_columns(["text", "title"], RowSpec(), source="in.parquet")
    message = str(info.value)
    assert message.startswith("in.parquet: no column 'prompt' (--prompt-field) or 'messages'")
    assert "Its columns: text, title." in message


def test_messages_or_a_template_stand_in_for_the_prompt() -> None:
    check_columns(["messages"], RowSpec(), source="x")
    check_columns(["text"], RowSpec(template="Summarise {text}"), source="x")
    with pytest.raises(ConfigError, match=r"'lang' \(used by --template\)"):
        check_columns(["text", "prompt"], RowSpec(template="{text} in {lang}"), source="x")


def test_every_missing_field_in_one_message() -> None:
    spec = RowSpec(prompt_field="q", keep=("a", "nosuch", "other"))
    with pytest.raises(ConfigError) as info:
        check_columns(["a", "q"], spec, source="f.jsonl", require_id=True, rows_seen=7)
    message = str(info.value)
    assert message == ("f.jsonl: none of the first 7 rows has the field 'id' (--id-field), nor "
                       "'nosuch' (--keep), nor 'other' (--keep). Their fields: a, q.")


def test_the_id_field_is_needed_only_when_asked_for() -> None:
    check_columns(["prompt"], RowSpec(), source="x")
    with pytest.raises(ConfigError, match="'key'"):
        check_columns(["prompt"], RowSpec(id_field="key"), source="x", require_id=True)


def test_a_long_column_list_is_cut() -> None:
    names = [f"c{i}" for i in range(100)]
    with pytest.raises(ConfigError, match=r"c39, \.\.\. \(100 in all\)"):
        check_columns(names, RowSpec(), source="x")


def test_take_head_stops_at_the_good_rows_it_needs() -> None:
    def items() -> Iterator[RawRecord | InputError]:
        for i in range(10_000):
            yield InputError("bad", location=f"x:{i}") if i % 2 else RawRecord(i, "x", {})

    source = items()
    head = take_head(source)
    assert sum(isinstance(i, RawRecord) for i in head) == HEAD_ROWS
    assert len(head) == 2 * HEAD_ROWS - 1 and next(source).location == f"x:{len(head)}"
    assert len(take_head(InputError("bad", location="x") for _ in range(10_000))) == 1000


# -- through the command line -----------------------------------------------------------------


def test_a_100k_row_parquet_without_the_prompt_column_stops_at_its_schema(
    tmp_path: Path, rows_read: list[int]
) -> None:
    source = tmp_path / "big.parquet"
    pq.write_table(pa.table({"id": pa.array(range(100_000)),
                             "text": pa.array([f"row {i}" for i in range(100_000)])}), source)
    result = run(str(source), "--url", DEAD, "--limit", "5")
    assert result.exit_code == 2
    assert "no column 'prompt'" in result.stderr and "Its columns: id, text." in result.stderr
    assert "Traceback" not in result.stderr and result.stderr.count("\n") <= 2
    assert rows_read == [0]  # the schema alone decided: not one row read
    assert_nothing_written(tmp_path, "big.parquet")  # no errors file, no lock, no output


def test_a_jsonl_input_is_judged_by_its_first_rows(tmp_path: Path, rows_read: list[int]) -> None:
    source = tmp_path / "big.jsonl"
    source.write_text("".join(json.dumps({"text": f"row {i}"}) + "\n" for i in range(10_000)))
    result = run(str(source), "--url", DEAD, "--prompt-field", "question")
    assert result.exit_code == 2
    assert f"none of the first {HEAD_ROWS} rows has the field 'question'" in result.stderr
    assert "Their fields: text." in result.stderr
    assert rows_read == [HEAD_ROWS]
    assert_nothing_written(tmp_path, "big.jsonl")


def test_a_template_field_some_rows_have_leaves_per_row_errors(
    tmp_path: Path, threaded_space
) -> None:
    source = tmp_path / "t.jsonl"
    source.write_text(json.dumps({"id": "a", "text": "x", "lang": "fr"}) + "\n"
                      + json.dumps({"id": "b", "text": "y"}) + "\n")
    result = run(str(source), "--url", threaded_space.url, "--template", "{text} in {lang}")
    assert result.exit_code == 3  # one row is bad, not the run
    (error,) = [json.loads(x) for x in
                (tmp_path / "t.jsonl.completions.errors.jsonl").read_text().splitlines()]
    assert error["id"] == "b" and "missing field 'lang'" in error["error"]


def test_a_template_field_no_row_has_is_a_usage_error(tmp_path: Path) -> None:
    source = tmp_path / "t.jsonl"
    source.write_text(json.dumps({"text": "x"}) + "\n{broken\n\n" + json.dumps({"text": "y"}) + "\n")
    result = run(str(source), "--url", DEAD, "--template", "{text} in {lang}")
    assert result.exit_code == 2
    assert "none of the first 2 rows has the field 'lang' (used by --template)" in result.stderr
    assert_nothing_written(tmp_path, "t.jsonl")


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_keep_of_an_unknown_column_is_a_usage_error(tmp_path: Path, suffix: str) -> None:
    rows = [{"prompt": "p", "title": "t"}]
    source = tmp_path / f"k.{suffix}"
    if suffix == "jsonl":
        source.write_text(json.dumps(rows[0]) + "\n")
    else:
        pq.write_table(pa.Table.from_pylist(rows), source)
    result = run(str(source), "--url", DEAD, "--keep", "title", "--keep", "nosuch")
    assert result.exit_code == 2
    assert "'nosuch' (--keep)" in result.stderr and "title" in result.stderr
    assert "'title' (--keep)" not in result.stderr
    assert_nothing_written(tmp_path, f"k.{suffix}")


def test_an_id_field_named_on_the_command_line_or_in_a_config_must_exist(
    tmp_path: Path, threaded_space
) -> None:
    source = tmp_path / "i.jsonl"
    source.write_text(json.dumps({"key": "a", "prompt": "p"}) + "\n")
    result = run(str(source), "--url", DEAD, "--id-field", "uid")
    assert result.exit_code == 2 and "'uid' (--id-field)" in result.stderr
    config = tmp_path / "c.toml"
    config.write_text('id-field = "uid"\n')
    assert run(str(source), "--url", DEAD, "--config", str(config)).exit_code == 2
    assert run(str(source), "--url", DEAD, env={"QWEN_BATCH_ID_FIELD": "uid"}).exit_code == 2
    assert_nothing_written(tmp_path, "i.jsonl", "c.toml")
    # The default id field may be absent: rows then get ids from their content.
    assert run(str(source), "--url", threaded_space.url).exit_code == 0
