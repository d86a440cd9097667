"""Resumable output sinks: the choice of output by format, and the default file names.

JSONL output lives in :mod:`pipeline.jsonl`; Parquet output in
:mod:`pipeline.parquet_output`, imported only when chosen, so a JSONL run never
imports pyarrow.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

from pipeline.errors import ConfigError
from pipeline.jsonl import JsonlOutput, iter_jsonl_records
from pipeline.partitioned import PartFormat, PartitionedOutput
from pipeline.records import Key, output_key

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json-lines")
PARQUET_SUFFIXES = (".parquet", ".pq")


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
