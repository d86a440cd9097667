"""Journal-backed Parquet output: crash-safe appends to a JSONL journal, merged on close.

The only output module that imports pyarrow; :func:`pipeline.writers.open_output`
imports it when Parquet output is chosen, so JSONL runs never load pyarrow.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.alloc import apply_arrow_pool_choice
from pipeline.atomic import fsync_path
from pipeline.batching import MERGE_BATCH_BYTES, parquet_row_bytes, rows_within, sized_batches
from pipeline.digests import DigestSet, key_digest
from pipeline.errors import OutputError
from pipeline.jsonl import JsonlAppender, iter_jsonl_records
from pipeline.parquet_order import Buffered, in_input_order, interleave
from pipeline.parquet_types import (
    OUTPUT_SCHEMA,
    Unconvertible,
    has_binary,
    infer,
    journal_value,
    new_array,
    old_array,
    plan,
    unify,
)
from pipeline.readers_arrow import approx_size
from pipeline.records import Key, output_key

log = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".journal.jsonl"
"""Beside ``<path>``: the rows written since the last merge."""

_PY_TYPES = {
    f.name: (str, int) if f.name == "id" else (str,) if pa.types.is_string(f.type)
    or pa.types.is_timestamp(f.type) else (int,) if pa.types.is_integer(f.type) else (int, float)
    for f in OUTPUT_SCHEMA
}
"""What a standard field of a record may hold (times are ISO 8601 text until the merge)."""


class ParquetOutput:
    """Parquet output that is crash-safe and resumable through a JSONL journal.

    Records are appended to ``<path>.journal.jsonl`` (crash-safe like any JSONL
    output) and only merged into ``<path>`` by ``close()``: the old file and the
    journal are streamed batch by batch into ``<path>.tmp``, which is fsynced and
    renamed over ``<path>``; then the journal is deleted. A journal left by a
    crashed run is simply appended to and merged at the end of the next run, so a
    crash costs no extra rewrite; rows whose key is already in ``<path>`` are dropped
    (a crash between the rename and the journal's deletion). The Parquet file is
    therefore always a complete file, but holds a run's rows only once it has closed.

    ``column_types`` gives the Arrow types of ``id`` and of kept columns (by output
    name) as the input has them; other columns get the types of their values
    (:mod:`pipeline.parquet_types`). ``batch_bytes`` bounds the bytes of rows the
    merge holds at once in each of its steps, and so the size of the row groups it
    writes; ``flush_rows`` caps their rows as well.
    """

    def __init__(self, path: str, *, flush_rows: int = 10_000, fsync: bool = False,
                 column_types: Mapping[str, pa.DataType] | None = None,
                 batch_bytes: int = MERGE_BATCH_BYTES) -> None:
        self.path = path
        self.column_types = dict(column_types or {})
        self._binary = {n: t for n, t in self.column_types.items() if has_binary(t)}
        self.journal_path = path + JOURNAL_SUFFIX
        self.tmp_path = path + ".tmp"
        self.flush_rows = flush_rows
        self.batch_bytes = batch_bytes
        apply_arrow_pool_choice()
        with contextlib.suppress(FileNotFoundError):
            os.remove(self.tmp_path)  # an interrupted merge; its rows are still in the journal
        if os.path.exists(path):
            _open_parquet(path).close()  # refuse a corrupt output now, not after the run
        self._journal: JsonlAppender | None = JsonlAppender(self.journal_path, fsync=fsync)
        self._journal_end = os.path.getsize(self.journal_path)

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record to the journal; OutputError if a standard field has a wrong type."""
        if self._journal is None:
            raise OutputError(f"{self.path} is closed")
        # Checked now: a bad row in the journal would make every later merge fail.
        for name, kinds in _PY_TYPES.items():
            value = record.get(name)
            if (value is not None or name == "id") and (
                isinstance(value, bool) or not isinstance(value, kinds)
            ):
                raise OutputError(f"{self.path}: field {name!r} cannot hold {value!r}")
        if self._binary:
            record = {**record, **{n: journal_value(record.get(n), t)
                                   for n, t in self._binary.items() if n in record}}
        self._journal.write(record)

    def done_keys(self) -> set[Key]:
        """Keys in the Parquet file and the journal at open (read at each call)."""
        return set(self.iter_done_keys())

    def iter_done_keys(self) -> Iterator[Key]:
        """Keys in the Parquet file and the journal at open, streamed."""
        yield from parquet_keys(self.path)
        journal = iter_jsonl_records(self.journal_path, end=self._journal_end)
        yield from (output_key(r, self.journal_path) for r in journal)

    def close(self) -> None:
        """Merge the journal into the Parquet file; safe to call twice."""
        if self._journal is None:
            return
        self._journal.close()
        self._journal = None
        merge_journal(self.path, self.journal_path, self.tmp_path, batch_rows=self.flush_rows,
                      batch_bytes=self.batch_bytes, column_types=self.column_types)

    finalize = close

    def __enter__(self) -> ParquetOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # also on errors: every journaled row is a finished one


_READ_BUFFER = 1 << 20
"""Column chunks are read through a buffer of this size: an output written by an earlier
version may have row groups of 10,000 rows, and an unbuffered read loads a column chunk
whole."""


def _open_parquet(path: str) -> Any:
    try:
        return pq.ParquetFile(path, buffer_size=_READ_BUFFER)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise OutputError(f"cannot read the existing output {path}: {exc}") from exc


def parquet_keys(path: str) -> Iterator[Key]:
    """The keys in an existing Parquet output, read column-wise batch by batch."""
    if not os.path.exists(path):
        return
    with _open_parquet(path) as parquet:
        columns = ["id", "sample"] if "sample" in parquet.schema_arrow.names else ["id"]
        has_sample = len(columns) == 2
        rows = rows_within(parquet_row_bytes(parquet.metadata, columns),
                           max_bytes=MERGE_BATCH_BYTES, max_rows=65_536)
        try:
            for batch in parquet.iter_batches(batch_size=rows, columns=columns):
                ids = batch.column(0).to_pylist()
                samples = batch.column(1).to_pylist() if has_sample else [0] * len(ids)
                yield from ((str(i), int(s or 0)) for i, s in zip(ids, samples, strict=True))
        except (OSError, ValueError, TypeError, KeyError, pa.ArrowException) as exc:
            raise OutputError(f"cannot read the existing output {path}: {exc}") from exc


_PAGE_BYTES = 1 << 20
"""Bytes of a data page the merge aims at (pyarrow's own ``data_page_size``)."""
_ROW_OVERHEAD = 64
"""Bytes counted for a row besides its values (a row of no kept column still costs some)."""


def _digest(key: Key) -> int:
    # 16 bytes instead of a tuple of objects: a merge of millions of rows keeps a small set.
    # 128 bits: a collision (odds ~n²/2¹²⁹) that would drop a journal row is out of reach.
    return key_digest(*key)


def _new_rows(
    journal: str, old_keys: DigestSet, pending: set[int], *, first_pass: bool
) -> Iterator[dict[str, Any]]:
    """Journal rows whose key is not in the Parquet file, each key once (the first row).

    The first pass collects the new keys into ``pending``; the second yields the
    first row of each pending key and removes it, so both passes pick the same rows.
    """
    for record in iter_jsonl_records(journal):
        key = _digest(output_key(record, journal))
        if first_pass and key not in old_keys and key not in pending:
            pending.add(key)
            yield record
        elif not first_pass and key in pending:
            pending.remove(key)
            yield record


def _new_types(
    journal: str, old_keys: DigestSet, pending: set[int], batch_rows: int, batch_bytes: int,
    declared: Mapping[str, pa.DataType],
) -> dict[str, pa.DataType | None]:
    """Pass 1: the types of ``id`` and the kept columns of the new rows that the input's
    schema does not give (None: mixed), in first-seen order; fills ``pending``.

    Only those columns of each row are held, in chunks of up to ``batch_bytes``."""
    types: dict[str, pa.DataType | None] = {}
    typed = ({n: v for n, v in row.items()
              if (n == "id" or n not in OUTPUT_SCHEMA.names) and n not in declared}
             for row in _new_rows(journal, old_keys, pending, first_pass=True))
    for chunk in sized_batches(typed, lambda row: _ROW_OVERHEAD + approx_size(row, batch_bytes),
                               max_bytes=batch_bytes, max_rows=batch_rows):
        names = dict.fromkeys(n for row in chunk for n in row)
        for name in names:
            kind = infer([row.get(name) for row in chunk])
            types[name] = unify(types[name], kind) if name in types else kind
    return types


def _plan_schema(old: pa.Schema | None, declared: Mapping[str, pa.DataType],
                 inferred: Mapping[str, pa.DataType | None], forced: set[str]) -> pa.Schema:
    """The output's schema: the standard fields, ``id`` and the kept columns typed."""
    old_fields = {f.name: f for f in old} if old is not None else {}
    new = {**inferred, **declared}

    def column(name: str) -> pa.Field:
        if name in forced:
            return plan(None, None, name)
        if name not in new:  # only in the existing output (or the id of no row at all)
            return old_fields.get(name) or pa.field(name, pa.string())
        return plan(old_fields.get(name), new[name], name)

    fields = [column("id").with_nullable(False) if f.name == "id" else f for f in OUTPUT_SCHEMA]
    kept = [n for n in old_fields if n not in OUTPUT_SCHEMA.names]
    kept += [n for n in new if n not in OUTPUT_SCHEMA.names and n not in old_fields]
    return pa.schema(fields + [column(name) for name in kept])


def _conform(batch: pa.RecordBatch, schema: pa.Schema, old: pa.Schema) -> pa.Table:
    """An existing batch with the merged schema's columns and types."""
    columns = []
    for field in schema:
        if field.name not in batch.schema.names:
            columns.append(pa.nulls(batch.num_rows, field.type))
        else:
            columns.append(old_array(batch.column(field.name), old.field(field.name), field))
    return pa.Table.from_arrays(columns, schema=schema)


def merge_journal(path: str, journal: str, tmp_path: str, *, batch_rows: int = 10_000,
                  batch_bytes: int = MERGE_BATCH_BYTES,
                  column_types: Mapping[str, pa.DataType] | None = None) -> int:
    """Merge a journal into a Parquet file atomically, delete it, and return the rows added.

    Memory holds sets of keys and, at each step, rows up to ``batch_bytes`` (and
    ``batch_rows``): type inference, the sort's in-memory runs, the batches of the
    existing file and the row group being written. Safe to repeat after a crash at any
    point: until the rename, ``path`` is untouched and the journal intact; after it,
    the journal's rows are found in ``path`` and dropped. A column whose values do not
    convert to its planned type (ids of an earlier version's output that are not
    integers as written, say) is stored as text, and the merge done again.
    """
    forced: set[str] = set()
    while True:
        try:
            return _merge(path, journal, tmp_path, batch_rows, batch_bytes, column_types or {},
                          forced)
        except Unconvertible as exc:
            if exc.column in forced or (exc.column != "id" and exc.column in OUTPUT_SCHEMA.names):
                raise OutputError(f"cannot merge {journal} into {path}: {exc}; the journal is "
                                  "kept and the next run will merge it") from exc
            log.warning("%s: %s; the column is stored as text", path, exc)
            forced.add(exc.column)


def _merge(path: str, journal: str, tmp_path: str, batch_rows: int, batch_bytes: int,
           declared: Mapping[str, pa.DataType], forced: set[str]) -> int:
    existing = _open_parquet(path) if os.path.exists(path) else None
    added = 0
    try:
        old_keys = DigestSet(_digest(key) for key in parquet_keys(path))
        pending: set[int] = set()
        inferred = _new_types(journal, old_keys, pending, batch_rows, batch_bytes, declared)
        if not pending and existing is not None:
            _remove(journal)  # nothing new, e.g. the last run died right after its rename
            return 0
        old_schema = existing.schema_arrow if existing is not None else None
        schema = _plan_schema(old_schema, declared, inferred, forced)
        # Input order: the new rows sorted (bounded memory) and slotted between the old ones.
        new_rows = in_input_order(_new_rows(journal, old_keys, pending, first_pass=False),
                                  os.path.dirname(os.path.abspath(path)), batch_bytes)

        def to_table(chunk: list[dict[str, Any]]) -> pa.Table:
            return pa.Table.from_arrays(
                [new_array([r.get(f.name) for r in chunk], f) for f in schema], schema=schema)

        # Pages of about 1 MiB however wide the rows (the writer checks a page's size every
        # write_batch_size rows, 1024 by default): a reader decompresses a page whole.
        per_row = max(_size(journal) / max(1, len(pending)), parquet_row_bytes(
            existing.metadata) if existing else 0.0)
        page_rows = rows_within(per_row, max_bytes=_PAGE_BYTES, max_rows=1024)
        with new_rows, pq.ParquetWriter(tmp_path, schema, write_batch_size=page_rows) as writer:
            out = Buffered(writer, batch_rows, batch_bytes)
            old_rows = rows_within(parquet_row_bytes(existing.metadata), max_bytes=batch_bytes,
                                   max_rows=batch_rows) if existing else 0
            for old in existing.iter_batches(batch_size=old_rows, use_threads=False) \
                    if existing else ():
                added += interleave(out, _conform(old, schema, old_schema), new_rows, to_table)
            added += interleave(out, None, new_rows, to_table)
            out.flush()
        fsync_path(tmp_path)
        os.replace(tmp_path, path)
        fsync_path(os.path.dirname(os.path.abspath(path)))  # make the rename itself durable
    except (OSError, ValueError, TypeError, pa.ArrowException) as exc:
        raise OutputError(f"cannot merge {journal} into {path}: {exc}; the journal is kept "
                          "and the next run will merge it") from exc
    finally:
        if existing is not None:
            existing.close()
    _remove(journal)
    return added


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:
        return 0


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


