"""What a Space's ``/config`` says about how to call ``model_chat`` (pure, no I/O)."""

from __future__ import annotations

import reprlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from .errors import DiscoveryError
from .gradio import DIFF_PROTOCOLS

SUPPORTED_PROTOCOLS = frozenset({"sse_v1"}) | DIFF_PROTOCOLS
HistoryFormat = Literal["tuples", "messages"]


@dataclass(frozen=True, slots=True)
class SpaceInfo:
    """How to reach one deployment of the Space's ``model_chat`` function."""

    api_prefix: str = ""
    protocol: str = "sse_v3"
    fn_index: int = 0
    trigger_id: int | None = 11
    history_format: HistoryFormat = "tuples"
    chatbot_index: int = 1
    version: str | None = None
    discovered: bool = False

    @property
    def diffs(self) -> bool:
        """Whether ``process_generating`` messages after the first carry edits."""
        return self.protocol in DIFF_PROTOCOLS


DEFAULT_SPACE_INFO = SpaceInfo()
"""The real Space as last seen (Gradio 4.x, root paths): used when /config is unreachable."""


def _int(value: Any) -> int | None:
    """``value`` if it is a JSON integer (not a bool), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _list(value: Any) -> list[Any]:
    """``value`` if it is a list; anything else counts as absent (an empty list)."""
    return value if isinstance(value, list) else []


def _history_format(config: Mapping[str, Any], chatbot: Mapping[str, Any] | None) -> HistoryFormat:
    props = chatbot.get("props") if chatbot else None
    declared = props.get("type") if isinstance(props, Mapping) else None
    if declared in ("tuples", "messages"):
        return "tuples" if declared == "tuples" else "messages"
    # Gradio 6 dropped tuples and the "type" prop along with them.
    version = config.get("version")
    major = version.split(".", 1)[0] if isinstance(version, str) else ""
    # isascii: "²".isdigit() is true but int() rejects it; len: int() caps digits too
    if major.isascii() and major.isdigit() and len(major) < 10:
        return "messages" if int(major) >= 6 else "tuples"
    return "tuples"


def parse_space_config(config: Any, api_name: str = "model_chat") -> SpaceInfo:
    """Read api prefix, protocol, fn_index and chatbot format from a ``/config`` body.

    Raises :class:`DiscoveryError` when the endpoint is missing or the protocol is
    one this client does not speak (Gradio 3's websockets, Gradio 4.0-4.8's ``sse``).
    """
    if not isinstance(config, Mapping):
        raise DiscoveryError("the Space's /config is not a JSON object")
    protocol = config.get("protocol", "ws")
    if not isinstance(protocol, str) or protocol not in SUPPORTED_PROTOCOLS:
        raise DiscoveryError(
            f"the Space speaks Gradio protocol {reprlib.repr(protocol)}; supported: "
            + ", ".join(sorted(SUPPORTED_PROTOCOLS))
        )
    dependencies = config.get("dependencies")
    if not isinstance(dependencies, list):
        raise DiscoveryError("the Space's /config has no dependencies list")
    wanted = api_name.lstrip("/")
    for index, dep in enumerate(dependencies):
        if not isinstance(dep, Mapping) or dep.get("api_name") != wanted:
            continue
        fn_index = _int(dep.get("id", index))
        if fn_index is None:
            raise DiscoveryError(
                f"dependency {wanted!r} has a non-integer id {reprlib.repr(dep.get('id'))}"
            )
        # Malformed optional parts count as absent: the defaults below apply.
        targets = _list(dep.get("targets"))
        first_target = _list(targets[0]) if targets else []
        trigger_id = _int(first_target[0]) if first_target else None
        inputs, outputs = _list(dep.get("inputs")), _list(dep.get("outputs"))
        components = {
            c["id"]: c
            for c in _list(config.get("components"))
            if isinstance(c, Mapping) and _int(c.get("id")) is not None
        }
        chatbot_id = _int(inputs[1]) if len(inputs) > 1 else None
        chatbot = components.get(chatbot_id) if chatbot_id is not None else None
        chatbot_index = 1
        if chatbot_id is not None:
            # not outputs.index(): True == 1, so a bool must not match an id
            for position, output in enumerate(outputs):
                if _int(output) == chatbot_id:
                    chatbot_index = position
                    break
        prefix = config.get("api_prefix") or ""
        if not isinstance(prefix, str):
            raise DiscoveryError(f"api_prefix is not a string: {reprlib.repr(prefix)}")
        version = config.get("version")
        return SpaceInfo(
            api_prefix=prefix.rstrip("/"),
            protocol=protocol,
            fn_index=fn_index,
            trigger_id=trigger_id,
            history_format=_history_format(config, chatbot),
            chatbot_index=chatbot_index,
            version=version if isinstance(version, str) else None,
            discovered=True,
        )
    raise DiscoveryError(f"the Space has no endpoint named {wanted!r}")
