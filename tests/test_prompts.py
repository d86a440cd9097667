"""Folding chats into the Space's (system, prompt) pair."""

from __future__ import annotations

import pytest

from pipeline.models import ChatMessage
from pipeline.prompts import fold_messages


def test_single_user_message_is_sent_as_is() -> None:
    assert fold_messages([{"role": "user", "content": "Hi there"}]) == (None, "Hi there")


def test_system_messages_are_joined_with_newlines() -> None:
    system, prompt = fold_messages([
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q"},
        {"role": "system", "content": "Answer in French."},
    ])
    assert (system, prompt) == ("Be brief.\nAnswer in French.", "Q")


def test_conversation_is_folded_into_one_prompt() -> None:
    system, prompt = fold_messages([
        ChatMessage("user", "What is 2+2?"),
        ChatMessage("assistant", "4"),
        ChatMessage("user", "And times 3?"),
    ])
    assert system is None
    assert prompt == "User: What is 2+2?\nAssistant: 4\nUser: And times 3?\nAssistant:"


@pytest.mark.parametrize(
    ("messages", "message"),
    [
        ([], "no user turn"),
        ([{"role": "system", "content": "only system"}], "no user turn"),
        ([{"role": "user", "content": 5}], "message 0: 'content' must be a string, got int"),
        ([{"content": "x"}], "message 0: 'role'"),
        ("just a string", "must be a list"),
    ],
)
def test_bad_messages_name_the_problem(messages: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        fold_messages(messages)  # type: ignore[arg-type]
