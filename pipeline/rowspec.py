"""From a record to a prompt: field names, safe templates, messages folding (RowSpec)."""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.digests import digest128
from pipeline.errors import ConfigError, InputError
from pipeline.models import PromptRow, RawRecord
from pipeline.prompts import DEFAULT_SYSTEM_PROMPT, fold_messages

_MAX_FORMAT_WIDTH = 100_000  # widths/precisions in a template's format specs
_SPEC_NUMBER = re.compile(r"[0-9]+")
CONTENT_ID_PREFIX = "h:"
"""Starts the id of a row that has no id field: ``h:`` + 32 hex digits of its request."""


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
    an error (a null id among real ids is a data problem, not "derive one from the content").
    A record without the id field gets :func:`content_id`.
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
    elif spec.prompt_field in values:
        raise InputError("the prompt is null" + (
            "" if spec.messages_field not in values else f" (and so is {spec.messages_field!r})"),
            location=location, field=spec.prompt_field)
    else:
        raise InputError(
            f"missing field {spec.prompt_field!r} (and no {spec.messages_field!r} field; a prompt "
            "under another name: --prompt-field, or build it with --template)",
            location=location, field=spec.prompt_field,
        )
    _require_unicode(prompt, location, None if spec.template is not None
                     else spec.prompt_field if values.get(spec.prompt_field) is not None
                     else spec.messages_field)
    if system is not None:
        _require_unicode(system, location, spec.system_field)
    if system is None:
        system = spec.default_system
    has_id = spec.id_field in values
    return PromptRow(
        id=_row_id(record, spec.id_field) if has_id else content_id(prompt, system),
        id_value=values[spec.id_field] if has_id and isinstance(values[spec.id_field], int)
        else None,
        position=record.position,
        prompt=prompt,
        system=system,
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


def _require_unicode(text: str, location: str, field: str | None) -> None:
    """Refuse text that cannot be sent as UTF-8: a lone surrogate (JSON ``"\\ud800"``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InputError(
            f"not valid Unicode text: a lone surrogate {text[exc.start]!r} at character "
            f"{exc.start} (fix the input; it cannot be sent)", location=location, field=field,
        ) from None


def _optional_str(values: Mapping[str, Any], field: str, location: str) -> str | None:
    value = values.get(field)
    if value is None or isinstance(value, str):
        return value
    raise InputError(f"expected a string, got {_type_name(value)}", location=location, field=field)


def content_id(prompt: str, system: str | None) -> str:
    """The id of a row without an id field: a digest of the request it makes.

    ``h:`` and 32 hex digits (128 bits of BLAKE2b) of the prompt and the system prompt
    as sent (None is the Space's default), so the id does not move when lines are
    inserted, deleted or reordered, and is the same for the JSONL and the Parquet
    form of a row. Identical rows share it; the plan numbers the repeats
    (``h:...#2``, :func:`pipeline.jobs.plan_rows`).
    """
    sent = [prompt, system if system is not None else DEFAULT_SYSTEM_PROMPT]
    return f"{CONTENT_ID_PREFIX}{digest128(json.dumps(sent)):032x}"


def _row_id(record: RawRecord, field: str) -> str:
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
