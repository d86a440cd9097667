"""Server-sent events: bytes in, events out, with no I/O (sans-IO, like h11).

Implements the WHATWG event-stream parsing rules: lines end in CR, LF or CRLF
(a CRLF may be split across two chunks), ``data:`` lines accumulate with ``\\n``,
lines starting with ``:`` are comments, unknown fields are ignored, one space
after the colon is dropped, and an event is dispatched on a blank line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from .errors import ProtocolError

_EOL = re.compile(rb"\r\n|\r|\n")


@dataclass(slots=True)
class SSEEvent:
    """One dispatched event. ``event`` is ``"message"`` when the stream names none.

    Not frozen: a frozen dataclass sets each field through ``object.__setattr__``,
    which is measurable at one event per streamed chunk.
    """

    data: str
    event: str = "message"
    id: str | None = None
    retry: int | None = None


class SSEDecoder:
    """Incremental decoder: call :meth:`feed` with each chunk, :meth:`close` at EOF.

    ``max_line_bytes`` bounds the memory one unterminated line, and one event's
    data, may take; more raises :class:`~pipeline.errors.ProtocolError` instead of
    growing forever.
    """

    __slots__ = ("_buf", "_data", "_data_size", "_event", "_id", "_max_line", "_retry", "_skip_lf")

    def __init__(self, max_line_bytes: int | None = None) -> None:
        self._buf = b""
        self._skip_lf = False
        self._max_line = max_line_bytes
        self._data: list[str] = []
        self._data_size = 0
        self._event = ""
        self._id: str | None = None
        self._retry: int | None = None

    @property
    def pending(self) -> bool:
        """True when bytes or fields of an undispatched event are held."""
        return bool(self._buf or self._data or self._event)

    def feed(self, chunk: bytes) -> list[SSEEvent]:
        """Take the next bytes of the stream; return the events they complete."""
        if not chunk:
            return []
        if self._skip_lf:
            self._skip_lf = False
            if chunk[:1] == b"\n":
                chunk = chunk[1:]
        buf = self._buf + chunk if self._buf else chunk
        events: list[SSEEvent] = []
        if b"\r" not in buf:
            # Fast path: the LF-only streams every Gradio server sends, nearly all of whose
            # lines are ``data:`` lines and blank lines, handled here without a call each.
            lines = buf.split(b"\n")
            self._buf = lines.pop()
            for line in lines:
                if line[:5] == b"data:":
                    try:
                        value = (line[6:] if line[5:6] == b" " else line[5:]).decode("utf-8")
                    except UnicodeDecodeError as exc:
                        raise ProtocolError(
                            f"server-sent event line is not valid UTF-8: {exc}") from None
                    self._data.append(value)
                    self._data_size += len(value)
                    if self._max_line is not None and self._data_size > self._max_line:
                        raise ProtocolError(
                            f"server-sent event larger than {self._max_line} bytes")
                elif line or not self._data:
                    self._line(line, events)
                else:  # a blank line after data: dispatch
                    data = self._data
                    events.append(SSEEvent(data[0] if len(data) == 1 else "\n".join(data),
                                           self._event or "message", self._id, self._retry))
                    self._data = []
                    self._data_size = 0
                    self._event = ""
        else:
            start = 0
            for match in _EOL.finditer(buf):
                if match.end() == len(buf) and match.group() == b"\r":
                    self._skip_lf = True  # a following LF belongs to this CR
                self._line(buf[start : match.start()], events)
                start = match.end()
            self._buf = buf[start:]
        if self._max_line is not None and len(self._buf) > self._max_line:
            raise ProtocolError(
                f"server-sent event line longer than {self._max_line} bytes"
            )
        return events

    def close(self) -> list[SSEEvent]:
        """Signal end of stream. Per the spec an unterminated event is discarded."""
        self._buf = b""
        self._data = []
        self._data_size = 0
        self._event = ""
        return []

    def _line(self, raw: bytes, events: list[SSEEvent]) -> None:
        if not raw:
            if self._data:
                events.append(
                    SSEEvent("\n".join(self._data), self._event or "message", self._id, self._retry)
                )
            self._data = []
            self._data_size = 0
            self._event = ""
            return
        line = _decode(raw)
        if line[0] == ":":
            return
        name, sep, value = line.partition(":")
        if sep and value[:1] == " ":
            value = value[1:]
        if name == "data":
            self._append(value)
        elif name == "event":
            self._event = value
        elif name == "id":
            if "\0" not in value:
                self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)

    def _append(self, value: str) -> None:
        self._data.append(value)
        self._data_size += len(value)
        if self._max_line is not None and self._data_size > self._max_line:
            raise ProtocolError(f"server-sent event larger than {self._max_line} bytes")


def _decode(raw: bytes) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"server-sent event line is not valid UTF-8: {exc}") from None
