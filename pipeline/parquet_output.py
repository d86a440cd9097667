"""Journal-backed Parquet output: crash-safe appends to a JSONL journal, merged on close.

The only output module that imports pyarrow; :func:`pipeline.writers.open_output`
imports it when Parquet output is chosen, so JSONL runs never load pyarrow.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.alloc import use_system_arrow_pool
from pipeline.digests import DigestSet, key_digest
from pipeline.errors import OutputError
from pipeline.parquet_order import Buffered, in_input_order, interleave
from pipeline.records import json_default
from pipeline.writers import JsonlAppender, Key, iter_jsonl_records, output_key

log = logging.getLogger(__name__)

JOURNAL_SUFFIX = ".journal.jsonl"
"""Beside ``<path>``: the rows written since the last merge."""

OUTPUT_SCHEMA = pa.schema(
    [pa.field("id", pa.string(), nullable=False), pa.field("sample", pa.int64()),
     pa.field("position", pa.int64())]
    + [pa.field(n, pa.string()) for n in ("prompt", "system", "completion", "model")]
    + [pa.field("attempts", pa.int64())]
    + [pa.field(n, pa.string())
       for n in ("session_hash", "event_id", "url", "started_at", "finished_at")]
    + [pa.field(n, pa.float64()) for n in ("queue_ms", "ttft_ms", "duration_ms")]
    + [pa.field("chunks", pa.int64())]
)
"""Types of the standard success fields in Parquet output; kept columns are appended."""

_PY_TYPES = {
    f.name: (str,) if pa.types.is_string(f.type) else (int,) if pa.types.is_integer(f.type)
    else (int, float)
    for f in OUTPUT_SCHEMA
}

JSON_ENCODED = {b"qwen_batch.encoding": b"json"}
"""Field metadata of a kept column whose values are stored as JSON text (mixed types)."""


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
    A kept column whose values have conflicting types is stored as JSON text, with
    field metadata ``qwen_batch.encoding = json``. ``flush_rows`` bounds the rows
    held in memory during the merge (and the row group size).
    """

    def __init__(self, path: str, *, flush_rows: int = 10_000, fsync: bool = False) -> None:
        self.path = path
        self.journal_path = path + JOURNAL_SUFFIX
        self.tmp_path = path + ".tmp"
        self.flush_rows = flush_rows
        use_system_arrow_pool()
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
        merge_journal(self.path, self.journal_path, self.tmp_path, batch_rows=self.flush_rows)

    finalize = close

    def __enter__(self) -> ParquetOutput:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()  # also on errors: every journaled row is a finished one


def _open_parquet(path: str) -> Any:
    try:
        return pq.ParquetFile(path)
    except (OSError, ValueError, pa.ArrowException) as exc:
        raise OutputError(f"cannot read the existing output {path}: {exc}") from exc


def parquet_keys(path: str) -> Iterator[Key]:
    """The keys in an existing Parquet output, read column-wise batch by batch."""
    if not os.path.exists(path):
        return
    with _open_parquet(path) as parquet:
        has_sample = "sample" in parquet.schema_arrow.names
        try:
            for batch in parquet.iter_batches(columns=["id", "sample"] if has_sample else ["id"]):
                ids = batch.column(0).to_pylist()
                samples = batch.column(1).to_pylist() if has_sample else [0] * len(ids)
                yield from ((str(i), int(s or 0)) for i, s in zip(ids, samples, strict=True))
        except (OSError, ValueError, TypeError, KeyError, pa.ArrowException) as exc:
            raise OutputError(f"cannot read the existing output {path}: {exc}") from exc


def _digest(key: Key) -> int:
    # 16 bytes instead of a tuple of objects: a merge of millions of rows keeps a small set.
    # 128 bits: a collision (odds ~n²/2¹²⁹) that would drop a journal row is out of reach.
    return key_digest(*key)


def _chunks(records: Iterable[dict[str, Any]], size: int) -> Iterator[list[dict[str, Any]]]:
    chunk: list[dict[str, Any]] = []
    for record in records:
        chunk.append(record)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


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


def _writable(kind: pa.DataType) -> bool:
    """Whether Parquet can store the type (it has no struct without fields)."""
    if pa.types.is_struct(kind):
        return kind.num_fields > 0 and all(_writable(kind.field(i).type)
                                           for i in range(kind.num_fields))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return _writable(kind.value_type)
    return True


def _unify(old: pa.DataType | None, new: pa.DataType | None) -> pa.DataType | None:
    """A type holding values of both (``None``: none does, store JSON text)."""
    if old is None or new is None:
        return None
    if pa.types.is_null(old) or old == new:
        return new
    if pa.types.is_null(new):
        return old
    return pa.float64() if {old, new} == {pa.int64(), pa.float64()} else None


