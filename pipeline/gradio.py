"""Gradio queue messages: decoding, streaming diffs, and the answer of one event.

Pure functions and one small state machine (:class:`EventTracker`); no I/O.
The message catalogue and the diff format are described in PROTOCOL.md §3.5-3.7.
"""

from __future__ import annotations

import copy
import json
import reprlib
from collections.abc import Mapping
from typing import Any

from .errors import (
    AppError,
    CancelledJobError,
    IncompleteResponseError,
    ProtocolError,
    QueueFullError,
    ServerError,
)

DIFF_PROTOCOLS = frozenset({"sse_v2", "sse_v2.1", "sse_v3"})
"""Protocols whose ``process_generating`` messages after the first carry edit ops."""

_GENERATING = frozenset({"process_generating", "process_streaming"})
_INFORMATIONAL = frozenset({"heartbeat", "progress", "log", "close_stream", "send_hash"})
_HIDDEN_ERROR = (
    "the Space's function raised an error and hides its details (success:false, error:null)"
)

_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxstring, _REPR.maxother = 3, 80, 80


def _short(value: Any) -> str:
    """A bounded repr of a server-sent value for error messages (no deep recursion)."""
    return _REPR.repr(value)


def _copy(value: Any) -> Any:
    """Deep-copy a decoded JSON value; one nested too deeply is a protocol error."""
    try:
        return copy.deepcopy(value)
    except RecursionError:
        raise ProtocolError("message value is nested too deeply") from None


def parse_message(data: str) -> dict[str, Any]:
    """Decode one ``data:`` payload into a message dict with a string ``msg``."""
    try:
        message = json.loads(data)
    except (ValueError, RecursionError) as exc:  # RecursionError: nested too deeply
        raise ProtocolError(f"event data is not JSON ({exc}): {data[:120]!r}") from None
    if not isinstance(message, dict) or not isinstance(message.get("msg"), str):
        raise ProtocolError(f"event data is not a Gradio message: {data[:120]!r}")
    return message


def _step(target: Any, key: Any) -> Any:
    try:
        return target[key]
    except (IndexError, KeyError, TypeError) as exc:
        raise ProtocolError(
            f"diff path step {_short(key)} not found ({type(exc).__name__})"
        ) from None


def apply_diff(value: Any, diff: Any, *, in_place: bool = False) -> Any:
    """Apply a list of ``[op, path, value]`` edits, in order, and return the result.

    Unless ``in_place`` (for state the caller owns alone) it works on deep copies
    and changes neither ``value`` nor ``diff``. Ops: ``replace`` sets, ``append``
    concatenates (``+=``), ``add`` inserts into a list or sets a dict key,
    ``delete`` removes. An empty path means the root.
    """
    if not isinstance(diff, list):
        raise ProtocolError(f"diff must be a list of edits, got {type(diff).__name__}")
    if not in_place:
        value = _copy(value)
    for edit in diff:
        if not isinstance(edit, (list, tuple)) or len(edit) != 3 or not isinstance(edit[1], list):
            raise ProtocolError(f"malformed diff edit: {_short(edit)}")
        action, path, new = edit
        if not in_place:
            new = _copy(new)  # later edits may change what this one inserts
        if not path:
            if action == "replace":
                value = new
            elif action == "append":
                value = _concat(value, new)
            else:
                raise ProtocolError(f"diff op {_short(action)} needs a non-empty path")
            continue
        parent = value
        for key in path[:-1]:
            parent = _step(parent, key)
        last = path[-1]
        try:
            if action == "replace":
                parent[last] = new
            elif action == "append":
                parent[last] = _concat(parent[last], new)
            elif action == "add":
                if isinstance(parent, list):
                    parent.insert(int(last), new)
                else:
                    parent[last] = new
            elif action == "delete":
                del parent[last]
            else:
                raise ProtocolError(f"unknown diff op {_short(action)}")
        except (IndexError, KeyError, TypeError, ValueError, OverflowError) as exc:
            raise ProtocolError(
                f"diff op {_short(action)} at {_short(path)} failed ({type(exc).__name__})"
            ) from None
    return value


