"""The input note: written atomically, read back, and the half-of-the-noted-rows rule."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from pipeline.errors import ConfigError
from pipeline.models import PromptRow
from pipeline.provenance import (
    HEAD_ROWS,
    InputNote,
    check_input,
    describe_input,
    fingerprint,
    note_path,
    read_note,
    write_note,
)


def rows(*prompts: str) -> list[PromptRow]:
    return [PromptRow(id=f"id-{p}", position=i, prompt=p) for i, p in enumerate(prompts)]


def noted(*prompts: str) -> InputNote:
    return InputNote("/data/old.jsonl", "jsonl", 123, tuple(fingerprint(r) for r in rows(*prompts)))


CURRENT = InputNote("/data/new.jsonl", "jsonl", 456, ())


def test_a_note_round_trips_and_is_replaced_whole(tmp_path: Path) -> None:
    out = str(tmp_path / "out.jsonl")
    assert read_note(out) is None
    note = noted("a", "b")
    write_note(out, note)
    assert read_note(out) == note and note_path(out) == out + ".input.json"
    assert json.loads(Path(note_path(out)).read_text())["version"] == 1
    write_note(out, noted("c"))
    assert read_note(out) == noted("c")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.jsonl.input.json"]


def test_an_unreadable_note_is_logged_and_treated_as_absent(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = str(tmp_path / "out.jsonl")
    Path(note_path(out)).write_text('{"path": "x"')
    with caplog.at_level(logging.WARNING):
        assert read_note(out) is None
    assert "unreadable" in caplog.text


def test_describe_input(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text("12345")
    note = describe_input(str(path), "jsonl", ["ab"])
    assert note == InputNote(str(path), "jsonl", 5, ("ab",))
    assert note.describe() == f"{path} (5 bytes)"
    assert describe_input("-", "jsonl").describe() == "<stdin>"


def test_fingerprints_tell_the_id_prompt_and_system_apart() -> None:
    base = PromptRow(id="1", position=0, prompt="p")
    others = [PromptRow(id="2", position=0, prompt="p"), PromptRow(id="1", position=0, prompt="q"),
              PromptRow(id="1", position=0, prompt="p", system="s")]
    assert fingerprint(PromptRow(id="1", position=9, prompt="p")) == fingerprint(base)
    assert len({fingerprint(r) for r in [base, *others]}) == 4


def test_half_of_the_noted_rows_anywhere_is_enough() -> None:
    recorded = noted("a", "b", "c", "d")
    note = check_input("out", CURRENT, rows("x", "y", "d", "z", "b"), recorded=recorded, done=None)
    assert note.head == tuple(fingerprint(r) for r in rows("x", "y", "d", "z", "b"))
    with pytest.raises(ConfigError) as info:
        check_input("out", CURRENT, rows("x", "y", "d", "z"), recorded=recorded, done=None)
    message = str(info.value)
    assert "/data/old.jsonl (123 bytes)" in message and "/data/new.jsonl (456 bytes)" in message
    assert "only 1 of the 4 rows" in message and "--resume-any" in message


def test_an_empty_note_or_no_check_accepts_any_input() -> None:
    check_input("out", CURRENT, rows("x"), recorded=InputNote("p", "jsonl", 0, ()), done=None)
    note = check_input("out", CURRENT, rows(*map(str, range(500))), recorded=None, done=None)
    assert len(note.head) == HEAD_ROWS


def test_the_scan_stops_once_it_is_sure() -> None:
    recorded = noted("a", "b")
    seen: list[str] = []

    def source():  # type: ignore[no-untyped-def]
        for row in rows(*[f"n{i}" for i in range(150)], "a", *[f"m{i}" for i in range(10_000)]):
            seen.append(row.prompt)
            yield row

    check_input("out", CURRENT, source(), recorded=recorded, done=None)
    assert len(seen) == 151  # found "a" (1 of 2 noted) past the first 100 rows, then stopped


def test_without_a_note_the_output_must_know_one_of_the_first_rows() -> None:
    done = {"id-c"}
    check_input("out", CURRENT, rows("a", "b", "c"), recorded=None, done=done.__contains__)
    with pytest.raises(ConfigError, match="earlier qwen-batch"):
        check_input("out", CURRENT, rows("a", "b"), recorded=None, done=done.__contains__)