def _kept_types(
    existing: Any, journal: str, old_keys: DigestSet, pending: set[int], batch_rows: int
) -> dict[str, pa.DataType | None]:
    """Pass 1: the kept (non-standard) columns and their merged types; fills ``pending``."""
    types: dict[str, pa.DataType | None] = {}
    for field in existing.schema_arrow if existing is not None else ():
        if field.name not in OUTPUT_SCHEMA.names:
            types[field.name] = None if field.metadata == JSON_ENCODED else field.type
    for chunk in _chunks(_new_rows(journal, old_keys, pending, first_pass=True), batch_rows):
        names = dict.fromkeys(n for row in chunk for n in row if n not in OUTPUT_SCHEMA.names)
        for name in names:
            try:
                kind: pa.DataType | None = pa.array([row.get(name) for row in chunk]).type
            except (ValueError, TypeError, OverflowError, pa.ArrowException):
                kind = None  # mixed types within the chunk
            if kind is not None and not _writable(kind):
                kind = None  # e.g. {} infers as struct<>, which Parquet cannot store
            types[name] = _unify(types[name], kind) if name in types else kind
    return types


def _json_cell(value: Any) -> str | None:
    return None if value is None else json.dumps(value, ensure_ascii=False, default=json_default)


def _conform(batch: pa.RecordBatch, schema: pa.Schema, was_json: set[str]) -> pa.Table:
    """An existing batch with the merged schema's columns and types."""
    columns = []
    for field in schema:
        if field.name not in batch.schema.names:
            columns.append(pa.nulls(batch.num_rows, field.type))
            continue
        column = batch.column(field.name)
        if field.metadata == JSON_ENCODED and field.name not in was_json:
            column = pa.array([_json_cell(v) for v in column.to_pylist()], pa.string())
        elif column.type != field.type:
            column = column.cast(field.type)
        columns.append(column)
    return pa.Table.from_arrays(columns, schema=schema)


def merge_journal(path: str, journal: str, tmp_path: str, *, batch_rows: int = 10_000) -> int:
    """Merge a journal into a Parquet file atomically, delete it, and return the rows added.

    Memory holds one batch plus sets of keys. Safe to repeat after a crash at any
    point: until the rename, ``path`` is untouched and the journal intact; after it,
    the journal's rows are found in ``path`` and dropped.
    """
    existing = _open_parquet(path) if os.path.exists(path) else None
    added = 0
    try:
        old_keys = DigestSet(_digest(key) for key in parquet_keys(path))
        pending: set[int] = set()
        types = _kept_types(existing, journal, old_keys, pending, batch_rows)
        if not pending and existing is not None:
            _remove(journal)  # nothing new, e.g. the last run died right after its rename
            return 0
        schema = OUTPUT_SCHEMA
        for name, kind in types.items():
            schema = schema.append(pa.field(name, pa.string(), metadata=JSON_ENCODED)
                                   if kind is None else pa.field(name, kind))
        to_json = {name for name, kind in types.items() if kind is None}
        was_json = {f.name for f in existing.schema_arrow if f.metadata == JSON_ENCODED} \
            if existing is not None else set()
        # Input order: the new rows sorted (bounded memory) and slotted between the old ones.
        new_rows = in_input_order(_new_rows(journal, old_keys, pending, first_pass=False),
                                  os.path.dirname(os.path.abspath(path)))

        def to_table(chunk: list[dict[str, Any]]) -> pa.Table:
            rows = [{n: _json_cell(r.get(n)) if n in to_json else r.get(n)
                     for n in schema.names} for r in chunk]
            return pa.Table.from_pylist(rows, schema=schema)

        with new_rows, pq.ParquetWriter(tmp_path, schema) as writer:
            out = Buffered(writer, batch_rows)
            for batch in existing.iter_batches(batch_size=batch_rows) if existing else ():
                added += interleave(out, _conform(batch, schema, was_json), new_rows, to_table)
            added += interleave(out, None, new_rows, to_table)
            out.flush()
        _fsync_path(tmp_path)
        os.replace(tmp_path, path)
        _fsync_path(os.path.dirname(os.path.abspath(path)))  # make the rename itself durable
    except (OSError, ValueError, TypeError, pa.ArrowException) as exc:
        raise OutputError(f"cannot merge {journal} into {path}: {exc}; the journal is kept "
                          "and the next run will merge it") from exc
    finally:
        if existing is not None:
            existing.close()
    _remove(journal)
    return added


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:  # some filesystems cannot fsync a directory; the rename still happened
        log.debug("cannot fsync %s: %s", path, exc)
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.remove(path)


