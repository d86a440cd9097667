"""What a Hugging Face host says when a Space is not running (pure, no I/O).

A Space that sleeps, builds, crashed or was deleted is answered for by the
Hugging Face proxy, not by Gradio: an HTML page (or a JSON error) instead of the
app's JSON. These pages are recognised by their wording; Gradio's own errors
are JSON ``{"detail": ...}`` and never match.
"""

from __future__ import annotations

import re

_STATES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("sleeping", re.compile(r"\b(is|was) (sleeping|paused)\b|\bsleeping\b|\bpaused\b", re.I)),
    ("building", re.compile(r"\b(building|starting|restarting|is starting up|loading)\b", re.I)),
    ("error", re.compile(r"\bruntime error\b|\bbuild error\b|\bconfig error\b", re.I)),
    ("gone", re.compile(r"\b(space|repository) not found\b|\bno such space\b", re.I)),
)


def space_state(status: int, content_type: str, body: str) -> str | None:
    """``sleeping``, ``building``, ``error`` or ``gone`` when the host says so, else None."""
    if status < 400 or status == 429:
        return None
    if "json" in content_type.lower() and '"detail"' in body:
        return None  # Gradio itself answered: the Space runs
    for state, pattern in _STATES:
        if pattern.search(body):
            return state
    return None
