"""The pyarrow-backed readers: a Parquet file or dataset directory, CSV/TSV, and zstd streams.

Imported only when one of these is read, so JSONL runs never load pyarrow.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, BinaryIO, cast

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from pipeline.alloc import apply_arrow_pool_choice
from pipeline.batching import READ_BATCH_BYTES, parquet_row_bytes, rows_within
from pipeline.errors import InputError, InputFileError
from pipeline.models import RawRecord

ARROW_ERRORS = (OSError, ValueError, TypeError, pa.ArrowException)
_PARQUET_BUFFER = 1 << 20  # read a column chunk through a 1 MiB buffer, page by page
_CSV_BLOCK = 1 << 20  # bytes of CSV parsed at a time


def read_parquet(path: str, limit: int, batch_size: int) -> Iterator[RawRecord | InputError]:
    """The rows of a Parquet file, or of every Parquet file under a directory, in order."""
    return open_parquet(path, limit, batch_size)[1]


def open_parquet(path: str, limit: int,
                 batch_size: int) -> tuple[int, Iterator[RawRecord | InputError]]:
    """The rows in the footers, and the rows of :func:`read_parquet`, lazily.

    No page is decoded before the first ``next()``: an input opened early (and the
    fresh read a run makes to check it against its output) holds no page, nor a
    column's dictionary, meanwhile. A batch holds at most ``batch_size`` rows, fewer
    when the rows are wide: as many as fit in :data:`~pipeline.batching.READ_BATCH_BYTES`
    by the file's footer.
    """
    apply_arrow_pool_choice()
    if os.path.isdir(path):
        return _read_dataset(path, limit, batch_size)
    try:
        # pre_buffer=False: a file written with pyarrow's defaults is ONE row group, and
        # pre-buffering would load a whole column chunk (the whole file) before the first
        # batch; with it off, pages stream through a small buffer.
        parquet = pq.ParquetFile(path, pre_buffer=False, buffer_size=_PARQUET_BUFFER)
    except ARROW_ERRORS as exc:
        raise InputFileError(f"cannot read {path} as Parquet: {exc}") from exc
    return parquet.metadata.num_rows, _read_file(parquet, path, limit, batch_size)


def _read_file(parquet: Any, path: str, limit: int,
               batch_size: int) -> Iterator[RawRecord | InputError]:
    try:
        batches = parquet.iter_batches(batch_size=_batch_rows(parquet.metadata, batch_size),
                                       use_threads=False)
        yield from _rows(batches, lambda row: f"{path} row {row}", 0, limit, path)
    finally:
        parquet.close()


def _batch_rows(metadata: Any, batch_size: int) -> int:
    """Rows of a batch: ``batch_size`` or fewer, to stay within the byte budget."""
    return rows_within(parquet_row_bytes(metadata), max_bytes=READ_BATCH_BYTES,
                       max_rows=batch_size)


def _open_dataset(path: str) -> Any:
    try:
        return ds.dataset(path, format="parquet", partitioning="hive")
    except ARROW_ERRORS as exc:
        raise InputFileError(f"cannot read {path} as a Parquet dataset: {exc}") from exc


def dataset_columns(path: str) -> list[str]:
    """The columns of a Parquet dataset directory, partition keys included."""
    return list(_open_dataset(path).schema.names)


def _read_dataset(path: str, limit: int,
                  batch_size: int) -> tuple[int, Iterator[RawRecord | InputError]]:
    """A directory of Parquet files (Hive ``key=value/`` folders become columns), file by file.

    Files are read in path order, so positions are stable from run to run; a row's
    location is its file and row number in that file. Files named ``_*`` or ``.*``
    (``_SUCCESS``, ``.crc``) are ignored, as Spark and pyarrow do.
    """
    dataset = _open_dataset(path)
    try:
        fragments = sorted(dataset.get_fragments(), key=lambda f: f.path)
    except ARROW_ERRORS as exc:
        raise InputFileError(f"cannot read {path} as a Parquet dataset: {exc}") from exc
    if not fragments:
        raise InputFileError(f"{path}: the directory holds no Parquet files")
    total = 0
    for fragment in fragments:
        try:
            total += fragment.metadata.num_rows
        except ARROW_ERRORS as exc:
            raise InputFileError(f"cannot read {fragment.path} as Parquet: {exc}") from exc
    return total, _read_fragments(fragments, dataset.schema, limit, batch_size)


def _read_fragments(fragments: list[Any], schema: Any, limit: int,
                    batch_size: int) -> Iterator[RawRecord | InputError]:
    """Each file through its own :class:`pyarrow.parquet.ParquetFile`, page by page.

    Not ``fragment.to_batches``: the dataset scanner reads a whole row group before its
    first batch (and pyarrow writes one row group per file by default). A file's rows
    get the dataset's columns in its order: its ``key=value`` folders' values, and None
    for a column the file lacks.
    """
    position = 0
    names = list(schema.names)
    for fragment in fragments:
        name = fragment.path
        keys = ds.get_partition_keys(fragment.partition_expression)
        try:
            parquet = pq.ParquetFile(name, pre_buffer=False, buffer_size=_PARQUET_BUFFER)
        except ARROW_ERRORS as exc:
            raise InputFileError(f"cannot read {name} as Parquet: {exc}") from exc
        try:
            present = set(parquet.schema_arrow.names)
            columns = [n for n in names if n in present and n not in keys]
            batches = parquet.iter_batches(batch_size=_batch_rows(parquet.metadata, batch_size),
                                           columns=columns, use_threads=False)
            filled = {n: keys.get(n) for n in names if n not in columns}
            rows = _rows(batches, lambda row, name=name: f"{name} row {row}", position,
                         limit, name, fill=filled, order=names if filled else None)
            for item in rows:
                yield item
                position += 1
        finally:
            parquet.close()


def _rows(batches: Iterable[Any], where: Any, position: int, limit: int, name: str, *,
          fill: dict[str, Any] | None = None,
          order: list[str] | None = None) -> Iterator[RawRecord | InputError]:
    """Records from Arrow batches; ``where(row)`` names a row, ``position`` counts on.

    ``fill`` adds constant fields to every row (a dataset's partition keys, or None for a
    column a file lacks), and ``order`` then gives the fields' order.
    """
    row = 0
    iterator = iter(batches)
    while True:
        try:
            batch = next(iterator, None)
            rows = None if batch is None else batch.to_pylist()
        except ARROW_ERRORS as exc:
            raise InputFileError(f"{name}: cannot read past row {row}: {exc}") from exc
        if rows is None:
            return
        del batch  # the rows are Python objects now: let Arrow free the batch's buffers
        if fill:
            rows = [_ordered({**values, **fill}, order) for values in rows]
        for values in rows:
            yield _record(values, position, where(row), limit)
            position += 1
            row += 1


def _ordered(values: dict[str, Any], order: list[str] | None) -> dict[str, Any]:
    return {key: values[key] for key in order} if order else values


def approx_size(value: Any, limit: int) -> int:
    """Rough size of a value in bytes (strings and bytes by length); stops past ``limit``."""
    total = 0
    stack = [value]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, (str, bytes)):
            total += len(item)
        elif isinstance(item, Mapping):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        else:
            total += 8
    return total


def _record(values: dict[str, Any], position: int, location: str,
            limit: int) -> RawRecord | InputError:
    size = approx_size(values, limit)
    if size > limit:
        return InputError(f"row is about {size}+ bytes, over the limit of {limit}",
                          location=location)
    return RawRecord(position=position, location=location, values=values)


def read_csv(path: str, delimiter: str, limit: int, batch_size: int, *,
             infer_types: bool = False) -> Iterator[RawRecord | InputError]:
    """The rows of a CSV/TSV file (``.gz``/``.zst`` too), streamed block by block.

    The first line names the columns. Every column is text unless ``infer_types``:
    prompts are text, and an id like ``007`` must stay ``007``. An empty cell is
    null (a missing system prompt, not an empty one); a quoted ``""`` is an empty
    string. Quoted values may span lines; a row's location is the line it starts on.
    A row with all cells empty is skipped like a blank line (it has no prompt).
    """
    apply_arrow_pool_choice()
    reader, names = _open_csv(path, delimiter, infer_types)
    return _csv_rows(reader, path, 2 + sum(n.count("\n") for n in names), limit)


def _open_csv(path: str, delimiter: str, infer_types: bool) -> tuple[Any, list[str]]:
    parse = pa_csv.ParseOptions(delimiter=delimiter, newlines_in_values=True,
                                ignore_empty_lines=False)
    read = pa_csv.ReadOptions(use_threads=False, block_size=_CSV_BLOCK)
    names = _csv_header(path, read, parse)
    convert = pa_csv.ConvertOptions(
        column_types=None if infer_types else {n: pa.string() for n in names},
        strings_can_be_null=True, null_values=[""], quoted_strings_can_be_null=False)
    try:
        reader = pa_csv.open_csv(_input(path), read_options=read, parse_options=parse,
                                 convert_options=convert)
    except ARROW_ERRORS as exc:
        raise InputFileError(f"cannot read {path} as CSV: {exc}") from exc
    return reader, names


def input_schema(path: str, fmt: str, *, infer_csv_types: bool = False) -> Any:
    """The Arrow schema of a Parquet file or dataset, or of a CSV/TSV file as it is read.

    The Arrow types the rows come with (a CSV's inferred ones from its first block,
    as the reader fixes them), so that the output can keep them.
    """
    if fmt == "parquet":
        if os.path.isdir(path):
            return _open_dataset(path).schema
        try:
            return pq.read_schema(path)
        except ARROW_ERRORS as exc:
            raise InputFileError(f"cannot read {path} as Parquet: {exc}") from exc
    reader, _ = _open_csv(path, "\t" if fmt == "tsv" else ",", infer_csv_types)
    with reader:
        return reader.schema


def _csv_header(path: str, read: Any, parse: Any) -> list[str]:
    try:
        with pa_csv.open_csv(_input(path), read_options=read, parse_options=parse) as reader:
            names = list(reader.schema.names)
    except ARROW_ERRORS as exc:
        raise InputFileError(f"cannot read {path} as CSV: {exc}") from exc
    if len(set(names)) != len(names):
        seen = sorted({n for n in names if names.count(n) > 1})
        raise InputFileError(f"{path}:1: the header repeats the column(s) {', '.join(seen)}")
    return names


def _csv_rows(reader: Any, path: str, line: int, limit: int) -> Iterator[RawRecord | InputError]:
    position = 0
    try:
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except ARROW_ERRORS as exc:
                raise InputFileError(f"{path}: cannot read past line {line - 1}: {exc}") from exc
            rows = batch.to_pylist()
            del batch
            for values in rows:
                # Quoted newlines make a row span lines: count them to keep line numbers true.
                span = 1 + sum(v.count("\n") for v in values.values() if isinstance(v, str))
                if any(v is not None for v in values.values()):
                    yield _record(values, position, f"{path}:{line}", limit)
                    position += 1
                line += span
    finally:
        reader.close()


def _input(path: str) -> Any:
    """The file as an Arrow stream, decompressed by its suffix (``.gz``, ``.zst``...)."""
    try:
        return pa.input_stream(path, compression="detect")
    except ARROW_ERRORS as exc:
        raise InputFileError(f"cannot open {path}: {exc}") from exc


class _ArrowRaw(io.RawIOBase):
    """An Arrow input stream seen as a raw binary file, so Python can buffer it by lines."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        data = self._stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self._stream.close()
        super().close()


class _ReadError(OSError):
    """A decompression error from Arrow, as the OSError line readers expect."""


def open_zstd(path: str) -> BinaryIO:
    """A zstd-compressed file as a buffered binary stream with ``readline(limit)``."""
    try:
        stream = pa.input_stream(path, compression="zstd")
    except ARROW_ERRORS as exc:
        raise OSError(str(exc)) from exc
    return cast(BinaryIO, io.BufferedReader(_SafeRaw(stream), 1 << 16))


class _SafeRaw(_ArrowRaw):
    def readinto(self, buffer: Any) -> int:
        try:
            return super().readinto(buffer)
        except (ValueError, pa.ArrowException) as exc:
            raise _ReadError(f"cannot decompress: {exc}") from exc


def parquet_row_count(path: str) -> int:
    """Rows of a Parquet file or dataset directory, from the footers."""
    if os.path.isdir(path):
        return int(ds.dataset(path, format="parquet", partitioning="hive").count_rows())
    return int(pq.ParquetFile(path).metadata.num_rows)
