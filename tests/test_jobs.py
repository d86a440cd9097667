"""plan_rows and KeySet: bad records, duplicates, resume (done and partly done rows), limit."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import InputError
from pipeline.jobs import KeySet, PlanCounters, plan_rows
from pipeline.models import Failure, PromptRow, RawRecord
from pipeline.readers import read_records
from pipeline.rowspec import RowSpec, content_id

SPEC = RowSpec()


def rec(position: int, **values: object) -> RawRecord:
    return RawRecord(position=position, location=f"in.jsonl:{position + 1}", values=dict(values))


def write_jsonl(path: Path, lines: list[str]) -> str:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return str(path)


# -- KeySet ----------------------------------------------------------------------------------


def test_keyset_membership() -> None:
    keys = KeySet([("a", 0), ("a", 2), ("1", 0)])
    assert ("a", 0) in keys and ("a", 2) in keys and ("1", 0) in keys
    assert ("a", 1) not in keys and ("b", 0) not in keys and ("1", 1) not in keys
    assert len(keys) == 3
    keys.add("b")
    keys.add("b", 0)  # the same key twice counts once
    keys.add("b", 5)
    assert ("b", 0) in keys and ("b", 5) in keys and len(keys) == 5
    assert ("", 0) not in KeySet()


def test_keyset_keeps_id_and_sample_apart() -> None:
    # "a\x001" with sample 0 must not be id "a" with sample 10 (or 1, or 0).
    keys = KeySet([("a\x001", 0)])
    assert ("a", 10) not in keys and ("a", 1) not in keys and ("a", 0) not in keys
    keys = KeySet([("12", 3)])
    assert ("1", 23) not in keys and ("123", 0) not in keys


def test_keyset_takes_any_text_id() -> None:
    odd = ["日本語", "\ud800 lone surrogate", "with\nnewline", " "]
    keys = KeySet((i, 0) for i in odd)
    assert all((i, 0) in keys for i in odd) and len(keys) == len(odd)


@given(st.sets(st.tuples(st.text(max_size=8), st.integers(0, 50)), max_size=40),
       st.lists(st.tuples(st.text(max_size=8), st.integers(0, 50)), max_size=40))
def test_keyset_agrees_with_a_plain_set(stored: set[tuple[str, int]],
                                        probes: list[tuple[str, int]]) -> None:
    keys = KeySet(stored)
    assert len(keys) == len(stored)
    for probe in [*stored, *probes]:
        assert (probe in keys) == (probe in stored)


# -- bad records -----------------------------------------------------------------------------


def test_bad_records_become_input_failures_naming_location_and_field(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "in.jsonl", [
        '{"id": "ok1", "prompt": "fine"}',           # 0
        '{"id": "x", "prompt": ',                     # 1 invalid JSON
        '',                                           # blank: no position
        '{"id": "b", "prompt": 5}',                   # 2 wrong type, id known
        '{"id": [1], "prompt": "p"}',                 # 3 bad id
        '{"id": "c"}',                                # 4 no prompt at all
        '[1, 2]',                                     # 5 not an object
        '{"prompt": "no id: the content gives the id"}',  # 6
        '{"prompt": 7}',                              # 7 bad, and no id to name it by
    ])
    counters = PlanCounters()
    out = list(plan_rows(read_records(path), SPEC, done=KeySet(), counters=counters))
    assert [type(x).__name__ for x in out] == [
        "PromptRow", "Failure", "Failure", "Failure", "Failure", "Failure", "PromptRow", "Failure"]
    assert [x.position for x in out] == [0, 1, 2, 3, 4, 5, 6, 7]
    failures = {x.position: x for x in out if isinstance(x, Failure)}
    for f in failures.values():
        assert f.error_type == "input" and f.attempts == 0 and f.row is None
        assert f.retryable is False
    assert failures[1].id is None and f"{path}:2" in failures[1].error
    assert "invalid JSON" in failures[1].error
    assert failures[2].id == "b"
    assert f"{path}:4" in failures[2].error and "field 'prompt'" in failures[2].error
    assert failures[3].id is None and "field 'id'" in failures[3].error
    assert failures[4].id == "c" and "missing field 'prompt'" in failures[4].error
    assert failures[5].id is None and "expected a JSON object" in failures[5].error
    assert failures[7].id is None and f"{path}:9" in failures[7].error  # not its position
    last = out[-2]
    assert isinstance(last, PromptRow) and last.location == f"{path}:8"
    assert last.id == content_id("no id: the content gives the id", None)
    assert counters.records == 8 and counters.input_errors == 6 and counters.queued == 2


def test_duplicate_id_is_an_input_failure_naming_the_id_and_field() -> None:
    spec = RowSpec(id_field="key")
    records = [rec(0, key="a", prompt="one"), rec(1, key="b", prompt="two"),
               rec(2, key="a", prompt="three"), rec(3, key=7, prompt="int id"),
               rec(4, key="7", prompt="same id as text")]
    counters = PlanCounters()
    out = list(plan_rows(records, spec, done=KeySet(), counters=counters))
    rows = [x for x in out if isinstance(x, PromptRow)]
    dups = [x for x in out if isinstance(x, Failure)]
    assert [r.id for r in rows] == ["a", "b", "7"]
    assert rows[0].prompt == "one"  # the first one wins
    assert [(d.id, d.position) for d in dups] == [("a", 2), ("7", 4)]
    assert "duplicate id 'a'" in dups[0].error
    assert "field 'key'" in dups[0].error and "in.jsonl:3" in dups[0].error
    assert all(d.error_type == "input" for d in dups)
    assert counters.input_errors == 2 and counters.queued == 3


def test_identical_rows_without_ids_get_occurrence_numbers_not_errors() -> None:
    records = [rec(0, prompt="same"), rec(1, prompt="other"), rec(2, prompt="same"),
               rec(3, prompt="same", note="not sent, so not part of the id"),
               rec(4, prompt="same", system="another request")]
    counters = PlanCounters()
    out = list(plan_rows(records, SPEC, done=KeySet(), counters=counters))
    assert all(isinstance(x, PromptRow) for x in out) and counters.input_errors == 0
    base = content_id("same", None)
    assert [x.id for x in out] == [base, content_id("other", None), f"{base}#2", f"{base}#3",
                                   content_id("same", "another request")]


def test_occurrence_numbers_resume_by_count_not_by_position() -> None:
    # Two identical rows done; a third one appended later is the only one left to do.
    base = content_id("same", None)
    records = [rec(0, prompt="new"), rec(1, prompt="same"), rec(2, prompt="same"),
               rec(3, prompt="same")]
    done = KeySet([(base, 0), (f"{base}#2", 0)])
    out = list(plan_rows(records, SPEC, done=done))
    assert [(x.id, x.position) for x in out] == [(content_id("new", None), 0),
                                                 (f"{base}#3", 3)]


def test_an_explicit_id_shaped_like_an_occurrence_is_not_reused() -> None:
    base = content_id("same", None)
    records = [rec(0, prompt="same"), rec(1, id=f"{base}#2", prompt="x"), rec(2, prompt="same")]
    out = list(plan_rows(records, SPEC, done=KeySet()))
    ids = [x.id for x in out]
    assert ids[:2] == [base, f"{base}#2"] and ids[2] not in ids[:2] and ids[2].startswith(base)
    assert all(isinstance(x, PromptRow) for x in out)


def test_duplicate_of_a_done_row_is_still_reported() -> None:
    records = [rec(0, id="a", prompt="p"), rec(1, id="a", prompt="p again")]
    out = list(plan_rows(records, SPEC, done=KeySet([("a", 0)])))
    assert len(out) == 1 and isinstance(out[0], Failure) and out[0].position == 1


def test_reader_errors_pass_as_failures_at_their_position() -> None:
    items: list[RawRecord | InputError] = [
        rec(0, prompt="a"), InputError("line too long", location="in.jsonl:2"),
        rec(2, prompt="c"),
    ]
    out = list(plan_rows(items, SPEC, done=KeySet()))
    assert isinstance(out[1], Failure)
    assert out[1].position == 1 and out[1].id is None
    assert out[1].error == "in.jsonl:2: line too long"


# -- resume ----------------------------------------------------------------------------------


def test_done_rows_are_skipped_and_counted() -> None:
    records = [rec(i, id=f"r{i}", prompt=f"p{i}") for i in range(5)]
    counters = PlanCounters()
    done = KeySet([("r1", 0), ("r3", 0), ("r3", 1), ("zz", 0)])
    out = list(plan_rows(records, SPEC, done=done, counters=counters))
    assert [r.id for r in out if isinstance(r, PromptRow)] == ["r0", "r2", "r4"]
    assert all(isinstance(r, PromptRow) and r.samples is None for r in out)
    assert counters.skipped_done == 2 and counters.queued == 3 and counters.records == 5


def test_partly_done_rows_carry_only_their_missing_samples() -> None:
    records = [rec(0, id="a", prompt="p"), rec(1, id="b", prompt="q"), rec(2, id="c", prompt="r")]
    done = KeySet([("a", 1), ("b", 0), ("b", 1), ("b", 2), ("c", 3)])
    counters = PlanCounters()
    out = list(plan_rows(records, SPEC, done=done, samples=3, counters=counters))
    assert len(out) == 2
    a, c = out
    assert isinstance(a, PromptRow) and a.id == "a" and a.samples == (0, 2)
    # sample 3 is outside this run's samples: c still needs all of 0..2
    assert isinstance(c, PromptRow) and c.id == "c" and c.samples is None
    assert counters.skipped_done == 1 and counters.queued == 2


# -- limit and positions ---------------------------------------------------------------------


def test_limit_counts_only_rows_yielded_for_work() -> None:
    records = [
        rec(0, id="bad"),                   # input error: not counted
        rec(1, id="done", prompt="x"),      # done: not counted
        rec(2, id="w1", prompt="x"),
        rec(3, id="w1", prompt="dup"),      # duplicate: not counted
        rec(4, id="w2", prompt="x"),
        rec(5, id="w3", prompt="x"),        # over the limit
        rec(6, id="w4", prompt="x"),
    ]
    counters = PlanCounters()
    out = list(plan_rows(records, SPEC, done=KeySet([("done", 0)]), limit=2,
                         counters=counters))
    assert [r.id for r in out if isinstance(r, PromptRow)] == ["w1", "w2"]
    assert sum(isinstance(r, Failure) for r in out) == 2
    assert counters.queued == 2 and counters.limited is True
    assert counters.skipped_done == 1


def test_limit_not_reached_is_not_limited() -> None:
    records = [rec(0, id="a", prompt="x"), rec(1, id="b", prompt="x"), rec(2, id="c", prompt="x")]
    done = KeySet([("c", 0)])
    counters = PlanCounters()
    out = list(plan_rows(records, SPEC, done=done, limit=2, counters=counters))
    assert [r.id for r in out if isinstance(r, PromptRow)] == ["a", "b"]
    assert counters.limited is False and counters.skipped_done == 1
    zero = PlanCounters()
    assert list(plan_rows(records, SPEC, done=KeySet(), limit=0, counters=zero)) == []
    assert zero.limited is True and zero.queued == 0


def test_positions_are_stable_across_runs(tmp_path: Path) -> None:
    lines = [json.dumps({"id": f"r{i}", "prompt": f"p{i}"}) for i in range(6)]
    lines[2] = "not json"
    path = write_jsonl(tmp_path / "in.jsonl", lines)
    first = list(plan_rows(read_records(path), SPEC, done=KeySet()))
    assert [x.position for x in first] == list(range(6))
    # second run: some rows done, a limit, and a counters object already used once
    counters = PlanCounters()
    list(plan_rows(read_records(path), SPEC, done=KeySet(), counters=counters))
    second = list(plan_rows(read_records(path), SPEC, done=KeySet([("r0", 0), ("r3", 0)]),
                            limit=2, counters=counters))
    assert [(getattr(x, "id", None), x.position) for x in second] == [
        ("r1", 1), (None, 2), ("r4", 4)]
    assert counters.records == 12


def test_template_and_default_system_reach_the_row() -> None:
    spec = RowSpec(template="Summarise: {text}", default_system="Be brief.", keep=("tag",))
    records = [rec(0, id="a", text="hello", tag="t1"), rec(1, id="b", text="x", system="S")]
    a, b = plan_rows(records, spec, done=KeySet())
    assert isinstance(a, PromptRow) and isinstance(b, PromptRow)
    assert a.prompt == "Summarise: hello" and a.system == "Be brief." and a.keep == {"tag": "t1"}
    assert b.system == "S" and b.location == "in.jsonl:2"
