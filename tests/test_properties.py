"""Property-based tests: arbitrary bytes and structures in, typed errors (or results) out.

Every layer that parses outside input is fed arbitrary data and must either return
a well-formed result or raise the package's typed error for that layer: never
another exception (a crash), never a hang. Where a layer has an exact oracle
(SSE framing, diff appends, JSONL line accounting, streamed deltas) the result is
checked against it too.

The example budget is fixed (profile ``qwen-batch-properties``: 200 examples,
derandomized, no example database) so CI time is bounded and every run tests the
same examples. ``QWEN_BATCH_PROPERTY_EXAMPLES=5000`` runs a deeper local search.
"""

from __future__ import annotations

import contextlib
import functools
import io
import itertools
import json
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.errors import (
    ConfigError,
    DiscoveryError,
    InputError,
    InputFileError,
    ProtocolError,
    RequestError,
)
from pipeline.gradio import EventTracker, answer_from_history, apply_diff, parse_message
from pipeline.models import PromptRow, RawRecord
from pipeline.readers import read_records
from pipeline.rowspec import RowSpec, build_prompt_row
from pipeline.space_config import SUPPORTED_PROTOCOLS, SpaceInfo, parse_space_config
from pipeline.sse import SSEDecoder, SSEEvent

settings.register_profile(
    "qwen-batch-properties",
    max_examples=int(os.environ.get("QWEN_BATCH_PROPERTY_EXAMPLES", "200")),
    deadline=None,
    derandomize=True,
    database=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROPERTY = settings.get_profile("qwen-batch-properties")
"""Applied to every test here (not loaded globally, so other test files keep theirs)."""

T = TypeVar("T")


def snapshot(value: Any) -> str:
    """A comparable picture of a value: repr tells 1, 1.0 and True apart and nan == nan."""
    return repr(value)


def deeper(frames: int, fn: Callable[[], T]) -> T:
    """Call ``fn`` with ``frames`` more Python frames on the stack than the caller has."""
    if frames <= 0:
        return fn()
    return deeper(frames - 1, fn)


def nested(depth: int, leaf: Any = "x") -> Any:
    """``[[[...leaf...]]]`` ``depth`` lists deep, built without recursion."""
    value = leaf
    for _ in range(depth):
        value = [value]
    return value


def deepest_parsable(parse: Callable[[str], Any], prefix: str, suffix: str) -> str:
    """The text with the deepest ``[[...]]`` between prefix and suffix that ``parse`` accepts."""
    lo, hi = 1, sys.getrecursionlimit() + 100
    while lo < hi:
        mid = (lo + hi + 1) // 2
        try:
            parse(prefix + "[" * mid + "]" * mid + suffix)
        except (RecursionError, ProtocolError):
            hi = mid - 1
        else:
            lo = mid
    return prefix + "[" * lo + "]" * lo + suffix


@st.composite
def splits(draw: st.DrawFn, data: bytes) -> list[bytes]:
    """``data`` cut at arbitrary points (empty chunks included).

    Often also right after some CRs: a CRLF split across two chunks is the case a
    decoder most easily gets wrong, and random cuts rarely land there.
    """
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=12))
    after_cr = [i + 1 for i, byte in enumerate(data) if byte == 0x0D]
    if after_cr and draw(st.booleans()):
        cuts += draw(st.lists(st.sampled_from(after_cr), min_size=1, max_size=len(after_cr)))
    cuts.sort()
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


# --- shared strategies --------------------------------------------------------------------

KEYS = st.sampled_from(["", "a", "b", "0", "content", "text", "role", "data"]) | st.text(max_size=3)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=8),
    # JSON allows these and Python's json module reads them.
    st.sampled_from([10**400, -(10**400), float("inf"), float("-inf"), 2**63, -1, 0]),
)
JSON = st.recursive(
    SCALARS,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(KEYS, kids, max_size=4),
    max_leaves=16,
)


# --- 1. SSE decoder -----------------------------------------------------------------------

SSE_PIECES = st.sampled_from(
    [b"data:", b"data: ", b"data", b"event:", b"event: x", b"id:", b"id: 7", b"id:\x00",
     b"retry:", b"retry: 15", b":", b": c", b"\r", b"\n", b"\r\n", b"\n\n", b"\r\r", b"x",
     b" ", b"1", b"\x00", b"\xc3\xa9", b"\xff", b"\xc3", b"\xef\xbb\xbf", b"{}",
     b"retry: \xc2\xb2", b"retry: \xd9\xa3"]  # superscript two, Arabic-Indic three
)
SSE_BYTES = st.one_of(
    st.binary(max_size=200),
    st.lists(SSE_PIECES | st.binary(max_size=4), max_size=60).map(b"".join),
)


