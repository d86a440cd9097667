"""Gradio messages: diffs, answer extraction and the per-event tracker, on real captures."""

from __future__ import annotations

import copy

import pytest
from captures import CapturedStream, captured_streams

from pipeline.errors import (
    AppError,
    CancelledJobError,
    ProtocolError,
    QueueFullError,
    ServerError,
)
from pipeline.gradio import EventTracker, answer_from_history, apply_diff, parse_message

STREAMS = captured_streams()


def events_of(stream: CapturedStream) -> dict[str, list[dict]]:
    by_event: dict[str, list[dict]] = {}
    for message in stream.messages:
        if message.get("event_id"):
            by_event.setdefault(message["event_id"], []).append(message)
    return by_event


def completed_ok(messages: list[dict]) -> dict | None:
    last = messages[-1]
    if last["msg"] == "process_completed" and last["success"] and "data" in last["output"]:
        return last
    return None


SUCCESSFUL = [
    pytest.param(s, eid, id=f"{s.name}:{eid[:6]}")
    for s in STREAMS
    for eid, msgs in events_of(s).items()
    if completed_ok(msgs)
]


def test_there_are_successful_events_of_both_versions() -> None:
    names = {p.values[0].name.split("_")[0] for p in SUCCESSFUL}
    assert names == {"gradio4.44.1", "gradio6.31.0"}


@pytest.mark.parametrize(("stream", "event_id"), SUCCESSFUL)
def test_applying_the_diffs_reproduces_process_completed(stream: CapturedStream, event_id: str) -> None:
    messages = events_of(stream)[event_id]
    state = None
    generating = [m for m in messages if m["msg"] == "process_generating"]
    assert len(generating) > 1
    for message in generating:
        data = message["output"]["data"]
        if state is None:
            state = data
        else:
            before = copy.deepcopy(state)
            new_state = [apply_diff(value, edits) for value, edits in zip(state, data, strict=True)]
            assert state == before  # applied on a copy: the previous value is untouched
            state = new_state
    final = completed_ok(messages)["output"]["data"]
    assert state == final


@pytest.mark.parametrize(("stream", "event_id"), SUCCESSFUL)
def test_tracker_streams_exactly_the_final_answer(stream: CapturedStream, event_id: str) -> None:
    tracker = EventTracker(event_id)
    deltas = [tracker.handle(m) for m in stream.messages]
    final = answer_from_history(completed_ok(events_of(stream)[event_id])["output"]["data"][1])
    assert tracker.done and not tracker.diverged
    assert tracker.final_text == final
    assert "".join(deltas) == final
    assert sum(1 for d in deltas if d) > 2  # truly streamed, not first chunk + rest


@pytest.mark.parametrize("version", ["4.44.1", "6.31.0"])
def test_answer_is_the_last_assistant_turn_not_the_first(version: str) -> None:
    # Capture 03 carries an earlier turn; the old provider streamed that old reply.
    stream = next(s for s in STREAMS if s.name.startswith(f"gradio{version}_03_minimal"))
    tracker = EventTracker(next(iter(events_of(stream))))
    text = "".join(tracker.handle(m) for m in stream.messages)
    assert text.startswith("Fake answer to 'second question' (turn 2")
    assert "Hello! How can I help?" not in text
    assert tracker.final_text == text


def test_repeated_words_are_not_deduplicated() -> None:
    tracker = EventTracker("e")
    first = {"msg": "process_generating", "event_id": "e",
             "output": {"data": ["", [["q", "no"]], "s"]}, "success": True}
    more = {"msg": "process_generating", "event_id": "e",
            "output": {"data": [[], [["append", [0, 1], " no"]], []]}, "success": True}
    done = {"msg": "process_completed", "event_id": "e",
            "output": {"data": ["", [["q", "no no no"]], "s"]}, "success": True}
    assert [tracker.handle(m) for m in (first, more, more, done)] == ["no", " no", " no", ""]


def test_messages_history_with_content_blocks_and_strings() -> None:
    history = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "old"}]},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": [{"type": "text", "text": "ne"}, {"type": "file", "file": {}},
                                          {"type": "text", "text": "w"}]},
    ]
    assert answer_from_history(history) == "new"
    assert answer_from_history(history[:3]) is None  # the newest turn is a question
    assert answer_from_history(history[:2]) == "old"
    assert answer_from_history([{"role": "assistant", "content": "plain"}]) == "plain"
    assert answer_from_history([["q", None]]) is None
    assert answer_from_history([]) is None


@pytest.mark.parametrize(
    ("value", "diff", "expected"),
    [
        ("ab", [["append", [], "c"]], "abc"),
        ("ab", [["replace", [], "x"]], "x"),
        ([["q", "a"]], [["append", [0, 1], "b"]], [["q", "ab"]]),
        ([["q", "a"]], [["add", [1], ["q2", "b"]]], [["q", "a"], ["q2", "b"]]),
        ([1, 2, 3], [["delete", [0], None], ["delete", [0], None]], [3]),
        ({"a": 1}, [["add", ["b"], 2], ["replace", ["a"], 3]], {"a": 3, "b": 2}),
        ({"a": [1]}, [["delete", ["a"], None]], {}),
        ([{"content": [{"text": "x"}]}], [["append", [0, "content", 0, "text"], "y"]],
         [{"content": [{"text": "xy"}]}]),
    ],
)
def test_apply_diff_ops(value: object, diff: list, expected: object) -> None:
    original = copy.deepcopy(value)
    assert apply_diff(value, diff) == expected
    assert value == original


