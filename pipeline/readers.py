"""Streaming readers for JSONL and Parquet inputs, and the record-to-prompt mapping."""

from __future__ import annotations

import json
import re
import string
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import ConfigError, InputError, InputFileError
from pipeline.models import PromptRow, RawRecord
from pipeline.prompts import fold_messages

Format = Literal["jsonl", "parquet"]

JSONL_SUFFIXES = (".jsonl", ".ndjson", ".json-lines")
PARQUET_SUFFIXES = (".parquet", ".pq")
_FORMAT_NAMES: dict[str, Format] = {
    "jsonl": "jsonl", "ndjson": "jsonl", "json-lines": "jsonl",
    "parquet": "parquet", "pq": "parquet",
}
_SKIP_CHUNK = 64 * 1024  # how much of an oversized line is held at once while skipping it
_BOM = b"\xef\xbb\xbf"
_ARROW_ERRORS = (OSError, ValueError, TypeError, pa.ArrowException)
_MAX_FORMAT_WIDTH = 100_000  # widths/precisions in a template's format specs
_SPEC_NUMBER = re.compile(r"[0-9]+")


def detect_format(path: str, forced: str | None) -> Format:
    """The input format: ``forced`` if given, else from the suffix; ``-`` is JSONL on stdin.

    Raises InputFileError for an unknown suffix or forced name.
    """
    if forced is not None:
        if forced.lower() not in _FORMAT_NAMES:
            raise InputFileError(f"unknown input format {forced!r}: use 'jsonl' or 'parquet'")
        return _FORMAT_NAMES[forced.lower()]
    if path == "-":
        return "jsonl"
    suffix = Path(path).suffix.lower()
    if suffix in JSONL_SUFFIXES:
        return "jsonl"
    if suffix in PARQUET_SUFFIXES:
        return "parquet"
    accepted = ", ".join(JSONL_SUFFIXES + PARQUET_SUFFIXES)
    raise InputFileError(
        f"{path}: cannot tell the format from the suffix {suffix or '(none)'!r}; "
        f"accepted suffixes are {accepted} (or give the format explicitly)"
    )


def read_records(
    path: str,
    fmt: str | None = None,
    *,
    max_record_bytes: int = 1_000_000,
    batch_size: int = 1024,
    stdin: BinaryIO | None = None,
) -> Iterator[RawRecord | InputError]:
    """Stream the records of ``path`` (``-`` = JSONL on ``stdin``), one item per record.

    Bad records come out as InputError items instead of stopping the stream; every
    item, good or bad, takes the next ``position``, so positions are stable across
    runs. The file is opened (and a Parquet footer checked) *by this call*, so an
    unreadable file raises InputFileError here, before the first record; an I/O
    error or corrupt Parquet page met later is raised from ``next()``.
    """
    kind = detect_format(path, fmt)
    if kind == "jsonl":
        if path == "-":
            source = stdin if stdin is not None else sys.stdin.buffer
            return _iter_jsonl(source, "<stdin>", max_record_bytes, close=False)
        try:
            stream = open(path, "rb")  # noqa: SIM115 - the generator closes it
        except OSError as exc:
            raise InputFileError(f"cannot open {path}: {exc.strerror or exc}") from exc
        return _iter_jsonl(stream, path, max_record_bytes, close=True)
    if path == "-":
        raise InputFileError("Parquet cannot be read from stdin: give a file path")
    try:
        parquet = pq.ParquetFile(path)
    except _ARROW_ERRORS as exc:
        raise InputFileError(f"cannot read {path} as Parquet: {exc}") from exc
    return _iter_parquet(parquet, path, max_record_bytes, batch_size)


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
            except OSError as exc:
                raise InputFileError(f"{name}: read failed after line {lineno}: {exc}") from exc
            if not line:
                return
            lineno += 1
            location = f"{name}:{lineno}"
            if len(line) > limit and not line.endswith(b"\n"):
                size = len(line) + _skip_rest_of_line(stream)
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


def _skip_rest_of_line(stream: BinaryIO) -> int:
    """Read past the end of the current line in small chunks; return the bytes skipped."""
    skipped = 0
    while True:
        chunk = stream.readline(_SKIP_CHUNK)
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
        return InputError(f"invalid JSON: {exc.msg} (column {exc.colno})", location=location)
    except (ValueError, RecursionError) as exc:  # int too long, nesting too deep
        return InputError(f"invalid JSON: {exc}", location=location)
    if not isinstance(value, dict):
        return InputError(f"expected a JSON object, got {_type_name(value)}", location=location)
    return RawRecord(position=position, location=location, values=value)


def _iter_parquet(
    parquet: Any, name: str, limit: int, batch_size: int
) -> Iterator[RawRecord | InputError]:
    row = 0
    try:
        batches = parquet.iter_batches(batch_size=batch_size)
        while True:
            try:
                batch = next(batches, None)
                rows = [] if batch is None else batch.to_pylist()
            except _ARROW_ERRORS as exc:
                raise InputFileError(f"{name}: cannot read past row {row}: {exc}") from exc
            if batch is None:
                return
            for values in rows:
                location = f"{name} row {row}"
                size = _approx_size(values, limit)
                if size > limit:
                    yield InputError(
                        f"row is about {size}+ bytes, over the limit of {limit}",
                        location=location,
                    )
                else:
                    yield RawRecord(position=row, location=location, values=values)
                row += 1
    finally:
        parquet.close()


def _approx_size(value: Any, limit: int) -> int:
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


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


