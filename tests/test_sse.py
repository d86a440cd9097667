"""The SSE decoder: byte-exact events however the stream is chunked."""

from __future__ import annotations

import pytest
from captures import CapturedStream, captured_streams

from pipeline.errors import ProtocolError
from pipeline.sse import SSEDecoder, SSEEvent

STREAMS = captured_streams()


def decode(*chunks: bytes) -> list[SSEEvent]:
    decoder = SSEDecoder()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(decoder.feed(chunk))
    events.extend(decoder.close())
    return events


def test_captures_are_found() -> None:
    names = {s.name.split("_", 1)[0] for s in STREAMS}
    assert names == {"gradio4.44.1", "gradio6.31.0"}
    assert len(STREAMS) >= 20


@pytest.mark.parametrize("stream", STREAMS, ids=lambda s: s.name)
def test_capture_split_at_every_byte_gives_the_same_events(stream: CapturedStream) -> None:
    whole = decode(stream.body)
    assert [e.data for e in whole] == [
        line[len("data: ") :] for line in stream.body.decode().split("\n") if line.startswith("data: ")
    ]
    for cut in range(1, len(stream.body)):
        assert decode(stream.body[:cut], stream.body[cut:]) == whole, f"split at byte {cut}"


@pytest.mark.parametrize("eol", [b"\r\n", b"\r"], ids=["CRLF", "CR"])
def test_other_line_endings_split_everywhere(eol: bytes) -> None:
    body = STREAMS[0].body
    expected = decode(body)
    converted = body.replace(b"\n", eol)
    assert decode(converted) == expected
    for cut in range(1, len(converted), 7):
        assert decode(converted[:cut], converted[cut:]) == expected, f"split at byte {cut}"
    assert decode(*[converted[i : i + 1] for i in range(len(converted))]) == expected


def test_crlf_split_between_cr_and_lf_is_one_line_end() -> None:
    assert decode(b"data: a\r", b"\n\r", b"\ndata: b\r\n\r\n") == [SSEEvent("a"), SSEEvent("b")]


def test_multiline_data_comments_fields_and_unknown_fields() -> None:
    events = decode(
        b": a comment\n"
        b"event: update\n"
        b"id: 7\n"
        b"retry: 1500\n"
        b"data: first\n"
        b"data:second\n"
        b"data\n"
        b"whatever: ignored\n"
        b"\n"
    )
    assert events == [SSEEvent("first\nsecond\n", "update", "7", 1500)]


def test_only_one_leading_space_is_stripped_and_colons_in_values_kept() -> None:
    assert decode(b"data:  two spaces: x\n\n") == [SSEEvent(" two spaces: x")]


def test_blank_lines_without_data_dispatch_nothing_and_event_name_resets() -> None:
    assert decode(b"\n\nevent: x\n\ndata: y\n\n") == [SSEEvent("y")]


def test_unterminated_event_is_discarded_at_close_and_reported_pending() -> None:
    decoder = SSEDecoder()
    assert decoder.feed(b'data: {"msg":"process_generating"') == []
    assert decoder.pending
    assert decoder.close() == []
    assert not decoder.pending


def test_non_utf8_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError, match="UTF-8"):
        decode(b"data: \xff\xfe\n\n")


def test_utf8_split_inside_a_character() -> None:
    raw = "data: café 日本語 ✓\n\n".encode()
    for cut in range(1, len(raw)):
        assert decode(raw[:cut], raw[cut:]) == [SSEEvent("café 日本語 ✓")]


def test_line_longer_than_the_cap_is_refused() -> None:
    decoder = SSEDecoder(max_line_bytes=64)
    decoder.feed(b"data: " + b"x" * 50)
    with pytest.raises(ProtocolError, match="longer than 64"):
        decoder.feed(b"y" * 50)


def test_an_event_of_many_data_lines_is_capped_too() -> None:
    decoder = SSEDecoder(max_line_bytes=100)
    with pytest.raises(ProtocolError, match="larger than 100"):
        for _ in range(20):
            decoder.feed(b"data: " + b"z" * 10 + b"\n")
