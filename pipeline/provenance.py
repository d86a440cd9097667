"""Which input an output was made from: the ``<output>.input.json`` note, checked on resume.

Resume skips every row whose id is already in the output, so an output resumed with
the wrong input would skip rows never done (an unrelated file with ids 1, 2, 3...).
Each run therefore notes its input beside the output: path, size, format, and a
fingerprint (id, prompt and system prompt) of each of its first ``HEAD_ROWS`` rows.
A resumed run reads its input from the start until it has found at least half of the
rows noted last time, wherever they are now: rows appended, inserted, edited, deleted
or moved pass; a different file does not (the whole file is read to be sure), and
the run stops with a usage error naming both inputs, unless ``--resume-any``. Every
run that goes ahead notes its own input again, so an input that grows night after
night is compared with the night before.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from .atomic import replace_atomically
from .columns import close_records
from .digests import digest64
from .errors import ConfigError, InputError, OutputError
from .jobs import KeySet, plan_rows
from .models import Failure, PromptRow, RawRecord
from .rowspec import RowSpec

log = logging.getLogger(__name__)

NOTE_SUFFIX = ".input.json"
HEAD_ROWS = 100
"""Rows fingerprinted into the note; a resumed input must still hold half of them."""
_VERSION = 1


@dataclass(frozen=True)
class InputNote:
    """What the note says about an input."""

    path: str
    format: str
    size: int | None
    head: tuple[str, ...]
    """Fingerprints of the first good rows (:func:`fingerprint`)."""

    def describe(self) -> str:
        """The input as a person would name it."""
        return self.path if self.size is None else f"{self.path} ({self.size} bytes)"

    def to_json(self) -> str:
        """The note's text."""
        return json.dumps({"version": _VERSION, "path": self.path, "format": self.format,
                           "size": self.size, "head": list(self.head)}, indent=1) + "\n"


def note_path(output: str) -> str:
    """The note of an output (beside it, like its lock; a directory output's too)."""
    return output + NOTE_SUFFIX


def fingerprint(row: PromptRow) -> str:
    """16 hex digits of a row's id and request: the same row in the same input matches."""
    return f"{digest64(json.dumps([row.id, row.prompt, row.system])):016x}"


def describe_input(path: str, fmt: str, head: Iterable[str] = ()) -> InputNote:
    """A note of the input at ``path`` (``-``: stdin) with the given head fingerprints."""
    if path == "-":
        return InputNote("<stdin>", fmt, None, tuple(head))
    try:
        size: int | None = os.path.getsize(path)
    except OSError:
        size = None
    return InputNote(os.path.abspath(path), fmt, size, tuple(head))


def read_note(output: str) -> InputNote | None:
    """The note of ``output``; None when there is none (or it is unreadable: logged)."""
    path = note_path(output)
    try:
        with open(path, encoding="utf-8") as handle:
            data: Any = json.load(handle)
        return InputNote(str(data["path"]), str(data["format"]),
                         None if data.get("size") is None else int(data["size"]),
                         tuple(str(fp) for fp in data["head"]))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("%s is unreadable (%s): the input is checked as if it were absent", path, exc)
        return None


def write_note(output: str, note: InputNote) -> None:
    """Write the note of ``output`` atomically; OutputError if it cannot be written."""
    path = note_path(output)
    try:
        with replace_atomically(path) as handle:
            handle.write(note.to_json().encode("utf-8"))
    except OSError as exc:
        raise OutputError(f"cannot write {path}: {exc.strerror or exc}") from exc


def check_input(
    output: str,
    current: InputNote,
    rows: Iterable[PromptRow | Failure],
    *,
    recorded: InputNote | None,
    done: Callable[[str], bool] | None,
) -> InputNote:
    """The note of the input whose rows (from its start) are ``rows``; ConfigError if it is
    not the input ``output`` was made from.

    With a ``recorded`` note: at least half of its rows must be found in ``rows``.
    Without one, ``done`` (whether an id is in the output; None when the output is
    empty) must know at least one of the first rows: an output written before notes
    existed, by another input or by ids that meant something else, is refused.
    """
    wanted = set(recorded.head) if recorded is not None else set()
    needed = (len(wanted) + 1) // 2
    head: list[str] = []
    found = 0
    any_done = False
    for row in rows:
        if not isinstance(row, PromptRow):
            continue
        mark = fingerprint(row)
        if len(head) < HEAD_ROWS:
            head.append(mark)
            any_done = any_done or (done is not None and done(row.id))
        if mark in wanted:
            wanted.discard(mark)
            found += 1
        if len(head) >= HEAD_ROWS and found >= needed:
            break
    note = InputNote(current.path, current.format, current.size, tuple(head))
    if recorded is not None and found < needed:
        raise ConfigError(
            f"{output} holds the results of another input: it was made from "
            f"{recorded.describe()}, and {current.describe()} has only {found} of the "
            f"{len(recorded.head)} rows noted from it (ids and prompts compared; {needed} "
            "needed). Resuming would skip rows of this input that were never done. Give the "
            "input it was made from, write elsewhere with -o, start afresh with --overwrite, "
            "or add to it anyway with --resume-any."
        )
    if recorded is None and done is not None and head and not any_done:
        raise ConfigError(
            f"{output} has records, but none of the first {len(head)} rows of "
            f"{current.describe()} is among them, and no {note_path(output)} says which "
            "input it was made from: it was made from another input, or by an earlier "
            "qwen-batch that gave rows without an id their position as id (the id now comes "
            "from the row's content). Write elsewhere with -o, start afresh with --overwrite, "
            "or add to it anyway with --resume-any (rows without an id are then done again)."
        )
    return note


def verify_input(
    output: str,
    input_path: str,
    fmt: str,
    records: Iterable[RawRecord | InputError],
    spec: RowSpec,
    done: KeySet,
    *,
    samples: int = 1,
    check: bool = True,
) -> None:
    """Refuse to resume ``output`` from another input (if ``check``), then note this one.

    ``records`` are the input's from its start (a fresh read; for stdin, its first
    rows), turned into rows with the ids the run's plan gives them.
    """
    rows = plan_rows(records, spec, done=KeySet())
    try:
        note = check_input(
            output, describe_input(input_path, fmt), rows,
            recorded=read_note(output) if check else None,
            done=(lambda row_id: any((row_id, s) in done for s in range(samples)))
            if check and len(done) else None)
    finally:
        close_records(rows)
        close_records(records)
    write_note(output, note)