def decode(chunks: list[bytes], max_line: int | None) -> tuple[list[SSEEvent], bool]:
    """Feed the chunks; return (events, whether a ProtocolError stopped it).

    Also checks the memory bound: with ``max_line_bytes`` the decoder never holds
    more than the cap plus the chunk it was just given.
    """
    decoder = SSEDecoder(max_line)
    events: list[SSEEvent] = []
    for chunk in chunks:
        try:
            events += decoder.feed(chunk)
        except ProtocolError:
            return events, True
        finally:
            if max_line is not None:
                assert len(decoder._buf) <= max_line + len(chunk)
    assert decoder.close() == []
    assert not decoder.pending
    return events, False


@PROPERTY
@given(data=st.data(), raw=SSE_BYTES, max_line=st.sampled_from([None, None, 0, 1, 4, 16, 64]))
def test_sse_arbitrary_bytes_any_chunking(
    data: st.DataObject, raw: bytes, max_line: int | None
) -> None:
    chunks = data.draw(splits(raw), label="chunks")
    events, failed = decode(chunks, max_line)
    whole, whole_failed = decode([raw], max_line)
    if max_line is None:
        # Errors come only from complete lines, which chunking does not change.
        assert failed == whole_failed
    if not failed and not whole_failed:
        assert events == whole
    for event in events:
        assert isinstance(event.data, str) and isinstance(event.event, str) and event.event


@pytest.mark.parametrize(
    "raw",
    [
        b"data: a\r\ndata: b\r\n\r\n",
        b"data: a\rdata: b\r\rdata: c\n\n",
        b"event: x\r\ndata\r\n\r\n: c\r\nid: 1\r\ndata:  y\n\r\n",
        b"data: \xc3\xa9\r\n\r\ndata: a\r",
    ],
)
def test_sse_every_two_and_three_way_split(raw: bytes) -> None:
    whole = decode([raw], None)
    for i in range(len(raw) + 1):
        assert decode([raw[:i], raw[i:]], None) == whole, i
        for j in range(i, len(raw) + 1):
            assert decode([raw[:i], raw[i:j], raw[j:]], None) == whole, (i, j)
    assert decode([raw[i : i + 1] for i in range(len(raw))], None) == whole


SSE_VALUE = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=12
)
SSE_LINE = st.one_of(
    st.tuples(st.sampled_from(["data", "data", "event", "id", "bogus", "Data", "data "]),
              SSE_VALUE),
    st.tuples(st.just("retry"), st.text("0123456789", max_size=4) | st.sampled_from(["²", "٣"])
              | SSE_VALUE),
    st.tuples(st.just(":comment"), SSE_VALUE),
    st.just(("", "")),  # blank line: dispatch
)


def reference_events(lines: list[tuple[str, str]]) -> list[SSEEvent]:
    """What the WHATWG rules dispatch for these (field, value) lines."""
    events: list[SSEEvent] = []
    data: list[str] = []
    kind, last_id, retry = "", None, None
    for field, value in lines:
        if field == "":
            if data:
                events.append(SSEEvent("\n".join(data), kind or "message", last_id, retry))
            data, kind = [], ""
        elif field == "data":
            data.append(value)
        elif field == "event":
            kind = value
        elif field == "id" and "\0" not in value:
            last_id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            retry = int(value)
    return events


@st.composite
def sse_streams(draw: st.DrawFn) -> tuple[bytes, list[SSEEvent]]:
    # Mostly whole events (fields, then a blank line), sometimes an unterminated tail.
    groups = draw(st.lists(st.lists(SSE_LINE, max_size=5), max_size=6))
    lines = [line for group in groups for line in [*group, ("", "")]]
    lines += draw(st.lists(SSE_LINE, max_size=3))
    out: list[bytes] = []
    previous_eol = b""
    for field, value in lines:
        if field == "":
            text = ""
        elif field == ":comment":
            text = ":" + value
        elif value == "" and draw(st.booleans()):
            text = field  # "data" alone is "data" with an empty value
        else:
            colon = ": " if value.startswith(" ") or draw(st.booleans()) else ":"
            text = field + colon + value
        eol = draw(st.sampled_from([b"\n", b"\r", b"\r\n"]))
        if previous_eol == b"\r" and text == "" and eol == b"\n":
            eol = b"\r\n"  # a CR then a bare LF would read as one CRLF
        out.append(text.encode() + eol)
        previous_eol = eol
    return b"".join(out), reference_events(lines)


