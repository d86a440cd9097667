"""Streaming readers for every input kind: one record (or input error) per row.

JSONL (plain, ``.gz``, ``.zst``), a Parquet file or dataset directory, CSV and TSV.
pyarrow is imported only for Parquet, CSV/TSV and ``.zst`` (see :mod:`.readers_arrow`):
a JSONL run, gzip included, never pays its start-up time and memory (~0.2 s and ~50 MB).
"""

from __future__ import annotations

import gzip
import itertools
import json
import os
import re
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, Literal, cast

from pipeline.errors import InputError, InputFileError
from pipeline.models import RawRecord
from pipeline.settings import MAX_RECORD_BYTES

Format = Literal["jsonl", "parquet", "csv", "tsv"]
Compression = Literal["gzip", "zstd"]

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json-lines")
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv",)
TSV_SUFFIXES = (".tsv", ".tab")
COMPRESSION_SUFFIXES: dict[str, Compression] = {".gz": "gzip", ".zst": "zstd", ".zstd": "zstd"}
_FORMAT_NAMES: dict[str, Format] = {
    "jsonl": "jsonl", "ndjson": "jsonl", "json-lines": "jsonl",
    "parquet": "parquet", "pq": "parquet", "csv": "csv", "tsv": "tsv",
}
FORMAT_CHOICES = ("jsonl", "parquet", "csv", "tsv")
"""The names ``--input-format`` accepts."""

_SKIP_CHUNK = 64 * 1024  # how much of an oversized line is held at once while skipping it
_BOM = b"\xef\xbb\xbf"
_READ_ERRORS = (OSError, EOFError, zlib.error)  # EOFError: a truncated .gz


def compression_of(path: str) -> Compression | None:
    """The compression a file name says (``x.jsonl.gz`` -> gzip), or None."""
    return COMPRESSION_SUFFIXES.get(Path(path).suffix.lower()) if path != "-" else None


def detect_format(path: str, forced: str | None) -> Format:
    """The input format: ``forced`` if given, else from the suffix; ``-`` is JSONL on stdin.

    A compression suffix (``.gz``, ``.zst``) is looked through (``a.csv.gz`` is CSV);
    a directory is a Parquet dataset. Raises InputFileError for an unknown suffix
    or forced name.
    """
    if forced is not None:
        if forced.lower() not in _FORMAT_NAMES:
            raise InputFileError(f"unknown input format {forced!r}: use one of "
                                 f"{', '.join(FORMAT_CHOICES)}")
        return _FORMAT_NAMES[forced.lower()]
    if path == "-":
        return "jsonl"
    if os.path.isdir(path):
        return "parquet"
    name = Path(path)
    if name.suffix.lower() in COMPRESSION_SUFFIXES:
        name = name.with_suffix("")
    suffix = name.suffix.lower()
    for kind, suffixes in (("jsonl", JSONL_SUFFIXES), ("parquet", PARQUET_SUFFIXES),
                           ("csv", CSV_SUFFIXES), ("tsv", TSV_SUFFIXES)):
        if suffix in suffixes:
            return _FORMAT_NAMES[kind]
    accepted = ", ".join(JSONL_SUFFIXES + PARQUET_SUFFIXES + CSV_SUFFIXES + TSV_SUFFIXES)
    raise InputFileError(
        f"{path}: cannot tell the format from the suffix {suffix or '(none)'!r}; "
        f"accepted suffixes are {accepted}, optionally followed by .gz or .zst, "
        "or a directory of Parquet files (or give the format explicitly)"
    )


