"""Parquet output in input order: journal rows sorted by position and slotted between old rows.

The merge of :mod:`pipeline.parquet_output` streams the old file batch by batch; the
new rows come out of an external sort (:mod:`pipeline.sort`), so memory stays bounded
however many rows a run added, and the rows of every finished Parquet output are in
input order (``position``, then ``sample``), across resumed runs too.
"""

from __future__ import annotations

import bisect
import json
from collections.abc import Callable, Generator, Iterator
from typing import Any

import pyarrow as pa

from pipeline.records import encode_record
from pipeline.sort import SortKey, order_key, sort_lines


class Peekable:
    """Sorted new records with a look at the next one's key."""

    def __init__(self, items: Generator[tuple[SortKey, bytes], None, None]) -> None:
        self._items = items
        self.head: tuple[SortKey, bytes] | None = next(items, None)

    def close(self) -> None:
        """Stop early: the sort's temporary files go now, not when collected."""
        self._items.close()

    def __enter__(self) -> Peekable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def pop(self) -> dict[str, Any]:
        assert self.head is not None
        record: dict[str, Any] = json.loads(self.head[1])
        self.head = next(self._items, None)
        return record


def in_input_order(records: Iterator[dict[str, Any]], tmp_dir: str) -> Peekable:
    keyed = ((order_key(r), encode_record(r)) for r in records)
    return Peekable(sort_lines(keyed, tmp_dir=tmp_dir))


class Buffered:
    """Collects slices and new rows into row groups of ``rows`` (not one per slice)."""

    def __init__(self, writer: Any, rows: int) -> None:
        self.writer, self.rows = writer, rows
        self.tables: list[pa.Table] = []
        self.held = 0

    def add(self, table: pa.Table) -> None:
        if table.num_rows:
            self.tables.append(table)
            self.held += table.num_rows
        if self.held >= self.rows:
            self.flush()

    def flush(self) -> None:
        if self.tables:
            self.writer.write_table(pa.concat_tables(self.tables), self.rows)
            self.tables, self.held = [], 0


def interleave(out: Buffered, table: pa.Table | None, new: Peekable,
               to_table: Callable[[list[dict[str, Any]]], pa.Table]) -> int:
    """Write ``table`` (existing rows, in order) with the new rows that sort before its
    rows slotted in; ``table=None`` writes the remaining new rows. Returns new rows written."""
    added = 0

    def take(below: SortKey | None) -> None:
        nonlocal added
        chunk: list[dict[str, Any]] = []
        while new.head is not None and (below is None or new.head[0] <= below):
            record = new.pop()
            added += 1
            chunk.append(record)
            if len(chunk) >= out.rows:
                out.add(to_table(chunk))
                chunk = []
        if chunk:
            out.add(to_table(chunk))

    if table is None:
        take(None)
        return added
    keys = [order_key({"position": p, "sample": s}) for p, s in zip(
        table.column("position").to_pylist(), table.column("sample").to_pylist(), strict=True)]
    start = 0
    while start < len(keys):
        if new.head is None:
            out.add(table.slice(start))
            break
        end = bisect.bisect_left(keys, new.head[0], lo=start)
        out.add(table.slice(start, end - start))
        start = end
        if start < len(keys):
            take(keys[start])
    return added