@PROPERTY
@given(data=st.data(), stream=sse_streams())
def test_sse_recovers_fields_exactly_whatever_line_endings(
    data: st.DataObject, stream: tuple[bytes, list[SSEEvent]]
) -> None:
    raw, expected = stream
    chunks = data.draw(splits(raw), label="chunks")
    assert decode(chunks, None) == (expected, False)
    # A cap no line reaches changes nothing.
    assert decode(chunks, len(raw) + 1) == (expected, False)


@PROPERTY
@given(
    data=st.data(),
    line=st.binary(min_size=1, max_size=300).map(
        lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
    cap=st.integers(0, 64),
)
def test_sse_line_cap_bounds_memory_and_raises(data: st.DataObject, line: bytes, cap: int) -> None:
    raw = b"data: " + line  # never terminated: only the cap can stop it
    chunks = data.draw(splits(raw), label="chunks")
    events, failed = decode(chunks, cap)  # asserts the memory bound on every feed
    assert events == []
    assert failed == (len(raw) > cap)


# --- 2. parse_message ---------------------------------------------------------------------


@PROPERTY
@given(
    st.one_of(
        st.text(),
        JSON.map(json.dumps),
        st.dictionaries(st.sampled_from(["msg", "event_id", "output"]), JSON).map(json.dumps),
        st.integers(1, 5000).map(lambda n: '{"msg": "x", "a": ' + "[" * n + "]" * n + "}"),
    )
)
@example("[" * 100_000)
@example('{"msg": ' + "[" * 100_000)
@example('{"msg": "x", "n": ' + "9" * 5000 + "}")
def test_parse_message_returns_a_message_or_protocol_error(text: str) -> None:
    try:
        message = parse_message(text)
    except ProtocolError:
        return
    assert isinstance(message, dict) and isinstance(message["msg"], str)


# --- 3. apply_diff ------------------------------------------------------------------------

PATH_KEY = st.one_of(
    st.integers(-3, 5),
    st.sampled_from(["a", "b", "0", "content", "text", "-1"]),
    st.none(),
    st.booleans(),
    st.floats(),
    st.sampled_from([10**400, 2**64, float("inf"), float("nan")]),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=1), st.integers(), max_size=1),
)
OP = st.sampled_from(["replace", "append", "add", "delete"]) | SCALARS
EDIT = st.one_of(
    st.tuples(OP, st.lists(PATH_KEY, max_size=4), JSON).map(list),
    st.lists(JSON, max_size=4),
    JSON,
)
DIFF = st.lists(EDIT, max_size=6) | JSON


@PROPERTY
@given(value=JSON, diff=DIFF, in_place=st.booleans())
@example(value=[1], diff=[["add", [float("inf")], 1]], in_place=False)
@example(value=[1.5], diff=[["append", [0], 10**400]], in_place=False)
@example(value={"a": 0}, diff=[["replace", ["a"], [1]], ["add", ["a", 0], 5]], in_place=False)
@example(value={"a": {}}, diff=[["replace", ["b"], {}], ["replace", ["b", "c"], 1]], in_place=False)
def test_apply_diff_returns_a_value_or_protocol_error(
    value: Any, diff: Any, in_place: bool
) -> None:
    value_before, diff_before = snapshot(value), snapshot(diff)
    with contextlib.suppress(ProtocolError):
        apply_diff(value, diff, in_place=in_place)
    assert snapshot(diff) == diff_before, "apply_diff changed the diff it was given"
    if not in_place:
        assert snapshot(value) == value_before, "apply_diff(in_place=False) changed its input"


def wrap(leaf: Any, path: list[Any], filler: Any) -> Any:
    """A structure holding ``leaf`` at ``path`` (int keys make lists, str keys dicts)."""
    value = leaf
    for key in reversed(path):
        value = ([*[filler] * key, value, filler] if isinstance(key, int)
                 else {key: value, key + "~": filler})
    return value


def walk(value: Any, path: list[Any]) -> Any:
    for key in path:
        value = value[key]
    return value


