"""Before any request: the fields a run needs are in the input (its schema, or its first rows).

A wrong ``--prompt-field``, a template field no row has or an unknown ``--keep``
column would otherwise make one error record per row (a 100k-row file: a 34 MB errors
file). Here it is one usage error, found from a Parquet schema alone, or from the
first rows of a JSONL file, before the lock is taken or any file written.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Sequence
from typing import Any

from .errors import ConfigError, InputError
from .models import RawRecord
from .readers import parquet_columns, read_records
from .records import kept_keys
from .rowspec import RowSpec, template_fields
from .settings import MAX_RECORD_BYTES

Records = Iterator[RawRecord | InputError]

HEAD_ROWS = 100
"""JSONL rows looked at: a field none of them has is a usage error."""
HEAD_ITEMS = 1000
"""At most this many items are held while looking for HEAD_ROWS good rows."""
_SHOWN = 40


def take_head(
    records: Iterator[RawRecord | InputError],
    rows: int = HEAD_ROWS,
    items: int = HEAD_ITEMS,
) -> list[RawRecord | InputError]:
    """The first items of ``records``, up to ``rows`` good records (or ``items`` items)."""
    head: list[RawRecord | InputError] = []
    good = 0
    for item in itertools.islice(records, items):
        head.append(item)
        good += isinstance(item, RawRecord)
        if good >= rows:
            break
    return head


def head_fields(head: Sequence[RawRecord | InputError]) -> list[str] | None:
    """The fields the good records of ``head`` have, in first-seen order; None if none is good."""
    good = [item for item in head if isinstance(item, RawRecord)]
    if not good:
        return None
    return list(dict.fromkeys(name for record in good for name in record.values))


def check_columns(
    columns: Sequence[str],
    spec: RowSpec,
    *,
    source: str,
    require_id: bool = False,
    rows_seen: int | None = None,
) -> None:
    """Raise ConfigError naming every field the run needs that ``columns`` lacks.

    Needed: each template field, else the prompt or the messages field; the id field
    when it was asked for (``require_id``); each ``--keep`` column. ``rows_seen`` is
    None when ``columns`` is a schema, else how many rows they were gathered from.
    """
    have = set(columns)
    missing: list[str] = []
    if spec.template is not None:
        missing += [f"{name!r} (used by --template)"
                    for name in dict.fromkeys(template_fields(spec.template)) if name not in have]
    elif spec.prompt_field not in have and spec.messages_field not in have:
        missing.append(f"{spec.prompt_field!r} (--prompt-field) "
                       f"or {spec.messages_field!r} (--messages-field)")
    if require_id and spec.id_field not in have:
        missing.append(f"{spec.id_field!r} (--id-field)")
    missing += [f"{name!r} (--keep)" for name in dict.fromkeys(spec.keep) if name not in have]
    if not missing:
        return
    shown = ", ".join(columns[:_SHOWN]) or "(none)"
    if len(columns) > _SHOWN:
        shown += f", ... ({len(columns)} in all)"
    if rows_seen is None:
        what, has = "no column", f"Its columns: {shown}."
    else:
        what, has = f"none of the first {rows_seen} rows has the field", f"Their fields: {shown}."
    raise ConfigError(f"{source}: {what} {', nor '.join(missing)}. {has}")


def open_checked_input(
    path: str, fmt: str, spec: RowSpec, *, require_id: bool = False,
    max_record_bytes: int = MAX_RECORD_BYTES, infer_csv_types: bool = False,
) -> tuple[Records, list[RawRecord | InputError]]:
    """The records of ``path`` and (JSONL) the first ones, once its fields were checked.

    A Parquet file is checked against its schema before any row is read; a JSONL file
    against its first :data:`HEAD_ROWS` good rows, which are read ahead and still come
    first out of the returned records. ConfigError for a missing field (the records are
    closed then), InputFileError for an unreadable file.
    """
    records = read_records(path, fmt, max_record_bytes=max_record_bytes,
                           infer_csv_types=infer_csv_types)
    name = "<stdin>" if path == "-" else path
    try:
        if fmt == "parquet":
            check_columns(parquet_columns(path), spec, source=name, require_id=require_id)
            return records, []
        head = take_head(records)
        fields = head_fields(head)
        if fields is not None:
            check_columns(fields, spec, source=name, require_id=require_id,
                          rows_seen=sum(isinstance(item, RawRecord) for item in head))
    except BaseException:
        close_records(records)
        raise
    return itertools.chain(head, records), head


def close_records(records: object) -> None:
    """Close a record stream (and its file) if it can be closed."""
    close = getattr(records, "close", None)
    if close is not None:
        close()


def output_types(path: str, fmt: str, spec: RowSpec, *,
                 infer_csv_types: bool = False) -> dict[str, Any]:
    """The input's Arrow types of the output's ``id`` and kept columns, by output name.

    For Parquet output, which keeps them (an int64 id stays int64, a timestamp a
    timestamp). Empty for JSONL input (its values carry their JSON types; no pyarrow
    is loaded). The id's type is given only when ids can be of it (integers, text).
    """
    if fmt not in ("parquet", "csv", "tsv") or path == "-":
        return {}
    import pyarrow as pa

    from .readers_arrow import input_schema

    schema = input_schema(path, fmt, infer_csv_types=infer_csv_types)
    types: dict[str, Any] = {}
    if spec.id_field in schema.names:
        kind = schema.field(spec.id_field).type
        text = kind.value_type if pa.types.is_dictionary(kind) else kind
        if pa.types.is_integer(kind) or pa.types.is_string(text) or pa.types.is_large_string(text):
            types["id"] = kind
    names = tuple(dict.fromkeys(spec.keep))
    for name, key in zip(names, kept_keys(names), strict=True):
        if name in schema.names:
            types[key] = schema.field(name).type
    return types
