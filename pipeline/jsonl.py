"""Crash-safe JSONL files: the append-only writer, its reader, and JSONL output.

A record is one line written in a single ``os.write``; a crash leaves at most one torn
last line, dropped when the file is opened again. The output and errors files, and the
journal of Parquet output (:mod:`pipeline.parquet_output`), are all written this way.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO

from pipeline.errors import OutputError
from pipeline.records import Key, encode_record, output_key

log = logging.getLogger(__name__)

_TAIL_CHUNK = 64 * 1024


def repair_torn_tail(fd: int, path: str) -> int:
    """Truncate an unterminated last line (left by a crash); return the new file size."""
    size = os.fstat(fd).st_size
    if size == 0 or os.pread(fd, 1, size - 1) == b"\n":
        return size
    keep, end = 0, size
    while end > 0:  # scan backwards in chunks: the torn line may be long
        start = max(0, end - _TAIL_CHUNK)
        newline = os.pread(fd, end - start, start).rfind(b"\n")
        if newline >= 0:
            keep = start + newline + 1
            break
        end = start
    os.ftruncate(fd, keep)
    log.warning("%s: dropped a torn last line (%d bytes) left by an interrupted run",
                path, size - keep)
    return keep


class JsonlAppender:
    """Appends one JSON line per record; a crash leaves at most one torn line, repaired on open.

    Each record goes out in a single ``os.write`` on an ``O_APPEND`` descriptor, so
    it reaches the kernel whole before ``write`` returns and survives the process
    being killed. ``fsync=True`` also makes it survive power loss (and costs a disk
    flush per record). ``-`` writes to stdout (or ``stdout``) with no repair.
    """

    def __init__(self, path: str, *, fsync: bool = False, stdout: BinaryIO | None = None) -> None:
        self.path = path
        self._fsync = fsync
        self._fd = -1
        self._stream: BinaryIO | None = None
        if path == "-":
            self._stream = stdout if stdout is not None else sys.stdout.buffer
            return
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            raise OutputError(f"cannot open {path} for appending: {exc.strerror or exc}") from exc
        try:
            repair_torn_tail(self._fd, path)
        except OSError as exc:
            self.close()
            raise OutputError(f"cannot repair {path}: {exc.strerror or exc}") from exc

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record as one line; raises OutputError (disk full, closed...)."""
        data = encode_record(record)
        if self._stream is not None:
            try:
                self._stream.write(data)
                self._stream.flush()
            except (OSError, ValueError) as exc:
                raise OutputError(f"cannot write to stdout: {exc}") from exc
            return
        if self._fd < 0:
            raise OutputError(f"{self.path} is closed")
        written = 0
        try:
            while written < len(data):  # a regular file takes it in one go unless nearly full
                written += os.write(self._fd, data[written:])
            if self._fsync:
                os.fsync(self._fd)
        except OSError as exc:
            if 0 < written < len(data):  # take back the partial line so the file stays whole
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, os.fstat(self._fd).st_size - written)
            raise OutputError(f"cannot write to {self.path}: {exc.strerror or exc}") from exc

    def close(self) -> None:
        """Close the file (stdout is only flushed); safe to call twice."""
        if self._stream is not None:
            with contextlib.suppress(OSError, ValueError):
                self._stream.flush()
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def __enter__(self) -> JsonlAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def iter_jsonl_records(path: str, *, end: int | None = None) -> Iterator[dict[str, Any]]:
    """The records of an output or errors file (up to byte ``end``); a missing file has none.

    An unterminated last line is skipped (the appender drops it on open, and the
    row is done again); any other unreadable line raises OutputError naming it.
    """
    try:
        stream = open(path, "rb")  # noqa: SIM115 - closed below
    except FileNotFoundError:
        return
    except OSError as exc:
        raise OutputError(f"cannot read {path}: {exc.strerror or exc}") from exc
    offset = 0
    with stream:
        for lineno, line in enumerate(stream, 1):
            offset += len(line)
            if end is not None and offset > end:
                return
            if not line.endswith(b"\n"):
                log.warning("%s:%d: skipping a torn last line", path, lineno)
                return
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError as exc:
                raise OutputError(
                    f"{path}:{lineno}: corrupt line ({exc}); fix or delete it"
                ) from exc
            if not isinstance(record, dict):
                raise OutputError(f"{path}:{lineno}: expected a JSON object record")
            yield record


class JsonlOutput:
    """JSONL output (or stdout): an appender plus the keys already in the file."""

    def __init__(self, path: str, *, fsync: bool = False, stdout: BinaryIO | None = None) -> None:
        self.path = path
        self._appender = JsonlAppender(path, fsync=fsync, stdout=stdout)
        # Measured after the repair: the keys are those of the lines the file keeps, and
        # only those present at open, even if the keys are read after some writes.
        self._end = 0 if path == "-" else os.path.getsize(path)

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record."""
        self._appender.write(record)

    def close(self) -> None:
        """Close the file."""
        self._appender.close()

    def done_keys(self) -> set[Key]:
        """Keys of the records present at open (read from the file at each call)."""
        return set(self.iter_done_keys())

    def iter_done_keys(self) -> Iterator[Key]:
        """Keys of the records present at open, streamed; OutputError on a corrupt line."""
        if self._end:
            yield from (output_key(r, self.path) for r in iter_jsonl_records(self.path, end=self._end))

    def __enter__(self) -> JsonlOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
