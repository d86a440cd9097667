"""Output as a directory of part files with a bounded number of rows each.

For jobs of millions of rows a single output file is awkward to ship, to read in
parallel, and (for Parquet) costly to finish: :class:`~pipeline.writers.ParquetOutput`
rewrites its file when it closes. Here the records go to ``part-000000.<ext>``,
``part-000001.<ext>``, ...: a part is closed (for Parquet: merged into a complete
file) as soon as it holds ``rows_per_file`` records, and only the last part is ever
open. Each part is an ordinary output of its format, so every part keeps that
format's crash safety; a crash leaves at most the last part unfinished, and the
next run finishes it first, then goes on with new parts.

Resume reads the keys of every part. Nothing here knows a file format: the caller
passes a :class:`PartFormat` (how to open a part for writing and how to read the
keys of a finished one).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from .errors import OutputError

PART_DIGITS = 6

Key = tuple[str, int]


class PartSink(Protocol):
    """The part of an output sink this module drives."""

    path: str

    def write(self, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...

    def iter_done_keys(self) -> Iterator[Key]: ...


@dataclass(frozen=True)
class PartFormat:
    """How to handle one part file.

    ``suffix`` names the parts (``.jsonl``, ``.parquet``); ``open_part(path)`` opens
    a part for appending (resuming an unfinished one); ``read_keys(path)`` lists the
    keys of a finished part without opening it for writing; ``leftovers(path)``
    names the files an unfinished part may have besides ``path`` (a journal), so
    that such a part is found even before its file exists.
    """

    suffix: str
    open_part: Callable[[str], PartSink]
    read_keys: Callable[[str], Iterator[Key]]
    leftovers: Callable[[str], list[str]]


class PartitionedOutput:
    """An output sink writing ``rows_per_file`` records per part into ``directory``."""

    def __init__(self, directory: str, part_format: PartFormat, rows_per_file: int) -> None:
        if rows_per_file < 1:
            raise OutputError("rows per file must be at least 1")
        self.path = directory
        self.format = part_format
        self.rows_per_file = rows_per_file
        if os.path.exists(directory) and not os.path.isdir(directory):
            raise OutputError(f"{directory} is a file; output in parts needs a directory")
        try:
            os.makedirs(directory, exist_ok=True)
        except OSError as exc:
            raise OutputError(f"cannot make the output directory {directory}: "
                              f"{exc.strerror or exc}") from exc
        self._finished = self._existing_parts()
        self._current: PartSink | None = None
        self._current_rows = 0
        self._next_index = 0
        self._closed = False
        if self._finished:
            # The last part may be unfinished (a crash): reopen it, it resumes itself.
            index, path = self._finished.pop()
            self._current = part_format.open_part(path)
            self._current_rows = sum(1 for _ in self._current.iter_done_keys())
            self._next_index = index + 1
        # What resume reads: the parts as they were at open.
        self._opened = [path for _, path in self._finished]
        self._reopened = self._current

    @property
    def parts(self) -> list[str]:
        """Paths of the parts so far, in order (the open one last)."""
        paths = [path for _, path in self._finished]
        if self._current is not None:
            paths.append(self._current.path)
        return paths

    def _part_path(self, index: int) -> str:
        return os.path.join(self.path, f"part-{index:0{PART_DIGITS}d}{self.format.suffix}")

    def _existing_parts(self) -> list[tuple[int, str]]:
        pattern = re.compile(rf"part-(\d{{{PART_DIGITS},}}){re.escape(self.format.suffix)}")
        found: dict[int, str] = {}
        for name in os.listdir(self.path):
            index = self._index_of(name, pattern)
            if index is not None:
                found[index] = self._part_path(index)
        return sorted(found.items())

    def _index_of(self, name: str, pattern: re.Pattern[str]) -> int | None:
        match = pattern.match(name)
        if match is None:
            return None
        path = os.path.join(self.path, match.group(0))
        if name == match.group(0) or name in {
                os.path.basename(p) for p in self.format.leftovers(path)}:
            return int(match.group(1))
        return None

    def write(self, record: Mapping[str, Any]) -> None:
        """Write one record to the open part, starting a new part when it is full."""
        if self._closed:
            raise OutputError(f"{self.path} is closed")
        if self._current is not None and self._current_rows >= self.rows_per_file:
            self._roll()
        if self._current is None:
            self._current = self.format.open_part(self._part_path(self._next_index))
            self._next_index += 1
            self._current_rows = 0
        self._current.write(record)
        self._current_rows += 1

    def _roll(self) -> None:
        assert self._current is not None
        self._current.close()
        self._finished.append((self._next_index - 1, self._current.path))
        self._current = None

    def close(self) -> None:
        """Finish the open part; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        if self._current is not None:
            self._roll()

    def done_keys(self) -> set[Key]:
        """Keys of the records in every part when the output was opened."""
        return set(self.iter_done_keys())

    def iter_done_keys(self) -> Iterator[Key]:
        """The same keys, streamed part by part (read them before the first write)."""
        for path in self._opened:
            yield from self.format.read_keys(path)
        if self._reopened is not None:
            yield from self._reopened.iter_done_keys()

    def __enter__(self) -> PartitionedOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def remove_parts(directory: str) -> int:
    """Delete the part files (and their leftovers) in ``directory``; other files stay."""
    pattern = re.compile(rf"part-\d{{{PART_DIGITS},}}\.")
    removed = 0
    for name in os.listdir(directory):
        if pattern.match(name):
            os.remove(os.path.join(directory, name))
            removed += 1
    return removed
