"""SSE messages of the Gradio queue protocol, byte-for-byte as 4.44.1 and 6.31.0 send them.

Every function returns one complete SSE frame, ``"data: <compact JSON>\\n\\n"``.
Field order follows the captures in ``gradio-captures/``; the hot per-chunk
messages are built from string templates so a chunk costs one ``json.dumps`` of
its text only.
"""

from __future__ import annotations

import json
from typing import Any

HEARTBEAT = 'data: {"msg":"heartbeat","event_id":null}\n\n'
CLOSE_STREAM = 'data: {"msg":"close_stream","event_id":null}\n\n'
SERVER_STOPPED = (
    'data: {"msg":"unexpected_error","event_id":null,'
    '"message":"Server stopped unexpectedly.","success":false}\n\n'
)
# The frame the `bad_json` fault slips into a stream: a data line that is not JSON.
BAD_JSON = 'data: {"msg": "process_generating", oops\n\n'
# The tail of a 6.x process_completed that carries no output values.
_V6_NO_CACHE = ',"used_cache":null,"cache_duration":null,"avg_time":null}\n\n'


def _dumps(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


def frame(obj: Any) -> str:
    """One SSE frame carrying ``obj`` as compact JSON."""
    return "data: " + _dumps(obj) + "\n\n"


class Wire:
    """Message builder for one Gradio major version (4 or 6)."""

    def __init__(self, major: int) -> None:
        self.major = major
        self.v6 = major == 6
        # Tails of process_generating after the data list / after "duration".
        if self.v6:
            self._gen_tail = ',"render_config":null,"changed_state_ids":[],"used_cache":null}'
            self._gen_end = ',"success":true,"time_limit":null}\n\n'
        else:
            self._gen_tail = ',"render_config":null,"changed_state_ids":[]}'
            self._gen_end = ',"success":true}\n\n'

    def unknown_session(self) -> str:
        """The ``unexpected_error`` of a data stream opened for an unknown session."""
        if self.v6:
            return (
                'data: {"msg":"unexpected_error","event_id":null,"message":"404: Not Found",'
                '"session_not_found":true,"success":false}\n\n'
            )
        return (
            'data: {"msg":"unexpected_error","event_id":null,'
            '"message":"404: Session not found.","success":false}\n\n'
        )

    def estimation(self, event_id: str, rank: int, queue_size: int) -> str:
        """Queue position of a waiting (or just-joined) event."""
        return (
            f'data: {{"msg":"estimation","event_id":"{event_id}","rank":{rank},'
            f'"queue_size":{queue_size},"rank_eta":null}}\n\n'
        )

    def process_starts(self, event_id: str) -> str:
        """The event left the queue and runs now."""
        return f'data: {{"msg":"process_starts","event_id":"{event_id}","eta":null}}\n\n'

    def generating_full(self, event_id: str, data: list[Any], duration: float, avg: float) -> str:
        """First process_generating of an event: full output values."""
        return (
            f'data: {{"msg":"process_generating","event_id":"{event_id}",'
            f'"output":{{"data":{_dumps(data)},"is_generating":true,'
            f'"duration":{duration!r},"average_duration":{avg!r}{self._gen_tail}{self._gen_end}'
        )

    def generating_append(
        self, event_id: str, path_json: str, text: str, duration: float, avg: float
    ) -> str:
        """Later process_generating: one ``append`` op on the chatbot (output 1) only."""
        return (
            f'data: {{"msg":"process_generating","event_id":"{event_id}",'
            f'"output":{{"data":[[],[["append",{path_json},{_dumps(text)}]],[]],'
            f'"is_generating":true,"duration":{duration!r},"average_duration":{avg!r}'
            f"{self._gen_tail}{self._gen_end}"
        )

    def completed(self, event_id: str, data: list[Any], duration: float, avg: float) -> str:
        """Successful process_completed with the full final values."""
        output: dict[str, Any] = {
            "data": data,
            "is_generating": False,
            "duration": duration,
            "average_duration": avg,
            "render_config": None,
            "changed_state_ids": [],
        }
        msg: dict[str, Any] = {
            "msg": "process_completed",
            "event_id": event_id,
            "output": output,
            "success": True,
        }
        if self.v6:
            output["used_cache"] = None
            msg.update(title=None, used_cache=None, cache_duration=duration, avg_time=avg)
        return frame(msg)

    def error(self, event_id: str, yielded: bool) -> str:
        """process_completed of a failed event (exception, show_error=False).

        6.31.0 says ``"title":"Error"`` when the function failed before its first
        yield (or in preprocessing) and ``"title":null`` when it failed after
        yielding (captures ``05_exception_RAISE`` vs ``05_exception_RAISE_LATER``).
        """
        head = (
            f'data: {{"msg":"process_completed","event_id":"{event_id}",'
            '"output":{"error":null},"success":false'
        )
        if self.v6:
            title = "null" if yielded else '"Error"'
            return f'{head},"title":{title}{_V6_NO_CACHE}'
        return head + "}\n\n"

    def cancelled(self, event_id: str) -> str:
        """process_completed of a cancelled event: empty output, success true."""
        head = (
            f'data: {{"msg":"process_completed","event_id":"{event_id}",'
            '"output":{},"success":true'
        )
        if self.v6:
            return f'{head},"title":null{_V6_NO_CACHE}'
        return head + "}\n\n"

    # History shapes -------------------------------------------------------------

    def message(self, role: str, text: str) -> dict[str, Any]:
        """A 6.x chatbot message with one text content block."""
        return {
            "role": role,
            "metadata": None,
            "content": [{"text": text, "type": "text"}],
            "options": None,
        }

    def normalize_history(self, history: Any) -> list[Any] | None:
        """The chatbot input as the app would see it, or None if preprocessing fails.

        4.x wants ``[[user, bot], ...]`` pairs. 6.x wants message dicts whose
        ``content`` is a list of ``{"type": "text", "text": ...}`` blocks; plain
        string content fails (capture ``03b``), like any other shape.
        """
        if history is None:
            return []
        if not isinstance(history, list):
            return None
        if not self.v6:
            out4: list[Any] = []
            for pair in history:
                if not isinstance(pair, list) or len(pair) != 2:
                    return None
                if not all(x is None or isinstance(x, str) for x in pair):
                    return None
                out4.append([pair[0], pair[1]])
            return out4
        out6: list[Any] = []
        for m in history:
            if not isinstance(m, dict) or m.get("role") not in ("user", "assistant", "system"):
                return None
            content = m.get("content")
            if not isinstance(content, list):
                return None
            blocks = []
            for b in content:
                if not isinstance(b, dict) or b.get("type") != "text":
                    return None
                if not isinstance(b.get("text"), str):
                    return None
                blocks.append({"text": b["text"], "type": "text"})
            out6.append(
                {
                    "role": m["role"],
                    "metadata": m.get("metadata"),
                    "content": blocks,
                    "options": m.get("options"),
                }
            )
        return out6

    def with_answer(self, history: list[Any], query: str, answer: str) -> list[Any]:
        """``history`` plus the new turn whose reply is ``answer`` (a new list)."""
        if self.v6:
            return [*history, self.message("user", query), self.message("assistant", answer)]
        return [*history, [query, answer]]

    def answer_path(self, history: list[Any]) -> str:
        """JSON of the diff path to the reply text of the new turn."""
        if self.v6:
            return f'[{len(history) + 1},"content",0,"text"]'
        return f"[{len(history)},1]"
