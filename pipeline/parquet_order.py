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

from pipeline.batching import rows_within
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


def in_input_order(records: Iterator[dict[str, Any]], tmp_dir: str, run_bytes: int) -> Peekable:
    """The records sorted by input order; the sort holds up to ``run_bytes`` of lines."""
    keyed = ((order_key(r), encode_record(r)) for r in records)
    return Peekable(sort_lines(keyed, tmp_dir=tmp_dir, run_bytes=run_bytes))


class Buffered:
    """Collects slices and new rows into row groups (not one per slice) of at most ``rows``
    rows and about ``max_bytes`` bytes: a group is written once it reaches either."""

    def __init__(self, writer: Any, rows: int, max_bytes: int) -> None:
        self.writer, self.rows, self.max_bytes = writer, rows, max_bytes
        self.tables: list[pa.Table] = []
        self.held = 0
        self.held_bytes = 0.0

    def full(self, rows: int = 0, nbytes: float = 0) -> bool:
        """Whether ``rows`` more rows of ``nbytes`` would fill the row group."""
        return self.held + rows >= self.rows or self.held_bytes + nbytes >= self.max_bytes

    def room(self, row_bytes: float) -> int:
        """Rows of ``row_bytes`` each that fit in the row group (at least 1)."""
        return rows_within(row_bytes, max_bytes=max(1, int(self.max_bytes - self.held_bytes)),
                           max_rows=max(1, self.rows - self.held))

    def add(self, table: pa.Table, nbytes: float | None = None) -> None:
        if table.num_rows:
            self.tables.append(table)
            self.held += table.num_rows
            self.held_bytes += table.nbytes if nbytes is None else nbytes
        if self.full():
            self.flush()

    def add_rows(self, table: pa.Table, start: int, stop: int) -> None:
        """Rows ``start`` to ``stop`` of ``table``, cut to the room left in each row group."""
        row_bytes = table.nbytes / max(1, table.num_rows)
        while start < stop:
            count = min(stop - start, self.room(row_bytes))
            self.add(table.slice(start, count), count * row_bytes)
            start += count

    def flush(self) -> None:
        if self.tables:
            self.writer.write_table(pa.concat_tables(self.tables), row_group_size=self.held)
            self.tables, self.held, self.held_bytes = [], 0, 0.0


def interleave(out: Buffered, table: pa.Table | None, new: Peekable,
               to_table: Callable[[list[dict[str, Any]]], pa.Table]) -> int:
    """Write ``table`` (existing rows, in order) with the new rows that sort before its
    rows slotted in; ``table=None`` writes the remaining new rows. Returns new rows written.

    New rows are decoded only up to the room left in the row group being built, so
    the rows held at once stay within its byte budget (plus one row).
    """
    added = 0

    def take(below: SortKey | None) -> None:
        nonlocal added
        chunk: list[dict[str, Any]] = []
        size = 0
        while new.head is not None and (below is None or new.head[0] <= below):
            size += len(new.head[1])
            chunk.append(new.pop())
            added += 1
            if out.full(len(chunk), size):
                out.add(to_table(chunk))
                chunk, size = [], 0
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
            out.add_rows(table, start, len(keys))
            break
        end = bisect.bisect_left(keys, new.head[0], lo=start)
        out.add_rows(table, start, end)
        start = end
        if start < len(keys):
            take(keys[start])
    return added
