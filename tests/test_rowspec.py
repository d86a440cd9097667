"""Tests for pipeline.rowspec: record-to-prompt mapping (fields, safe templates, messages)."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.errors import ConfigError, InputError
from pipeline.models import RawRecord
from pipeline.prompts import DEFAULT_SYSTEM_PROMPT
from pipeline.rowspec import RowSpec, build_prompt_row, content_id

# --- build_prompt_row -------------------------------------------------------------------------

LOC = "in.jsonl:7"


def row(values: dict[str, Any], spec: RowSpec | None = None, position: int = 6) -> Any:
    return build_prompt_row(RawRecord(position, LOC, values), spec or RowSpec())


def error(values: dict[str, Any], spec: RowSpec | None = None) -> InputError:
    with pytest.raises(InputError) as info:
        row(values, spec)
    assert info.value.location == LOC and str(info.value).startswith(LOC)
    return info.value


def test_prompt_field_with_id_system_and_keep() -> None:
    spec = RowSpec(keep=("lang", "absent"), default_system="default")
    result = row({"id": 42, "prompt": "Hi", "system": "Be brief", "lang": "en"}, spec)
    assert (result.id, result.position, result.prompt, result.system) == ("42", 6, "Hi", "Be brief")
    assert result.keep == {"lang": "en", "absent": None}
    assert result.location == LOC


def test_defaults_system_from_spec() -> None:
    assert row({"prompt": "Hi"}, RowSpec(default_system="sys")).system == "sys"
    assert row({"prompt": "Hi"}).system is None


def test_without_an_id_field_the_id_comes_from_what_is_sent_not_the_position() -> None:
    first = row({"prompt": "Hi", "other": 1}, position=0)
    assert first.id.startswith("h:") and len(first.id) == 34
    assert int(first.id[2:], 16) >= 0  # 32 hex digits
    # The same request anywhere in the file (and whatever else the record holds): same id.
    assert row({"prompt": "Hi", "other": 2}, position=9).id == first.id
    assert row({"messages": [{"role": "user", "content": "Hi"}]}).id == first.id
    spec = RowSpec(template="{greeting}")
    assert row({"greeting": "Hi"}, spec).id == first.id
    # No system means the Space's default is sent: the same request as naming it.
    assert row({"prompt": "Hi", "system": DEFAULT_SYSTEM_PROMPT}).id == first.id
    assert row({"prompt": "Hi"}, RowSpec(default_system=DEFAULT_SYSTEM_PROMPT)).id == first.id
    # Another prompt or another system prompt is another request.
    others = {row({"prompt": "Hi!"}).id, row({"prompt": "Hi", "system": "Be brief"}).id,
              row({"prompt": "Hi"}, RowSpec(default_system="Be brief")).id}
    assert first.id not in others and len(others) == 2
    # No ambiguity between where the prompt ends and the system begins.
    assert row({"prompt": "a", "system": "bc"}).id != row({"prompt": "ab", "system": "c"}).id
    assert content_id("Hi", None) == first.id


def test_custom_field_names() -> None:
    spec = RowSpec(prompt_field="q", id_field="key", system_field="sys")
    result = row({"q": "question", "key": "k1", "sys": "s"}, spec)
    assert (result.id, result.prompt, result.system) == ("k1", "question", "s")


def test_template_renders_plain_fields() -> None:
    spec = RowSpec(template="Translate to {lang}: {text}")
    assert row({"lang": "French", "text": "cat", "prompt": "ignored"}, spec).prompt == (
        "Translate to French: cat"
    )


def test_template_missing_or_null_field_names_it() -> None:
    spec = RowSpec(template="{a} and {b}")
    for values in ({"a": 1}, {"a": 1, "b": None}):
        err = error(values, spec)
        assert err.field == "b" and "missing field 'b'" in str(err)


def test_template_bad_format_spec_is_an_input_error() -> None:
    err = error({"n": "text"}, RowSpec(template="{n:d}"))
    assert err.field == "n" and "template" in str(err)


@pytest.mark.parametrize(
    "template", ["{a.__class__}", "{a[0]}", "{}", "{0.real}", "{a", "{a:{b.c}}"]
)
def test_unsafe_or_invalid_templates_are_rejected_up_front(template: str) -> None:
    with pytest.raises(ConfigError):
        RowSpec(template=template)


def test_prompt_wrong_type_and_empty() -> None:
    err = error({"prompt": 3})
    assert err.field == "prompt" and "expected a string, got int" in str(err)
    assert "field 'prompt'" in str(err)
    assert error({"prompt": "  "}).field == "prompt"


def test_missing_prompt_and_messages() -> None:
    err = error({"id": "x", "text": "hello"})
    assert "missing field 'prompt'" in str(err) and err.field == "prompt"
    assert "--prompt-field" in str(err) and "--template" in str(err)  # where else it may be


def test_null_prompt_counts_as_absent() -> None:
    result = row({"prompt": None, "messages": [{"role": "user", "content": "hi"}]})
    assert result.prompt == "hi"


def test_messages_single_turn_and_system() -> None:
    messages = [{"role": "system", "content": "S1"}, {"role": "system", "content": "S2"},
                {"role": "user", "content": "Q"}]
    result = row({"messages": messages}, RowSpec(default_system="default"))
    assert (result.prompt, result.system) == ("Q", "S1\nS2")


def test_messages_row_system_field_wins() -> None:
    messages = [{"role": "system", "content": "S1"}, {"role": "user", "content": "Q"}]
    assert row({"messages": messages, "system": "row"}).system == "row"


def test_messages_multi_turn_is_folded() -> None:
    messages = [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"},
                {"role": "user", "content": "C"}]
    result = row({"messages": messages})
    assert result.prompt == "User: A\nAssistant: B\nUser: C\nAssistant:"
    assert result.system is None


@pytest.mark.parametrize(
    "messages",
    ["just text", [{"role": "user"}], [{"role": "user", "content": 5}], ["x"],
     [{"role": "system", "content": "only a system"}]],
)
def test_bad_messages_name_the_field(messages: Any) -> None:
    assert error({"messages": messages}).field == "messages"


@pytest.mark.parametrize(
    ("value", "text"),
    [(True, "got bool"), (1.5, "got float"), ("", "empty"), (None, "got null"), ([1], "got list")],
)
def test_bad_ids(value: Any, text: str) -> None:
    err = error({"id": value, "prompt": "p"})
    assert err.field == "id" and text in str(err)


def test_system_wrong_type() -> None:
    err = error({"prompt": "p", "system": ["a"]})
    assert err.field == "system" and "expected a string, got list" in str(err)