def read_records(
    path: str,
    fmt: str | None = None,
    *,
    max_record_bytes: int = MAX_RECORD_BYTES,
    batch_size: int = 1024,
    stdin: BinaryIO | None = None,
    infer_csv_types: bool = False,
) -> Iterator[RawRecord | InputError]:
    """Stream the records of ``path`` (``-`` = JSONL on ``stdin``), one item per record.

    Bad records come out as InputError items instead of stopping the stream; every
    item, good or bad, takes the next ``position``, so positions are stable across
    runs. The file is opened, and its first record read (of Parquet, its footers),
    *by this call*, so an unreadable file, or one with no rows at all, raises
    InputFileError here, before anything is written; an I/O error or corrupt page met
    later is raised from ``next()``. CSV/TSV columns are read as text unless ``infer_csv_types``.
    """
    kind = detect_format(path, fmt)
    name = "<stdin>" if path == "-" else path
    if kind == "jsonl":
        items = _open_jsonl(path, max_record_bytes, stdin)
    elif path == "-":
        raise InputFileError(f"{kind.upper()} cannot be read from stdin: give a file path "
                             "(stdin is JSONL only)")
    else:
        from pipeline import readers_arrow  # pyarrow: only for these formats

        if kind == "parquet":
            rows, items = readers_arrow.open_parquet(path, max_record_bytes, batch_size)
            if rows > 0:  # no page decoded yet (see open_parquet)
                return items
        else:
            items = readers_arrow.read_csv(path, "\t" if kind == "tsv" else ",",
                                           max_record_bytes, batch_size,
                                           infer_types=infer_csv_types)
    return _require_rows(items, name)


def _require_rows(
    items: Iterator[RawRecord | InputError], name: str
) -> Iterator[RawRecord | InputError]:
    """``items`` with its first item read now: an input without rows is a file error.

    A run over an empty input is more often a broken export upstream than a quiet
    night, so it fails (exit 2) with a message rather than finishing "all done".
    """
    first = next(items, None)
    if first is None:
        raise InputFileError(f"{name}: the input has no rows (the file is empty or holds "
                             "only blank lines); nothing to do")
    return itertools.chain((first,), items)


def count_rows(path: str, fmt: str) -> int | None:
    """Rows in the input, for the progress bar; None when unknown or too costly to count.

    Parquet files and datasets say it in their footers; plain JSONL up to 4 GiB is
    counted by its non-blank lines (:func:`count_jsonl_rows`); compressed and CSV/TSV inputs are not counted (a second
    decompression, or quoted newlines, would make it cost or lie).
    """
    if path == "-" or compression_of(path) is not None or fmt in ("csv", "tsv"):
        return None
    try:
        if fmt == "parquet":
            from pipeline import readers_arrow

            return readers_arrow.parquet_row_count(path)
        if os.path.getsize(path) > 4 << 30:
            return None
        with open(path, "rb") as handle:
            return count_jsonl_rows(handle)
    except (OSError, ValueError):
        return None


_BLANK_LINE = re.compile(rb"\n[ \t\r\x0b\x0c]*(?=\n)")
"""A newline that starts a line of whitespace only (the lookahead lets blank lines chain)."""


def count_jsonl_rows(handle: BinaryIO, block_size: int = 1 << 20) -> int:
    """The rows :func:`read_records` finds in a JSONL stream: its lines less the blank ones.

    Counted by blocks with C-speed scans (``count`` and a regex anchored on newlines),
    never a Python loop per line: about as fast as the disk.
    """
    count = 0
    open_blank = True  # the line read so far is empty or whitespace only
    first = True
    while block := handle.read(block_size):
        if first and block.startswith(_BOM):
            block = block[len(_BOM):]  # as the reader does on line 1
        first = False
        start = block.find(b"\n")
        if start < 0:
            open_blank = open_blank and not block.strip()
            continue
        if not (open_blank and not block[:start].strip()):
            count += 1  # the line open before this block ends here
        end = block.rfind(b"\n")
        inner = block[start:end + 1]  # whole lines, each between two newlines
        count += inner.count(b"\n") - 1 - len(_BLANK_LINE.findall(inner))
        open_blank = not block[end + 1:].strip()
    return count + (not open_blank)