def _concat(old: Any, new: Any) -> Any:
    try:
        return old + new
    except (TypeError, OverflowError):  # OverflowError: a float plus a huge int
        raise ProtocolError(
            f"cannot append {type(new).__name__} to {type(old).__name__}"
        ) from None


def _message_text(content: Any) -> str:
    """Text of a Gradio 5/6 message ``content``: a string or a list of blocks."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [
            block.get("text", "")
            for block in content
            if isinstance(block, Mapping) and block.get("type", "text") == "text"
        ]
        return "".join(p for p in parts if isinstance(p, str))
    if isinstance(content, Mapping) and isinstance(content.get("text"), str):
        return str(content["text"])
    return ""


def answer_from_history(history: Any) -> str | None:
    """The text of the **last** assistant turn, or None if there is none yet.

    Handles tuple history (``[[user, bot], ...]``, Gradio 4/5) and message history
    (``[{"role", "content"}, ...]``, Gradio 5 ``type="messages"`` and Gradio 6).
    """
    if not isinstance(history, list):
        raise ProtocolError(f"chatbot value is not a list: {type(history).__name__}")
    for item in reversed(history):
        if isinstance(item, Mapping):
            role = item.get("role")
            if role == "assistant":
                return _message_text(item.get("content"))
            if role == "user":
                return None  # the newest turn is the question: no answer yet
            continue
        if isinstance(item, (list, tuple)) and len(item) == 2:
            bot = item[1]
            if bot is None:
                return None
            return bot if isinstance(bot, str) else _message_text(bot)
        raise ProtocolError(f"unrecognised chatbot history item: {_short(item)}")
    return None


class EventTracker:
    """Follows one queued event's messages and turns them into text deltas.

    Feed every message of the session to :meth:`handle`; it returns the new text
    (``""`` when a message adds none) and raises the typed error an event ends
    with. ``final_text`` is set from ``process_completed``, the authoritative
    value. If the streamed text ever stops being a prefix of the answer (a
    ``replace`` rewrote it), nothing more is streamed and ``diverged`` is set:
    the caller decides whether the final text may still be used.

    With ``track_text=False`` (a caller that wants only the final answer) the
    streamed chunks are not applied: each one only adds the length of the text it
    appends to ``text_chars``, and ``handle`` returns ``""`` until the end. Either
    way ``grew`` tells whether the last message added text (for time-to-first-token,
    chunk counts and idle timeouts) and ``text_chars`` how long the answer is so far.
    """

    __slots__ = (
        "_chatbot",
        "_diffs",
        "_outputs",
        "_track",
        "diverged",
        "done",
        "emitted",
        "event_id",
        "final_text",
        "grew",
        "queue_eta",
        "queue_rank",
        "queue_size",
        "started",
        "text_chars",
    )

    def __init__(self, event_id: str, *, diffs: bool = True, chatbot_index: int = 1,
                 track_text: bool = True) -> None:
        self.event_id = event_id
        self._diffs = diffs
        self._track = track_text
        self.grew = False
        self.text_chars = 0
        self._chatbot = chatbot_index
        self._outputs: list[Any] | None = None
        self.emitted = ""
        self.diverged = False
        self.started = False
        self.done = False
        self.final_text: str | None = None
        self.queue_rank: int | None = None
        self.queue_size: int | None = None
        self.queue_eta: float | None = None

    def handle(self, message: Mapping[str, Any]) -> str:
        """Process one decoded message; return the text it adds to the answer."""
        kind = message.get("msg")
        self.grew = False
        event_id = message.get("event_id")
        if event_id is not None and event_id != self.event_id:
            return ""  # another event on a shared session
        if kind in _GENERATING:
            self.started = True
            return self._generating(message)
        if kind == "process_completed":
            return self._completed(message)
        if kind == "estimation":
            rank, size, eta = message.get("rank"), message.get("queue_size"), message.get("rank_eta")
            self.queue_rank = rank if isinstance(rank, int) else None
            self.queue_size = size if isinstance(size, int) else None
            try:
                self.queue_eta = float(eta) if isinstance(eta, (int, float)) else None
            except OverflowError:  # an int too large for a float
                self.queue_eta = None
            return ""
        if kind == "process_starts":
            self.started = True
            return ""
        if kind == "unexpected_error":
            text = message.get("message") or "unexpected error"
            raise ServerError(f"server reported: {text if isinstance(text, str) else _short(text)}")
        if kind == "queue_full":
            raise QueueFullError("queue is full (in-stream queue_full)", status=503)
        if kind in ("send_data", "send_hash"):
            raise ProtocolError(f"server speaks an old Gradio protocol (got {kind!r})")
        return ""  # heartbeat, progress, log, close_stream and future types

    def _answer(self, outputs: Any) -> str | None:
        if not isinstance(outputs, list) or len(outputs) <= self._chatbot:
            raise ProtocolError(f"output data has no chatbot value at index {self._chatbot}")
        return answer_from_history(outputs[self._chatbot])

    def _generating(self, message: Mapping[str, Any]) -> str:
        output = message.get("output")
        data = output.get("data") if isinstance(output, Mapping) else None
        if not isinstance(data, list):
            raise ProtocolError("process_generating without output.data")
        if self._outputs is None or not self._diffs:
            self._outputs = data  # a freshly decoded message: ours alone, no copy needed
        elif not self._track:
            return self._measure(data)
        else:
            if len(data) != len(self._outputs):
                raise ProtocolError("diff message has a different number of outputs")
            for i, edits in enumerate(data):
                if edits:
                    self._outputs[i] = apply_diff(self._outputs[i], edits, in_place=True)
        answer = self._answer(self._outputs)
        return self._advance(answer) if answer is not None else ""

    def _measure(self, data: list[Any]) -> str:
        """Untracked diff message: count the text it adds to the chatbot, apply nothing."""
        if len(data) <= self._chatbot:
            raise ProtocolError(f"output data has no chatbot value at index {self._chatbot}")
        edits = data[self._chatbot]
        if not isinstance(edits, list):
            raise ProtocolError(f"diff must be a list of edits, got {type(edits).__name__}")
        added = 0
        for edit in edits:
            if not isinstance(edit, (list, tuple)) or len(edit) != 3:
                raise ProtocolError(f"malformed diff edit: {_short(edit)}")
            if isinstance(edit[2], str):
                added += len(edit[2])
        if added:
            self.grew = True
            self.text_chars += added
        return ""

    def _advance(self, answer: str) -> str:
        if not self._track:
            if len(answer) != self.text_chars:
                self.grew = len(answer) > self.text_chars
                self.text_chars = len(answer)
            return ""
        if self.diverged:
            return ""
        emitted = self.emitted
        if answer.startswith(emitted):
            delta = answer[len(emitted) :]
            self.emitted = answer
            self.grew = bool(delta)
            self.text_chars = len(answer)
            return delta
        self.diverged = True
        return ""

    def _completed(self, message: Mapping[str, Any]) -> str:
        self.done = True
        output = message.get("output")
        if not isinstance(output, Mapping):
            raise ProtocolError("process_completed without an output object")
        if message.get("success") is False or "error" in output:
            error = output.get("error")
            raise AppError(
                (error if isinstance(error, str) else _short(error)) if error else _HIDDEN_ERROR
            )
        data = output.get("data")
        if data is None:
            raise CancelledJobError("the server completed the job as cancelled (no output)")
        if output.get("is_generating") is True:
            raise IncompleteResponseError("the job completed while marked still generating")
        answer = self._answer(data)
        self.final_text = answer if answer is not None else ""
        return self._advance(self.final_text)
