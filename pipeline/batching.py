"""Batches bounded in bytes, not only in rows: how every batch held in memory is cut.

A batch of N rows holds N times a row's size, and rows range from a hundred bytes to
a megabyte, so a row count alone bounds nothing. Every batch here is cut at a byte
budget (with a row cap as well): the Parquet merge's reads, sorts and row groups
(:mod:`pipeline.parquet_output`) and the Parquet readers' batches
(:mod:`pipeline.readers_arrow`), whose row count is worked out from the file's
footer before the first batch is read.

No pyarrow here: the footer is passed in, so JSONL runs never load it.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any, TypeVar

T = TypeVar("T")

MERGE_BATCH_BYTES = 8 << 20
"""Bytes of rows the Parquet merge holds at once in each of its steps (type inference,
the sort's in-memory runs, a row group being built, a batch of the existing file)."""

READ_BATCH_BYTES = 2 << 20
"""Bytes of a Parquet input batch (decoded, before it becomes Python objects)."""


def sized_batches(items: Iterable[T], size: Callable[[T], int], *, max_bytes: int,
                  max_rows: int) -> Iterator[list[T]]:
    """``items`` in lists that end as soon as they reach ``max_bytes`` or ``max_rows``.

    A list is therefore under ``max_bytes`` but for its last item (at most one item
    past the budget) and never longer than ``max_rows``.
    """
    batch: list[T] = []
    held = 0
    for item in items:
        batch.append(item)
        held += size(item)
        if held >= max_bytes or len(batch) >= max_rows:
            yield batch
            batch, held = [], 0
    if batch:
        yield batch


def rows_within(row_bytes: float, *, max_bytes: int, max_rows: int) -> int:
    """How many rows of ``row_bytes`` each fit in ``max_bytes`` (1 to ``max_rows``)."""
    if row_bytes <= 0:
        return max(1, max_rows)
    return max(1, min(max_rows, int(max_bytes // row_bytes)))


def parquet_row_bytes(metadata: Any, columns: Collection[str] | None = None) -> float:
    """The largest bytes a row of any row group takes, uncompressed, from a Parquet footer.

    ``metadata`` is a ``pyarrow.parquet.FileMetaData``; ``columns`` (top-level names)
    limits the count to the columns read. An estimate: a dictionary-encoded column
    decodes to more than its encoded size (its row cap still bounds it).
    """
    largest = 0.0
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        if not row_group.num_rows:
            continue
        if columns is None:
            size = row_group.total_byte_size
        else:
            size = sum(chunk.total_uncompressed_size for chunk in
                       (row_group.column(i) for i in range(row_group.num_columns))
                       if chunk.path_in_schema.split(".")[0] in columns)
        largest = max(largest, size / row_group.num_rows)
    return largest
