"""Turning a chat (a list of role/content messages) into the Space's (system, query) pair."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

DEFAULT_SYSTEM_PROMPT = "You are a helpful assistant."
"""What the Space's own UI puts in its System box; sent when the caller gives none."""

_ROLE_LABELS = {"user": "User", "assistant": "Assistant"}


def _role_and_content(message: Any, index: int) -> tuple[str, str]:
    if isinstance(message, Mapping):
        role, content = message.get("role"), message.get("content")
    else:  # ChatMessage or any object with the two attributes
        role, content = getattr(message, "role", None), getattr(message, "content", None)
    if not isinstance(role, str) or not role:
        raise ValueError(f"message {index}: 'role' must be a non-empty string")
    if not isinstance(content, str):
        raise ValueError(
            f"message {index}: 'content' must be a string, got {type(content).__name__}"
        )
    return role, content


def fold_messages(messages: Sequence[Any]) -> tuple[str | None, str]:
    """Split a chat into ``(system, prompt)`` for a Space that keeps no history.

    System messages are joined with newlines (``None`` when there are none). A
    single remaining message is sent as it is; a longer conversation is folded
    into one transcript ending in ``Assistant:`` so the model answers the last
    turn. Raises ``ValueError`` naming the message at fault.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise ValueError("messages must be a list of {'role', 'content'} objects")
    system_parts: list[str] = []
    turns: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        role, content = _role_and_content(message, index)
        if role == "system":
            system_parts.append(content)
        else:
            turns.append((role, content))
    if not turns:
        raise ValueError("messages hold no user turn to answer")
    system = "\n".join(system_parts) if system_parts else None
    if len(turns) == 1:
        return system, turns[0][1]
    lines = [f"{_ROLE_LABELS.get(role, role.capitalize())}: {content}" for role, content in turns]
    lines.append("Assistant:")
    return system, "\n".join(lines)