def _open_jsonl(path: str, limit: int, stdin: BinaryIO | None) -> Iterator[RawRecord | InputError]:
    if path == "-":
        source = stdin if stdin is not None else sys.stdin.buffer
        return _iter_jsonl(source, "<stdin>", limit, close=False)
    compression = compression_of(path)
    try:
        stream: BinaryIO
        if compression == "zstd":
            from pipeline.readers_arrow import open_zstd  # pyarrow has the codec: no new dependency

            stream = open_zstd(path)
        elif compression == "gzip":
            stream = cast(BinaryIO, gzip.open(path, "rb"))  # noqa: SIM115 - the generator closes it
        else:
            stream = open(path, "rb")  # noqa: SIM115 - the generator closes it
    except OSError as exc:
        raise InputFileError(f"cannot open {path}: {exc.strerror or exc}") from exc
    return _iter_jsonl(stream, path, limit, close=True)


def parquet_columns(path: str) -> list[str]:
    """The top-level column names of a Parquet file or dataset directory, from footers alone.

    No row is read; a dataset's Hive partition keys count as columns. Raises
    InputFileError when the file cannot be read as Parquet.
    """
    from .readers_arrow import ARROW_ERRORS, dataset_columns

    if os.path.isdir(path):
        return dataset_columns(path)
    import pyarrow.parquet as pq

    try:
        return list(pq.read_schema(path).names)
    except ARROW_ERRORS as exc:
        raise InputFileError(f"cannot read {path} as Parquet: {exc}") from exc


def _iter_jsonl(
    stream: BinaryIO, name: str, limit: int, *, close: bool
) -> Iterator[RawRecord | InputError]:
    position = 0
    lineno = 0
    try:
        while True:
            try:
                # Bounded: a single line never costs more than limit + 1 bytes of memory.
                line = stream.readline(limit + 1)
            except _READ_ERRORS as exc:
                raise InputFileError(f"{name}: read failed after line {lineno}: "
                                     f"{exc or type(exc).__name__}") from exc
            if not line:
                return
            lineno += 1
            location = f"{name}:{lineno}"
            if len(line) > limit and not line.endswith(b"\n"):
                size = len(line) + _skip_rest_of_line(stream, name, lineno)
                del line  # do not hold the big buffer while suspended at the yield
                yield InputError(
                    f"line is {size} bytes, over the limit of {limit}", location=location
                )
                position += 1
                continue
            if lineno == 1 and line.startswith(_BOM):
                line = line[len(_BOM):]  # tolerate a UTF-8 byte order mark, as editors write one
            if not line.strip():
                continue  # blank lines are allowed and take no position
            item = _parse_json_line(line, position, location)
            position += 1
            yield item
    finally:
        if close:
            stream.close()


def _skip_rest_of_line(stream: BinaryIO, name: str, lineno: int) -> int:
    """Read past the end of the current line in small chunks; return the bytes skipped."""
    skipped = 0
    while True:
        try:
            chunk = stream.readline(_SKIP_CHUNK)
        except _READ_ERRORS as exc:
            raise InputFileError(f"{name}: read failed in line {lineno}: "
                                 f"{exc or type(exc).__name__}") from exc
        if not chunk:
            return skipped
        if chunk.endswith(b"\n"):
            return skipped + len(chunk) - 1
        skipped += len(chunk)


def _parse_json_line(line: bytes, position: int, location: str) -> RawRecord | InputError:
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        return InputError(f"not valid UTF-8 (byte {exc.start}: {exc.reason})", location=location)
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        # The column in the line as the user sees it: json counts the line's own newline
        # as whitespace and would report a line cut short as "line 2, column 1".
        content = len(text.rstrip("\r\n"))
        where = (f"column {content + 1}, where the line ends" if exc.pos >= content
                 else f"column {exc.pos + 1}")
        return InputError(f"invalid JSON: {exc.msg} ({where})", location=location)
    except (ValueError, RecursionError) as exc:  # int too long, nesting too deep
        return InputError(f"invalid JSON: {exc}", location=location)
    if not isinstance(value, dict):
        return InputError(f"expected a JSON object, got {_type_name(value)}", location=location)
    return RawRecord(position=position, location=location, values=value)


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__