@pytest.mark.parametrize(
    "diff",
    ["not a list", [["append"]], [["frobnicate", [0], 1]], [["append", [5], "x"]],
     [["append", [0], 1]], [["delete", [], None]], [["replace", "0", 1]]],
)
def test_bad_diffs_are_protocol_errors(diff: object) -> None:
    with pytest.raises(ProtocolError):
        apply_diff(["text"], diff)


def test_parse_message_rejects_non_json_and_non_messages() -> None:
    assert parse_message('{"msg":"heartbeat","event_id":null}') == {"msg": "heartbeat", "event_id": None}
    for bad in ('{"msg": "process_generating", oops', "[1,2]", '{"no_msg": 1}', '{"msg": 3}'):
        with pytest.raises(ProtocolError):
            parse_message(bad)


def completed(output: dict, success: bool = True) -> dict:
    return {"msg": "process_completed", "event_id": "e", "output": output, "success": success}


@pytest.mark.parametrize(
    ("message", "error", "text"),
    [
        (completed({"error": None}, False), AppError, "hides its details"),
        (completed({"error": None, "title": "Error"}, False), AppError, "error:null"),
        (completed({"error": "Request id: x, Status code: 400"}, False), AppError, "Status code: 400"),
        (completed({}), CancelledJobError, "cancelled"),
        ({"msg": "unexpected_error", "event_id": None, "message": "404: Session not found.",
          "success": False}, ServerError, "Session not found"),
        ({"msg": "queue_full", "event_id": None}, QueueFullError, "full"),
        ({"msg": "send_hash", "event_id": None}, ProtocolError, "old Gradio protocol"),
        (completed({"data": ["only one output"]}), ProtocolError, "chatbot"),
    ],
)
def test_terminal_messages_raise_typed_errors(message: dict, error: type, text: str) -> None:
    with pytest.raises(error, match=text):
        EventTracker("e").handle(message)


def test_error_captures_raise_app_error_after_partial_text() -> None:
    for stream in STREAMS:
        if "RAISE_LATER" not in stream.name:
            continue
        event_id = next(iter(events_of(stream)))
        tracker = EventTracker(event_id)
        seen = []
        with pytest.raises(AppError):
            for message in stream.messages:
                seen.append(tracker.handle(message))
        assert "".join(seen).startswith("Fake")


def test_other_events_and_informational_messages_are_ignored() -> None:
    tracker = EventTracker("mine")
    other = {"msg": "process_generating", "event_id": "other",
             "output": {"data": ["", [["q", "theirs"]], ""]}, "success": True}
    assert tracker.handle(other) == ""
    assert tracker.handle({"msg": "heartbeat", "event_id": None}) == ""
    assert tracker.handle({"msg": "log", "event_id": "mine", "log": "x"}) == ""
    assert tracker.handle({"msg": "estimation", "event_id": "mine", "rank": 3, "queue_size": 9,
                           "rank_eta": 4.5}) == ""
    assert (tracker.queue_rank, tracker.queue_size, tracker.queue_eta) == (3, 9, 4.5)
    assert not tracker.started
    assert tracker.handle({"msg": "process_starts", "event_id": "mine", "eta": None}) == ""
    assert tracker.started


def test_rewritten_text_marks_divergence_and_final_value_wins() -> None:
    tracker = EventTracker("e")
    gen = {"msg": "process_generating", "event_id": "e",
           "output": {"data": ["", [["q", "Hello wrld"]], ""]}, "success": True}
    fix = {"msg": "process_generating", "event_id": "e",
           "output": {"data": [[], [["replace", [0, 1], "Hello world"]], []]}, "success": True}
    assert tracker.handle(gen) == "Hello wrld"
    assert tracker.handle(fix) == ""
    assert tracker.handle(completed({"data": ["", [["q", "Hello world!"]], ""]})) == ""
    assert tracker.diverged and tracker.final_text == "Hello world!"


def test_full_values_every_time_without_diffs() -> None:
    tracker = EventTracker("e", diffs=False)
    for text in ("a", "ab", "abc"):
        delta = tracker.handle({"msg": "process_generating", "event_id": "e",
                                "output": {"data": ["", [["q", text]], ""]}, "success": True})
        assert delta == text[-1]


@pytest.mark.parametrize(("stream", "event_id"), SUCCESSFUL)
def test_untracked_tracker_measures_the_text_and_keeps_the_final_answer(
        stream: CapturedStream, event_id: str) -> None:
    tracked, untracked = EventTracker(event_id), EventTracker(event_id, track_text=False)
    for message in stream.messages:
        assert untracked.handle(copy.deepcopy(message)) == ""
        tracked.handle(message)
        assert untracked.grew == tracked.grew  # the same chunks count as text
        assert untracked.text_chars == tracked.text_chars
    final = answer_from_history(completed_ok(events_of(stream)[event_id])["output"]["data"][1])
    assert untracked.done and untracked.final_text == final
    assert untracked.text_chars == len(final) and untracked.emitted == ""


def test_untracked_tracker_still_rejects_malformed_diffs() -> None:
    tracker = EventTracker("e", track_text=False)
    first = {"msg": "process_generating", "event_id": "e",
             "output": {"data": ["", [["q", "Hi"]], ""]}, "success": True}
    assert tracker.handle(first) == "" and tracker.grew and tracker.text_chars == 2
    bad = {"msg": "process_generating", "event_id": "e",
           "output": {"data": [[], [["append", [0, 1]]], []]}, "success": True}
    with pytest.raises(ProtocolError):
        tracker.handle(bad)
    short = {"msg": "process_generating", "event_id": "e", "output": {"data": [[]]}, "success": True}
    with pytest.raises(ProtocolError):
        tracker.handle(short)