@PROPERTY
@given(
    base=st.text(max_size=10),
    chunks=st.lists(st.text(max_size=6), max_size=8),
    path=st.lists(st.integers(0, 3) | st.text(max_size=3), max_size=5),
    filler=JSON,
    in_place=st.booleans(),
)
def test_apply_diff_appends_concatenate(
    base: str, chunks: list[str], path: list[Any], filler: Any, in_place: bool
) -> None:
    value = wrap(base, path, filler)
    before = snapshot(value)
    result = apply_diff(value, [["append", path, chunk] for chunk in chunks], in_place=in_place)
    assert walk(result, path) == base + "".join(chunks)
    if not in_place:
        assert snapshot(value) == before
    # The rest of the structure is untouched: undoing the appends gives the input back.
    restored = apply_diff(result, [["replace", path, base]])
    assert snapshot(restored) == before


@pytest.mark.parametrize("in_place", [False, True])
def test_apply_diff_survives_extreme_depth(in_place: bool) -> None:
    deep_path: list[Any] = [0] * 10_000
    values = ["a", [], {"a": 1}, nested(50), nested(10_000)]
    edits = [[op, deep_path, "x"] for op in ("replace", "append", "add", "delete", "bogus")]
    edits += [
        ["replace", [0], nested(10_000)],  # a deep new value
        nested(10_000),  # a deep malformed edit (its repr goes into the error)
        ["bogus", [nested(10_000)], 1],
        [nested(10_000), [0], 1],
    ]
    for value in values:
        for edit in edits:
            try:
                result = apply_diff(value, [edit], in_place=in_place)
            except ProtocolError:
                continue
            assert result is not None
    # Depth is fine when the caller owns the value: the path walk is iterative.
    assert walk(apply_diff(nested(10_000), [["replace", deep_path, "y"]], in_place=True),
                deep_path) == "y"


# --- 4. EventTracker ----------------------------------------------------------------------

MSG_TYPES = [
    "process_generating", "process_streaming", "process_completed", "estimation",
    "process_starts", "unexpected_error", "queue_full", "send_data", "send_hash",
    "heartbeat", "progress", "log", "close_stream",
]
ROLE = st.sampled_from(["user", "assistant", "system"]) | JSON
CONTENT = st.one_of(
    st.text(max_size=6),
    st.lists(st.fixed_dictionaries({"type": st.sampled_from(["text", "file"]) | JSON,
                                    "text": st.text(max_size=4) | JSON}), max_size=3),
    JSON,
)
HISTORY = st.one_of(
    st.lists(st.lists(st.none() | st.text(max_size=6) | CONTENT, min_size=2, max_size=2),
             max_size=3),
    st.lists(st.fixed_dictionaries({"role": ROLE, "content": CONTENT}), max_size=3),
    st.lists(st.one_of(st.lists(st.text(max_size=3), max_size=3), st.dictionaries(KEYS, JSON)),
             max_size=3),
    JSON,
)
OUTPUT_DATA = st.one_of(
    st.lists(st.one_of(st.text(max_size=3), HISTORY, DIFF), max_size=3),
    JSON,
)
OUTPUT = st.one_of(
    st.fixed_dictionaries(
        {},
        optional={
            "data": OUTPUT_DATA,
            "is_generating": st.booleans() | JSON,
            "error": st.none() | st.text(max_size=6) | JSON,
        },
    ),
    JSON,
)
MESSAGE = st.fixed_dictionaries(
    {"msg": st.sampled_from(MSG_TYPES) | st.text(max_size=6)},
    optional={
        "event_id": st.sampled_from([None, "e", "other"]) | JSON,
        "output": OUTPUT,
        "success": st.booleans() | JSON,
        "rank": JSON,
        "queue_size": JSON,
        "rank_eta": JSON | st.just(10**400),
        "message": JSON,
    },
)


@PROPERTY
@given(
    messages=st.lists(MESSAGE, max_size=8),
    diffs=st.booleans(),
    chatbot_index=st.integers(0, 3),
)
@example(messages=[{"msg": "estimation", "rank_eta": 10**400}], diffs=True, chatbot_index=1)
def test_event_tracker_returns_text_or_request_error(
    messages: list[dict[str, Any]], diffs: bool, chatbot_index: int
) -> None:
    tracker = EventTracker("e", diffs=diffs, chatbot_index=chatbot_index)
    for message in messages:  # keeps going after errors: every state must stay safe
        try:
            delta = tracker.handle(message)
        except RequestError:
            continue
        assert isinstance(delta, str)
        assert tracker.final_text is None or isinstance(tracker.final_text, str)
        assert tracker.queue_eta is None or isinstance(tracker.queue_eta, float)


