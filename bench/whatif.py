#!/usr/bin/env python3
"""What-if runs: ``qwen-batch run`` with proposed hot-path changes applied from outside.

    python bench/whatif.py --patch sse,tracker -- run prompts.jsonl -o out.jsonl --url ...

Monkeypatches ``pipeline`` in this process (nothing in ``pipeline/`` changes), then
runs the normal CLI. Used by ``run_all.py --only whatif`` to measure how much each
proposed change would buy at zero latency before anyone edits the code.

Patches:

* ``sse``: ``SSEEvent`` as a plain ``__slots__`` class instead of a frozen dataclass
  (a frozen dataclass's ``__init__`` goes through ``object.__setattr__`` per field);
* ``tracker``: the batch path (``complete()``) does not need text deltas, so
  ``process_generating`` messages only mark the start and count as a chunk: no deep
  copy, no diff application, no answer re-extraction, no prefix comparison. The answer
  still comes from ``process_completed`` (streaming callers would keep the full path);
* ``reader``: the Parquet reader streams pages and releases memory (see
  ``mem_probe.patch_reader``).
"""

from __future__ import annotations

import sys
from typing import Any

PATCHES = ("sse", "tracker", "reader")


def patch_sse() -> None:
    import pipeline.sse as sse

    class SSEEvent:
        __slots__ = ("data", "event", "id", "retry")

        def __init__(self, data: str, event: str = "message", id: str | None = None,
                     retry: int | None = None) -> None:
            self.data, self.event, self.id, self.retry = data, event, id, retry

    sse.SSEEvent = SSEEvent  # type: ignore[misc,assignment]


def patch_tracker() -> None:
    from pipeline.gradio import EventTracker

    def _generating(self: Any, message: Any) -> str:
        self.started = True
        return "\x00"  # counted as a chunk; complete() never yields it

    EventTracker._generating = _generating  # type: ignore[method-assign]


def patch_reader() -> None:
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parent))
    from mem_probe import patch_reader as apply

    apply()


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    patches: list[str] = []
    if args[:1] == ["--patch"]:
        patches = [p for p in args[1].split(",") if p]
        args = args[2:]
    if args[:1] == ["--"]:
        args = args[1:]
    for name in patches:
        if name not in PATCHES:
            sys.exit(f"unknown patch {name!r}; known: {PATCHES}")
        globals()[f"patch_{name}"]()
    from pipeline.cli import main as cli_main

    cli_main(args, prog_name="qwen-batch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
