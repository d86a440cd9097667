"""What a Space's ``/config`` says about how to call ``model_chat`` (pure, no I/O)."""

from __future__ import annotations

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


def _history_format(config: Mapping[str, Any], chatbot: Mapping[str, Any] | None) -> HistoryFormat:
    props = chatbot.get("props") if chatbot else None
    declared = props.get("type") if isinstance(props, Mapping) else None
    if declared in ("tuples", "messages"):
        return "tuples" if declared == "tuples" else "messages"
    # Gradio 6 dropped tuples and the "type" prop along with them.
    version = str(config.get("version") or "")
    major = version.split(".", 1)[0]
    return "messages" if major.isdigit() and int(major) >= 6 else "tuples"


def parse_space_config(config: Any, api_name: str = "model_chat") -> SpaceInfo:
    """Read api prefix, protocol, fn_index and chatbot format from a ``/config`` body.

    Raises :class:`DiscoveryError` when the endpoint is missing or the protocol is
    one this client does not speak (Gradio 3's websockets, Gradio 4.0-4.8's ``sse``).
    """
    if not isinstance(config, Mapping):
        raise DiscoveryError("the Space's /config is not a JSON object")
    protocol = config.get("protocol", "ws")
    if protocol not in SUPPORTED_PROTOCOLS:
        raise DiscoveryError(
            f"the Space speaks Gradio protocol {protocol!r}; supported: "
            + ", ".join(sorted(SUPPORTED_PROTOCOLS))
        )
    dependencies = config.get("dependencies")
    if not isinstance(dependencies, list):
        raise DiscoveryError("the Space's /config has no dependencies list")
    wanted = api_name.lstrip("/")
    for index, dep in enumerate(dependencies):
        if not isinstance(dep, Mapping) or dep.get("api_name") != wanted:
            continue
        fn_index = dep.get("id", index)
        if not isinstance(fn_index, int):
            raise DiscoveryError(f"dependency {wanted!r} has a non-integer id {fn_index!r}")
        targets = dep.get("targets") or []
        trigger_id = None
        if targets and isinstance(targets[0], list) and isinstance(targets[0][0], int):
            trigger_id = targets[0][0]
        inputs, outputs = dep.get("inputs") or [], dep.get("outputs") or []
        components = {
            c.get("id"): c for c in config.get("components") or [] if isinstance(c, Mapping)
        }
        chatbot_id = inputs[1] if len(inputs) > 1 else None
        chatbot = components.get(chatbot_id)
        chatbot_index = outputs.index(chatbot_id) if chatbot_id in outputs else 1
        prefix = config.get("api_prefix") or ""
        if not isinstance(prefix, str):
            raise DiscoveryError(f"api_prefix is not a string: {prefix!r}")
        version = config.get("version")
        return SpaceInfo(
            api_prefix=prefix.rstrip("/"),
            protocol=protocol,
            fn_index=fn_index,
            trigger_id=trigger_id,
            history_format=_history_format(config, chatbot),
            chatbot_index=chatbot_index,
            version=str(version) if version is not None else None,
            discovered=True,
        )
    raise DiscoveryError(f"the Space has no endpoint named {wanted!r}")