def history_of(fmt: str, earlier: list[tuple[str, str]], question: str, answer: str | None) -> Any:
    """A chatbot value in one of the three real formats, the current answer last."""
    if fmt == "tuples":
        return [[q, a] for q, a in earlier] + [[question, answer]]
    turns: list[dict[str, Any]] = []
    for q, a in [*earlier, (question, answer)]:
        turns.append({"role": "user", "content": q})
        if a is not None:
            content: Any = a if fmt == "messages" else [{"type": "text", "text": a}]
            turns.append({"role": "assistant", "content": content})
    return turns


@st.composite
def generation(draw: st.DrawFn) -> tuple[bool, str, list[dict[str, Any]]]:
    """(diffs, answer, messages): one event streaming ``answer`` the way Gradio does."""
    answer = draw(st.text(max_size=30))
    cuts = sorted(draw(st.lists(st.integers(0, len(answer)), max_size=6)))
    bounds = [0, *cuts, len(answer)]
    chunks = [answer[a:b] for a, b in itertools.pairwise(bounds)]
    fmt = draw(st.sampled_from(["tuples", "messages", "blocks"]))
    diffs = draw(st.booleans())
    earlier = draw(st.lists(st.tuples(st.text(max_size=4), st.text(max_size=4)), max_size=2))
    question = draw(st.text(max_size=4))
    start_empty = draw(st.booleans())  # the first message has "" (else: no answer yet)

    def data(answer_so_far: str | None) -> list[Any]:
        return ["", history_of(fmt, earlier, question, answer_so_far), None]

    def generating(output_data: list[Any]) -> dict[str, Any]:
        return {"msg": "process_generating", "event_id": "e", "success": True,
                "output": {"data": output_data, "is_generating": True}}

    messages: list[dict[str, Any]] = [
        {"msg": "estimation", "event_id": "e", "rank": 0, "queue_size": 1, "rank_eta": 1.5},
        {"msg": "process_starts", "event_id": "e"},
        generating(data("" if start_empty else None)),
    ]
    so_far = "" if start_empty else None
    n_turns = len(earlier) + 1
    for chunk in chunks:
        if not diffs:
            so_far = (so_far or "") + chunk
            messages.append(generating(data(so_far)))
            continue
        if fmt == "tuples":
            where: list[Any] = [n_turns - 1, 1]
            edit = ["replace" if so_far is None else "append", where, chunk]
        elif so_far is None:  # messages/blocks: the assistant turn is added by the first edit
            content: Any = chunk if fmt == "messages" else [{"type": "text", "text": chunk}]
            edit = ["add", [2 * n_turns - 1], {"role": "assistant", "content": content}]
        else:
            where = [2 * n_turns - 1, "content"] + ([] if fmt == "messages" else [0, "text"])
            edit = ["append", where, chunk]
        so_far = (so_far or "") + chunk
        messages.append(generating([[], [edit], []]))
    # Noise that must not change the text: heartbeats, another event's messages.
    for _ in range(draw(st.integers(0, 3))):
        noise = draw(st.sampled_from([
            {"msg": "heartbeat"},
            {"msg": "progress", "event_id": "e", "progress_data": None},
            {"msg": "process_generating", "event_id": "other",
             "output": {"data": ["", [["q", "NOT THIS"]], None]}},
        ]))
        messages.insert(draw(st.integers(2, len(messages))), noise)
    messages.append({"msg": "process_completed", "event_id": "e", "success": True,
                     "output": {"data": data(answer), "is_generating": False}})
    return diffs, answer, messages


@PROPERTY
@given(generation())
def test_event_tracker_deltas_concatenate_to_the_answer(
    case: tuple[bool, str, list[dict[str, Any]]],
) -> None:
    diffs, answer, messages = case
    tracker = EventTracker("e", diffs=diffs, chatbot_index=1)
    deltas = [tracker.handle(json.loads(json.dumps(m))) for m in messages]
    assert "".join(deltas) == answer
    assert tracker.done and tracker.final_text == answer and not tracker.diverged
    assert tracker.emitted == answer


