"""Recognising the Hugging Face host's pages for Spaces that are not running."""

from __future__ import annotations

import pytest

from pipeline.hf_status import space_state


@pytest.mark.parametrize(
    ("status", "content_type", "body", "state"),
    [
        (503, "text/html", "<h1>This Space is sleeping</h1>", "sleeping"),
        (503, "text/html", "<p>Space is paused by its owner</p>", "sleeping"),
        (503, "text/html", "<p>Building the Space...</p>", "building"),
        (503, "text/html", "Space is starting up, please wait", "building"),
        (503, "text/html", "<h2>Runtime error</h2><pre>Traceback</pre>", "error"),
        (404, "text/html", "<h1>404</h1><p>Space not found</p>", "gone"),
        (404, "application/json", '{"error":"Repository not found"}', "gone"),
        (503, "application/json", '{"detail":"Queue is full. Max size is 2 and size is 2."}', None),
        (404, "application/json", '{"detail":"Not Found"}', None),
        (502, "text/plain", "Bad Gateway", None),
        (200, "text/html", "sleeping", None),
    ],
)
def test_space_states(status: int, content_type: str, body: str, state: str | None) -> None:
    assert space_state(status, content_type, body) == state
