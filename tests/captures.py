"""Read the real Gradio wire captures kept in the repository (``tests/data/gradio-captures``).

They are raw HTTP/SSE transcripts of real gradio 4.44.1 and 6.31.0 servers running the Space's
layout: data, so they live with the tests and a fresh clone needs nothing beside it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

CAPTURES_DIR = Path(__file__).resolve().parent / "data" / "gradio-captures"


@dataclass(frozen=True)
class CapturedStream:
    """The body of one ``queue/data`` response as the server sent it."""

    name: str
    body: bytes

    @property
    def messages(self) -> list[dict]:
        return [
            json.loads(line[len("data: ") :])
            for line in self.body.decode().split("\n")
            if line.startswith("data: ")
        ]


def _sections(text: str) -> list[list[str]]:
    sections: list[list[str]] = []
    for line in text.split("\n"):
        if line.startswith("### "):
            sections.append([line])
        elif sections:
            sections[-1].append(line)
    return sections


def captured_streams() -> list[CapturedStream]:
    """Every complete ``text/event-stream`` body in the captures (JSON on every data line)."""
    streams: list[CapturedStream] = []
    for path in sorted(CAPTURES_DIR.glob("gradio*.txt")):
        for index, section in enumerate(_sections(path.read_text(encoding="utf-8"))):
            header = "\n".join(section[:8]).lower()
            if not section[0].startswith("### GET") or "text/event-stream" not in header:
                continue
            try:
                blank = section.index("", 1)
            except ValueError:
                continue
            body_lines = []
            for line in section[blank + 1 :]:
                if line.startswith("curl:"):
                    break
                body_lines.append(line)
            while body_lines and body_lines[-1] == "":
                body_lines.pop()
            if not body_lines:
                continue
            body = ("\n".join(body_lines) + "\n\n").encode()
            stream = CapturedStream(f"{path.name}#{index}", body)
            try:
                messages = stream.messages
            except ValueError:
                continue  # a capture annotated by hand (timestamps, cut lines)
            # The /call/ API frames full values differently; only queue/data streams here.
            if messages and all(isinstance(m, dict) and "msg" in m for m in messages):
                streams.append(stream)
    return streams


def config(version: str) -> dict:
    """The captured ``/config`` body of the mirror app on that Gradio version."""
    return json.loads((CAPTURES_DIR / f"gradio{version}_config.json").read_text())