def test_event_tracker_survives_messages_at_the_json_depth_limit() -> None:
    """The deepest value parse_message accepts, handled from a deeper stack, is still typed."""
    def texts() -> Iterator[tuple[str, str]]:
        for kind in ("process_generating", "process_completed"):
            start = '{"msg": "' + kind + '", "event_id": "e", "output": {"data": ["", '
            yield start, "]}}"
            yield start + '[["q", ', "]]]}}"
        yield ('{"msg": "process_completed", "event_id": "e", "success": false, '
               '"output": {"error": ', "}}")
        yield '{"msg": "unexpected_error", "message": ', "}"

    for prefix, suffix in texts():
        message = parse_message(deepest_parsable(parse_message, prefix, suffix))
        for diffs in (False, True):
            tracker = EventTracker("e", diffs=diffs)
            # The first generating message sets the state; a second one is a diff in sse_v3.
            for _ in range(2):
                with contextlib.suppress(RequestError):
                    deeper(40, functools.partial(tracker.handle, message))
        with contextlib.suppress(ProtocolError):
            deeper(40, functools.partial(answer_from_history, message.get("output")))


# --- 5. answer_from_history ---------------------------------------------------------------


def check_answer(history: Any) -> None:
    try:
        answer = answer_from_history(history)
    except ProtocolError:
        return
    assert answer is None or isinstance(answer, str)


@PROPERTY
@given(HISTORY)
def test_answer_from_history_returns_text_none_or_protocol_error(history: Any) -> None:
    check_answer(history)


def test_answer_from_history_on_deep_values() -> None:
    # Not @example: hypothesis itself cannot pretty-print values this deep.
    for history in (nested(5000), [nested(5000)], [{"role": "assistant", "content": nested(5000)}],
                    [[nested(5000), nested(5000)]]):
        check_answer(history)


# --- 6. parse_space_config ----------------------------------------------------------------

INT_ISH = st.integers(-2, 5) | st.booleans() | JSON
DEPENDENCY = st.fixed_dictionaries(
    {},
    optional={
        "api_name": st.sampled_from(["model_chat", "other"]) | JSON,
        "id": INT_ISH,
        "targets": st.lists(st.lists(INT_ISH, max_size=2) | JSON, max_size=2) | JSON,
        "inputs": st.lists(INT_ISH, max_size=3) | JSON,
        "outputs": st.lists(INT_ISH, max_size=3) | JSON,
    },
)
COMPONENT = st.fixed_dictionaries(
    {},
    optional={
        "id": INT_ISH,
        "props": st.fixed_dictionaries(
            {}, optional={"type": st.sampled_from(["tuples", "messages", "x"]) | JSON}
        ) | JSON,
    },
)
SPACE_CONFIG = st.fixed_dictionaries(
    {},
    optional={
        "protocol": st.sampled_from([*sorted(SUPPORTED_PROTOCOLS), "ws", "sse"]) | JSON,
        "dependencies": st.lists(DEPENDENCY | JSON, max_size=3) | JSON,
        "components": st.lists(COMPONENT | JSON, max_size=3) | JSON,
        "version": st.sampled_from(["4.44.1", "6.0.1", "²", "٣.1", "9" * 5000, ""]) | JSON,
        "api_prefix": st.sampled_from(["", "/gradio_api/"]) | JSON,
    },
)


@PROPERTY
@given(st.one_of(SPACE_CONFIG, JSON))
@example({"protocol": ["sse_v3"]})
@example({"protocol": "sse_v3", "dependencies": [{"api_name": "model_chat", "targets": [[]]}]})
@example({"protocol": "sse_v3", "dependencies": [{"api_name": "model_chat", "inputs": [0, [1]]}]})
@example({"protocol": "sse_v3", "dependencies": [{"api_name": "model_chat", "inputs": 5}]})
@example({"protocol": "sse_v3", "version": "²", "dependencies": [{"api_name": "model_chat"}]})
def test_parse_space_config_returns_info_or_discovery_error(config: Any) -> None:
    try:
        info = parse_space_config(config)
    except DiscoveryError:
        return
    assert isinstance(info, SpaceInfo) and info.discovered
    assert isinstance(info.api_prefix, str) and not info.api_prefix.endswith("/")
    assert info.protocol in SUPPORTED_PROTOCOLS
    assert type(info.fn_index) is int
    assert info.trigger_id is None or type(info.trigger_id) is int
    assert info.history_format in ("tuples", "messages")
    assert type(info.chatbot_index) is int
    assert info.version is None or isinstance(info.version, str)


# --- 7. readers ---------------------------------------------------------------------------

