"""Output records in input order with bounded memory: an external merge sort, and ``qwen-batch sort``.

JSONL output is appended in completion order, so a crash loses nothing that
finished; :func:`sort_output` rewrites a finished file in input order
(``position``, then ``sample``). Lines are sorted in memory up to ``run_bytes``,
spilled to sorted temporary run files beyond that, and the runs merged with a
heap, so memory stays bounded for outputs of any size.
"""

from __future__ import annotations

import heapq
import json
import logging
import os
import sys
import tempfile
from collections.abc import Generator, Iterable, Iterator, Mapping
from typing import Any

from pipeline.atomic import replace_atomically
from pipeline.errors import OutputError
from pipeline.lock import OutputLock

log = logging.getLogger(__name__)

SortKey = tuple[int, int]
LAST = sys.maxsize
"""The position given to records without one (from older versions): they sort last."""

RUN_BYTES = 64 << 20
"""Bytes of lines sorted in memory before a run is spilled to disk."""
FAN_IN = 64
"""Runs merged at once (each holds an open file)."""
_OVERHEAD = 160  # bytes a held line costs besides its text (the tuple, the key, the bytes object)


def order_key(record: Mapping[str, Any], *, strict: bool = False) -> SortKey:
    """A record's place in input order: ``(position, sample)``.

    A record without a ``position`` sorts last, or raises ValueError if ``strict``.
    """
    position = record.get("position")
    if isinstance(position, bool) or not isinstance(position, int):
        if strict:
            raise ValueError("the record has no integer 'position'")
        position = LAST
    return position, int(record.get("sample") or 0)


def sort_lines(
    items: Iterable[tuple[SortKey, bytes]], *, run_bytes: int = RUN_BYTES,
    tmp_dir: str | None = None, fan_in: int = FAN_IN,
) -> Generator[tuple[SortKey, bytes], None, None]:
    """``items`` (key, line ending in a newline) sorted by key, in bounded memory.

    Spills sorted runs to a private temporary directory under ``tmp_dir``; it is
    removed when the iterator ends or is closed.
    """
    held: list[tuple[SortKey, bytes]] = []
    size = 0
    with tempfile.TemporaryDirectory(prefix="qwen-batch-sort-", dir=tmp_dir) as scratch:
        runs: list[str] = []
        for key, line in items:
            held.append((key, line))
            size += len(line) + _OVERHEAD
            if size >= run_bytes:
                held.sort()
                runs.append(_write_run(scratch, len(runs), held))
                held, size = [], 0
        held.sort()
        if not runs:
            yield from held
            return
        runs.append(_write_run(scratch, len(runs), held))
        del held
        made = len(runs)
        while len(runs) > fan_in:  # merge in passes: never more than fan_in files open
            group, runs = runs[:fan_in], runs[fan_in:]
            runs.append(_write_run(scratch, made, _merge(group)))
            made += 1
            for path in group:
                os.remove(path)
        yield from _merge(runs)


def _write_run(scratch: str, index: int, items: Iterable[tuple[SortKey, bytes]]) -> str:
    path = os.path.join(scratch, f"run-{index:06d}")
    with open(path, "wb") as run:
        for (position, sample), line in items:
            run.write(b"%d %d " % (position, sample) + line)
    return path


def _read_run(path: str) -> Iterator[tuple[SortKey, bytes]]:
    with open(path, "rb") as run:
        for text in run:
            position, sample, line = text.split(b" ", 2)
            yield (int(position), int(sample)), line


def _merge(paths: list[str]) -> Iterator[tuple[SortKey, bytes]]:
    return heapq.merge(*(_read_run(p) for p in paths))


def sort_output(path: str, *, run_bytes: int = RUN_BYTES) -> tuple[int, bool]:
    """Rewrite the JSONL output ``path`` in input order, atomically; return (records, changed).

    Takes the output's lock first (LockedError while a run writes it). The sorted
    copy is written beside the file, fsynced and renamed over it, so a crash leaves
    either the old file or the new one. A file already in order is left untouched.
    Raises OutputError for a directory, a missing or corrupt file, or a record
    without ``position``.
    """
    if os.path.isdir(path):
        raise OutputError(f"{path} is a directory of parts: sort works on one JSONL file "
                          "(read the parts in order of their 'position' field instead)")
    if not os.path.exists(path):
        raise OutputError(f"{path}: no such file")
    with OutputLock(path):
        directory = os.path.dirname(os.path.abspath(path))
        in_order = True
        count = 0
        last: SortKey = (-1, -1)

        def keyed() -> Iterator[tuple[SortKey, bytes]]:
            nonlocal in_order, count, last
            for lineno, line in _lines(path):
                try:
                    key = order_key(json.loads(line), strict=True)
                except (ValueError, AttributeError, TypeError) as exc:
                    raise OutputError(f"{path}:{lineno}: cannot place this record in input "
                                      f"order ({exc}); was it written by qwen-batch run "
                                      "0.1 or later?") from exc
                in_order = in_order and key >= last
                last = key
                count += 1
                yield key, line

        ordered = sort_lines(keyed(), run_bytes=run_bytes, tmp_dir=directory)
        try:
            first = next(ordered, None)
            if in_order:
                return count, False
            _replace(path, first, ordered)
        finally:
            ordered.close()
        return count, True


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise OutputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    with stream:
        for lineno, line in enumerate(stream, 1):
            if not line.endswith(b"\n"):
                log.warning("%s:%d: leaving out a torn last line (a run was interrupted)",
                            path, lineno)
                return
            if line.strip():
                yield lineno, line


def _replace(path: str, first: tuple[SortKey, bytes] | None,
             rest: Iterator[tuple[SortKey, bytes]]) -> None:
    try:
        with replace_atomically(path, keep_mode=True) as out:
            if first is not None:
                out.write(first[1])
            for _, line in rest:
                out.write(line)
    except OSError as exc:
        raise OutputError(f"cannot rewrite {path}: {exc.strerror or exc}; "
                          "the file is unchanged") from exc
