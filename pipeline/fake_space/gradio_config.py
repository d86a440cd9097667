"""The ``GET /config`` document of the fake Space, per Gradio major version.

A trimmed copy of the captures ``gradio4.44.1_config.json`` and
``gradio6.31.0_config.json``: the top-level keys, their order and every
dependency field are kept as captured; component props are cut down to the ones
a client could care about (ids, types, labels, values, visibility, chatbot type).
"""

from __future__ import annotations

import json
from typing import Any

_SYSTEM = "You are a helpful assistant."
_LAYOUT: dict[str, Any] = {
    "id": 0,
    "children": [
        {"id": 1},
        {
            "id": 2,
            "children": [
                {"id": 3, "children": [{"id": 5, "children": [{"id": 4}]}]},
                {"id": 6, "children": [{"id": 7}]},
                {"id": 9, "children": [{"id": 8}]},
            ],
        },
        {"id": 10},
        {"id": 15, "children": [{"id": 11}]},
        {"id": 12, "children": [{"id": 13}, {"id": 14}]},
    ],
}
# (id, targets, inputs, outputs, api_name, generator), in the Space's event order.
_EVENTS: list[tuple[int, list[list[Any]], list[int], list[int], str, bool]] = [
    (0, [[11, "submit"]], [11, 10, 8], [11, 10, 4], "model_chat", True),
    (1, [[14, "click"]], [11, 10, 8], [11, 10, 4], "model_chat_1", True),
    (2, [[13, "click"]], [], [11, 10], "clear_session", False),
    (3, [[7, "click"]], [4], [8, 4, 10], "modify_system_session", False),
]


def _components(major: int) -> list[dict[str, Any]]:
    chatbot: dict[str, Any] = {"value": [], "label": "qwen2-72B-instruct", "visible": True}
    if major == 4:
        chatbot["type"] = "tuples"  # 6.x has no type prop: messages are the only format
    spec: list[tuple[int, str, dict[str, Any], bool]] = [
        (1, "markdown", {"value": "<center><font size=8>Qwen2-72B-instruct Chat</center>"}, False),
        (2, "row", {"visible": True}, True),
        (3, "column", {"scale": 3, "visible": True}, True),
        (4, "textbox", {"value": _SYSTEM, "label": "System", "visible": True}, False),
        (5, "form", {"scale": 0}, True),
        (6, "column", {"scale": 1, "visible": True}, True),
        (7, "button", {"value": "Set system prompt and clear history", "visible": True}, True),
        (8, "textbox", {"value": _SYSTEM, "visible": False}, False),
        (9, "form", {"scale": 1}, True),
        (10, "chatbot", chatbot, False),
        (11, "textbox", {"label": "Input", "visible": True}, False),
        (12, "row", {"visible": True}, True),
        (13, "button", {"value": "Clear history", "visible": True}, True),
        (14, "button", {"value": "Send", "visible": True}, True),
        (15, "form", {"scale": 0}, True),
    ]
    out = []
    for cid, ctype, props, skip_api in spec:
        props = {**props, "name": ctype}
        out.append({"id": cid, "type": ctype, "props": props, "skip_api": skip_api, "key": None})
    return out


def _dependencies(major: int) -> list[dict[str, Any]]:
    deps = []
    for dep_id, targets, inputs, outputs, api_name, generator in _EVENTS:
        d: dict[str, Any] = {
            "id": dep_id,
            "targets": targets,
            "inputs": inputs,
            "outputs": outputs,
            "backend_fn": True,
            "js": None,
            "queue": True,
            "api_name": api_name,
        }
        if major == 4:
            d.update(
                scroll_to_output=False,
                show_progress="full",
                batch=False,
                max_batch_size=4,
                cancels=[],
                types={"generator": generator, "cancel": False},
                collects_event_data=False,
                trigger_after=None,
                trigger_only_on_success=False,
                trigger_mode="once",
                show_api=True,
                zerogpu=False,
                rendered_in=None,
            )
        else:
            d.update(
                api_description=None,
                scroll_to_output=False,
                show_progress="full",
                show_progress_on=None,
                batch=False,
                max_batch_size=4,
                cancels=[],
                types={"generator": generator, "cancel": False},
                collects_event_data=False,
                trigger_after=None,
                trigger_only_on_success=False,
                trigger_only_on_failure=False,
                trigger_mode="once",
                api_visibility="public",
                rendered_in=None,
                render_id=None,
                connection="sse",
                time_limit=None,
                stream_every=0.5,
                event_specific_args=None,
                component_prop_inputs=[],
                js_implementation=None,
            )
        deps.append(d)
    return deps


def build_gradio_config(major: int, root: str) -> dict[str, Any]:
    """The /config document of a Gradio ``major`` (4 or 6) app served at ``root``."""
    components = _components(major)
    deps = _dependencies(major)
    head: dict[str, Any] = {
        "mode": "blocks",
        "app_id": 3743180796211468310 if major == 4 else 9224228587504389302,
        "dev_mode": False,
    }
    shared: dict[str, Any] = {  # the keys both versions send, with the same values
        "analytics_enabled": False,
        "components": components,
        "css": None,
        "connect_heartbeat": False,
        "js": None,
        "head": None,
        "title": "Gradio",
        "space_id": None,
        "enable_queue": True,
        "show_error": False,
        "is_colab": False,
        "max_file_size": None,
        "stylesheets": [],
        "theme": "default",
        "protocol": "sse_v3",
        "body_css": {},
        "fill_height": False,
        "fill_width": False,
        "theme_hash": "",
    }
    if major == 4:
        return {
            "version": "4.44.1",
            **head,
            **shared,
            "show_api": True,
            "layout": _LAYOUT,
            "dependencies": deps,
            "root": root,
            "username": None,
        }
    return {
        "version": "6.31.0",
        "api_prefix": "/gradio_api",
        **head,
        "vibe_mode": False,
        **shared,
        "footer_links": ["api", "gradio", "settings", "runs"],
        "run_history": True,
        "pwa": False,
        "pages": [["", "Home", True]],
        "page": {
            "": {
                "layout": _LAYOUT,
                "components": [c["id"] for c in components],
                "dependencies": [d["id"] for d in deps],
            }
        },
        "mcp_server": False,
        "i18n_translations": None,
        "dependencies": deps,
        "layout": _LAYOUT,
        "username": None,
        "root": root,
    }


def gradio_config_bytes(major: int, root: str) -> bytes:
    """:func:`build_gradio_config` serialised compactly, as Gradio sends it."""
    return json.dumps(
        build_gradio_config(major, root), separators=(",", ":"), ensure_ascii=False
    ).encode()