JSONL_LINE = st.one_of(
    st.dictionaries(KEYS, JSON, max_size=4).map(lambda d: json.dumps(d).encode()),
    JSON.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=30).map(lambda b: b.replace(b"\n", b"")),
    st.text(max_size=10).map(lambda t: t.encode("utf-8", "surrogatepass").replace(b"\n", b"")),
    st.sampled_from([
        b"", b"   ", b"\t\r", b"\x0c", b"\xef\xbb\xbf", b"\xef\xbb\xbf {}", b"\xef\xbb\xbf\r",
        b"[" * 5000, b"{\"a\": " + b"[" * 50_000, b'{"a": ' + b"1" * 5000 + b"}", b"\xff{}",
        b"{}\r", b'{"a": NaN, "b": -Infinity}', b'{"a": "\\ud800"}', b"{} {}", b"null",
    ]),
)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for the files every example rewrites (hypothesis reruns the test body)."""
    return tmp_path_factory.mktemp("properties")


def expected_items(body: bytes, limit: int) -> list[Any]:
    """Per counted line: the dict it must yield, or InputError (the oracle is json.loads)."""
    lines = body.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    out: list[Any] = []
    for lineno, line in enumerate(lines, 1):
        if len(line) > limit:
            out.append(InputError)
            continue
        if lineno == 1 and line.startswith(b"\xef\xbb\xbf"):
            line = line[3:]
        if not line.strip():
            continue
        try:
            value = json.loads(line.decode("utf-8"))
        except (ValueError, RecursionError):
            out.append(InputError)
            continue
        out.append(value if isinstance(value, dict) else InputError)
    return out


def check_records(items: list[Any], body: bytes, limit: int) -> None:
    expected = expected_items(body, limit)
    assert len(items) == len(expected), "every non-blank line gives exactly one item"
    for position, (item, want) in enumerate(zip(items, expected, strict=True)):
        if want is InputError:
            assert isinstance(item, InputError), (item, body)
            assert item.location
        else:
            assert isinstance(item, RawRecord), (item, body)
            assert item.position == position
            assert snapshot(item.values) == snapshot(want)


@PROPERTY
@given(
    lines=st.lists(JSONL_LINE, max_size=8),
    final_newline=st.booleans(),
    limit=st.sampled_from([1_000_000, 1_000_000, 64, 8, 1]),
)
@example(lines=[b"\xef\xbb\xbf", b"{}"], final_newline=True, limit=1_000_000)
def test_read_records_jsonl_yields_one_typed_item_per_line(
    scratch: Path, lines: list[bytes], final_newline: bool, limit: int
) -> None:
    body = b"\n".join(lines) + (b"\n" if final_newline else b"")
    path = scratch / "property.jsonl"
    path.write_bytes(body)
    try:
        from_file = list(read_records(str(path), max_record_bytes=limit))
    except InputFileError as exc:  # no rows at all is a file error, and only that is
        assert "no rows" in str(exc) and not body.removeprefix(b"\xef\xbb\xbf").strip()
        return
    check_records(from_file, body, limit)
    from_stdin = list(read_records("-", max_record_bytes=limit, stdin=io.BytesIO(body)))
    assert [snapshot(getattr(i, "values", str(i))) for i in from_stdin] == [
        snapshot(getattr(i, "values", str(i).replace(str(path), "<stdin>"))) for i in from_file
    ]


def parquet_bytes() -> bytes:
    table = pa.table({
        "id": [1, 2, 3],
        "prompt": ["a", None, "c" * 40],
        "tags": [["x"], [], None],
        "meta": [{"k": 1.5}, None, {"k": -2.0}],
    })
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, row_group_size=2)
    return bytes(sink.getvalue().to_pybytes())


VALID_PARQUET = parquet_bytes()


@st.composite
def mangled_parquet(draw: st.DrawFn) -> bytes:
    data = bytearray(VALID_PARQUET)
    for _ in range(draw(st.integers(1, 8))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    if draw(st.booleans()):
        del data[draw(st.integers(0, len(data))):]
    return bytes(data)


@PROPERTY
@given(st.one_of(
    st.binary(max_size=300),
    st.binary(max_size=200).map(lambda b: b"PAR1" + b + b"PAR1"),
    st.tuples(st.binary(max_size=60), st.integers(0, 2**32 - 1)).map(
        lambda t: b"PAR1" + t[0] + t[1].to_bytes(4, "little") + b"PAR1"),
    mangled_parquet(),
))
@example(VALID_PARQUET)
def test_read_records_parquet_gives_records_or_input_file_error(
    scratch: Path, data: bytes
) -> None:
    path = scratch / "property.parquet"
    path.write_bytes(data)
    try:
        items = read_records(str(path), max_record_bytes=100)
        for position, item in enumerate(items):
            assert isinstance(item, (RawRecord, InputError))
            if isinstance(item, RawRecord):
                assert item.position == position and isinstance(item.values, dict)
    except InputFileError:
        pass


FIELD = st.sampled_from(["prompt", "id", "system", "messages", "a", "b", ""]) | st.text(
    "ab", max_size=2)
MESSAGES = st.lists(
    st.one_of(
        st.fixed_dictionaries({
            "role": st.sampled_from(["system", "user", "assistant", "", "tool"]) | JSON,
            "content": st.sampled_from(["", " ", "hi"]) | st.text(max_size=5) | JSON,
        }),
        JSON,
    ),
    max_size=4,
)
RECORD = st.dictionaries(
    FIELD,
    st.one_of(JSON, MESSAGES, st.sampled_from(["", " ", "{a}", "9999999999", "<", "d", ".9f"]),
              st.integers(10**8, 10**10)),
    max_size=6,
)
TEMPLATE = st.text("ab{}:!rsx.[]0>9d ", max_size=12) | st.sampled_from(
    ["{a}", "{a:{b}}", "{a:>{b}}", "{a:{b}{b}}", "{a!r}", "{a!x}", "{a:{b:{a}}}", "{a:f}",
     "{a:.{b}f}"]
)


@PROPERTY
@given(
    values=RECORD,
    fields=st.tuples(FIELD, FIELD, FIELD, FIELD),
    template=st.none() | TEMPLATE,
    default_system=st.none() | st.text(max_size=3),
    keep=st.lists(FIELD, max_size=3).map(tuple),
)
@example(values={"a": 10**400}, fields=("p", "i", "s", "m"), template="{a:f}",
         default_system=None, keep=())
@example(values={"a": "x", "b": 10**10}, fields=("p", "i", "s", "m"), template="{a:{b}}",
         default_system=None, keep=())
@example(values={"messages": [{"role": "user", "content": " "}]},
         fields=("prompt", "id", "system", "messages"), template=None, default_system=None,
         keep=())
def test_build_prompt_row_gives_a_row_or_input_error(
    values: dict[str, Any],
    fields: tuple[str, str, str, str],
    template: str | None,
    default_system: str | None,
    keep: tuple[str, ...],
) -> None:
    prompt_field, id_field, system_field, messages_field = fields
    try:
        spec = RowSpec(prompt_field=prompt_field, id_field=id_field, system_field=system_field,
                       messages_field=messages_field, template=template,
                       default_system=default_system, keep=keep)
    except ConfigError:
        return
    record = RawRecord(position=7, location="in.jsonl:8", values=values)
    try:
        row = build_prompt_row(record, spec)
    except InputError as exc:
        assert exc.location == "in.jsonl:8"
        return
    assert isinstance(row, PromptRow)
    assert isinstance(row.id, str) and row.id
    assert isinstance(row.prompt, str) and row.prompt.strip(), "a row must carry a prompt"
    assert len(row.prompt) < 1_000_000
    assert row.system is None or isinstance(row.system, str)
    assert set(row.keep) == set(keep)


def test_build_prompt_row_deep_values_from_a_deeper_stack(tmp_path: Path) -> None:
    """The deepest JSON a reader accepts renders to a typed result wherever it is rendered."""
    path = tmp_path / "deep.jsonl"

    def deepest_record(depth: int) -> RawRecord | InputError:
        path.write_text('{"a": ' + "[" * depth + "]" * depth + "}\n")
        (item,) = list(read_records(str(path)))
        return item

    lo, hi = 1, sys.getrecursionlimit() + 100  # the deepest line the reader accepts
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if isinstance(deepest_record(mid), RawRecord) else (lo, mid - 1)
    record = deepest_record(lo)
    assert isinstance(record, RawRecord)
    for template in ("{a}", "{a!r}", "{a!s}", "{a!a}", "{a:>5}"):
        try:
            spec = RowSpec(template=template)
            row = deeper(60, functools.partial(build_prompt_row, record, spec))
        except InputError:
            continue
        assert row.prompt