@dataclass(frozen=True, slots=True)
class RowSpec:
    """How to turn a record into a prompt: field names, an optional template, defaults.

    ``template`` is rendered with ``str.format`` syntax over the record's values,
    but only plain ``{name}`` fields are allowed (no ``{a.b}`` or ``{a[0]}``), so a
    template cannot reach into objects. An invalid template raises ConfigError.
    """

    prompt_field: str = "prompt"
    id_field: str = "id"
    system_field: str = "system"
    messages_field: str = "messages"
    template: str | None = None
    default_system: str | None = None
    keep: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.template is not None:
            template_fields(self.template)


def template_fields(template: str) -> list[str]:
    """The field names a template uses; raises ConfigError if it is not a safe template."""
    return _template_fields(template, template, nested=False)


def _template_fields(text: str, template: str, *, nested: bool) -> list[str]:
    names: list[str] = []
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as exc:
        raise ConfigError(f"invalid template {template!r}: {exc}") from exc
    for _, name, spec, conversion in parsed:
        if name is None:
            continue
        if name == "" or any(c in name for c in ".[]"):
            raise ConfigError(
                f"invalid template field {{{name}}}: use plain names like {{prompt}} "
                "(no positional fields, attributes or indexes)"
            )
        if conversion not in (None, "r", "s", "a"):
            raise ConfigError(
                f"invalid template {template!r}: unknown conversion !{conversion} "
                "(use !r, !s or !a)"
            )
        names.append(name)
        if spec:
            inner = _template_fields(spec, template, nested=True)
            if nested and inner:
                # str.format allows fields inside a format spec, but not inside theirs
                raise ConfigError(f"invalid template {template!r}: fields nested too deeply")
            names.extend(inner)
    return names


class _PlainFormatter(string.Formatter):
    """A Formatter that looks names up as plain keys, never as attributes or indexes."""

    def __init__(self, values: Mapping[str, Any]) -> None:
        self.values = values
        self.current: str | None = None

    def get_field(self, field_name: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> Any:
        self.current = field_name
        value = self.values.get(field_name)
        if value is None:
            raise _MissingField(field_name)
        return value, field_name

    def format_field(self, value: Any, format_spec: str) -> Any:
        # A spec may come from the data ({text:{width}}): do not pad to gigabytes.
        for number in _SPEC_NUMBER.findall(format_spec):
            if len(number) > 9 or int(number) > _MAX_FORMAT_WIDTH:
                raise ValueError(
                    f"format spec {format_spec[:40]!r} is over {_MAX_FORMAT_WIDTH} characters"
                )
        return super().format_field(value, format_spec)


class _MissingField(Exception):
    pass


def _render(template: str, values: Mapping[str, Any], location: str) -> str:
    formatter = _PlainFormatter(values)
    try:
        return formatter.vformat(template, (), {})
    except _MissingField as exc:
        field = str(exc)
        raise InputError(
            f"missing field {field!r} (used by the template)", location=location, field=field
        ) from None
    except (ValueError, TypeError, OverflowError, RecursionError) as exc:
        # OverflowError: {n:f} on a huge int; RecursionError: str() of a deeply nested value
        raise InputError(
            f"cannot render the template: {exc}", location=location, field=formatter.current
        ) from None


def build_prompt_row(record: RawRecord, spec: RowSpec) -> PromptRow:
    """Turn one record into a PromptRow; raises InputError naming the location and field.

    The prompt comes from the template if set, else the prompt field, else the
    messages field. A null value counts as absent, except for the id, where it is
    an error (a null id among real ids is a data problem, not "use the position").
    """
    values, location = record.values, record.location
    system = _optional_str(values, spec.system_field, location)
    if spec.template is not None:
        prompt = _render(spec.template, values, location)
        if not prompt.strip():
            raise InputError("the template renders an empty prompt", location=location)
    elif values.get(spec.prompt_field) is not None:
        prompt = _require_text(values[spec.prompt_field], location, spec.prompt_field)
    elif values.get(spec.messages_field) is not None:
        messages = values[spec.messages_field]
        field = spec.messages_field
        if not isinstance(messages, (list, tuple)):
            raise InputError(
                f"expected a list of messages, got {_type_name(messages)}",
                location=location, field=field,
            )
        try:
            messages_system, prompt = fold_messages(messages)
        except ValueError as exc:
            raise InputError(str(exc), location=location, field=field) from None
        if not prompt.strip():
            raise InputError("the messages hold an empty prompt", location=location, field=field)
        if system is None:
            system = messages_system
    else:
        raise InputError(
            f"missing field {spec.prompt_field!r} (and no {spec.messages_field!r} field)",
            location=location, field=spec.prompt_field,
        )
    return PromptRow(
        id=_row_id(record, spec.id_field),
        position=record.position,
        prompt=prompt,
        system=system if system is not None else spec.default_system,
        keep={name: values.get(name) for name in spec.keep},
        location=location,
    )


def _require_text(value: Any, location: str, field: str) -> str:
    if not isinstance(value, str):
        raise InputError(
            f"expected a string, got {_type_name(value)}", location=location, field=field
        )
    if not value.strip():
        raise InputError("expected a non-empty string", location=location, field=field)
    return value


def _optional_str(values: Mapping[str, Any], field: str, location: str) -> str | None:
    value = values.get(field)
    if value is None or isinstance(value, str):
        return value
    raise InputError(f"expected a string, got {_type_name(value)}", location=location, field=field)


def _row_id(record: RawRecord, field: str) -> str:
    if field not in record.values:
        return str(record.position)
    value = record.values[field]
    # bool is an int subclass, but True as an id is surely a mistake
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise InputError(
            f"expected a string or integer id, got {_type_name(value)}",
            location=record.location, field=field,
        )
    if value == "":
        raise InputError("the id is empty", location=record.location, field=field)
    return str(value)
