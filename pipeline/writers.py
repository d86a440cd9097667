"""Crash-safe, resumable output sinks: append-only JSONL, and the choice of output by format.

Parquet output lives in :mod:`pipeline.parquet_output`, imported only when chosen, so
a JSONL run never imports pyarrow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, BinaryIO, Protocol

from pipeline.errors import ConfigError, OutputError
from pipeline.partitioned import PartFormat, PartitionedOutput
from pipeline.records import encode_record, record_key

log = logging.getLogger(__name__)

Key = tuple[str, int]

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json-lines")
PARQUET_SUFFIXES = (".parquet", ".pq")
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


class OutputSink(Protocol):
    """What the runner writes results to."""

    path: str

    def write(self, record: Mapping[str, Any]) -> None:
        """Store one record durably (at least against a crash of this process)."""

    def close(self) -> None:
        """Finish the output; safe to call twice."""

    def done_keys(self) -> set[Key]:
        """Keys of the records present when the output was opened (for resuming)."""

    def iter_done_keys(self) -> Iterator[Key]:
        """The same keys one by one, to fill a compact set without holding tuples."""


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


def output_key(record: Mapping[str, Any], path: str) -> Key:
    """A stored record's ``(id, sample)``; OutputError naming ``path`` if it has none."""
    try:
        return record_key(record)
    except (ValueError, TypeError) as exc:
        raise OutputError(f"{path}: a record has no usable id/sample ({exc})") from exc


def check_output(path: str, fmt: str | None = None, *, rows_per_file: int | None = None) -> str:
    """The output's kind (``jsonl``/``parquet``), or ConfigError (a usage error) if it has none.

    Called before a run takes the output's lock or creates any file.
    """
    kind = _output_kind(path, fmt)
    if rows_per_file is not None:
        if path == "-":
            raise ConfigError("output in parts (--rows-per-file) needs a directory, not stdout")
        return kind or "jsonl"
    if kind == "parquet" and path == "-":
        raise ConfigError("Parquet output cannot go to stdout: give a file path")
    if not kind:
        accepted = ", ".join(JSONL_SUFFIXES + PARQUET_SUFFIXES)
        raise ConfigError(f"{path}: cannot tell the output format from the suffix "
                          f"{Path(path).suffix.lower()!r}; accepted suffixes are {accepted} "
                          "(or give --output-format)")
    return kind


def open_output(
    path: str, fmt: str | None = None, *, fsync: bool = False, flush_rows: int = 10_000,
    rows_per_file: int | None = None, column_types: Mapping[str, Any] | None = None,
) -> OutputSink:
    """Open the output by ``fmt`` (``jsonl``/``parquet``) or by suffix; ``-`` is JSONL on stdout.

    With ``rows_per_file``, ``path`` is a directory of parts of at most that many
    records each (:mod:`.partitioned`); their format is ``fmt``, else the directory
    name's suffix (``out.parquet/``), else JSONL. ``column_types`` are the input's
    Arrow types of ``id`` and the kept columns, for Parquet output (JSON needs none).
    ConfigError: see :func:`check_output`.
    """
    kind = check_output(path, fmt, rows_per_file=rows_per_file)
    if rows_per_file is not None:
        return PartitionedOutput(path, part_format(kind, fsync=fsync, flush_rows=flush_rows,
                                                   column_types=column_types),
                                 rows_per_file)
    if kind == "jsonl":
        return JsonlOutput(path, fsync=fsync)
    from pipeline.parquet_output import ParquetOutput  # pyarrow: only when chosen

    return ParquetOutput(path, flush_rows=flush_rows, fsync=fsync, column_types=column_types)


def _output_kind(path: str, fmt: str | None) -> str:
    """``jsonl``, ``parquet``, or ``""`` when neither the format nor the suffix tells."""
    kind = (fmt or "").lower()
    if kind in ("jsonl", "ndjson"):
        return "jsonl"
    if kind in ("parquet", "pq"):
        return "parquet"
    suffix = Path(path.rstrip("/") or path).suffix.lower()
    if path == "-" or suffix in JSONL_SUFFIXES:
        return "jsonl"
    return "parquet" if suffix in PARQUET_SUFFIXES else ""


def part_format(kind: str, *, fsync: bool = False, flush_rows: int = 10_000,
                column_types: Mapping[str, Any] | None = None) -> PartFormat:
    """How the parts of a partitioned output of ``kind`` (``jsonl``/``parquet``) are handled."""
    if kind in ("jsonl", "ndjson"):
        return PartFormat(
            ".jsonl",
            open_part=lambda part: JsonlOutput(part, fsync=fsync),
            read_keys=lambda part: (output_key(r, part) for r in iter_jsonl_records(part)),
            leftovers=lambda part: [])
    from pipeline.parquet_output import (  # pyarrow: only when chosen
        JOURNAL_SUFFIX,
        ParquetOutput,
        parquet_keys,
    )

    return PartFormat(
        ".parquet",
        open_part=lambda part: ParquetOutput(part, flush_rows=flush_rows, fsync=fsync,
                                             column_types=column_types),
        read_keys=parquet_keys,
        leftovers=lambda part: [part + JOURNAL_SUFFIX])


def default_output_path(input_path: str) -> str:
    """``<dir>/<input name>.completions.jsonl`` next to the input; ``-`` for stdin.

    The whole name, suffix included, so ``data.jsonl`` and ``data.parquet`` in one
    folder never share an output (nor its resume state).
    """
    if input_path == "-":
        return "-"
    source = Path(input_path)
    return str(source.with_name(source.name + ".completions.jsonl"))


def legacy_output_path(input_path: str) -> str | None:
    """The default output of earlier versions (``<dir>/<stem>.completions.jsonl``), if another."""
    if input_path == "-":
        return None
    source = Path(input_path)
    legacy = str(source.with_name(source.stem + ".completions.jsonl"))
    return None if legacy == default_output_path(input_path) else legacy


def default_errors_path(output_path: str) -> str:
    """``<dir>/<output stem>.errors.jsonl``; ``qwen-batch.errors.jsonl`` for stdout."""
    if output_path == "-":
        return "qwen-batch.errors.jsonl"
    output = Path(output_path)
    return str(output.with_name(output.stem + ".errors.jsonl"))
