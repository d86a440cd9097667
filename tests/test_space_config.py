"""Discovery: what /config says about the model_chat endpoint."""

from __future__ import annotations

import copy

import pytest
from captures import config

from pipeline.errors import DiscoveryError
from pipeline.space_config import DEFAULT_SPACE_INFO, parse_space_config


def test_gradio4_config_root_paths_tuples() -> None:
    info = parse_space_config(config("4.44.1"))
    assert (info.api_prefix, info.protocol, info.fn_index, info.trigger_id) == ("", "sse_v3", 0, 11)
    assert info.history_format == "tuples"
    assert info.chatbot_index == 1 and info.diffs and info.discovered
    assert info.version == "4.44.1"


def test_gradio6_config_prefix_and_messages() -> None:
    info = parse_space_config(config("6.31.0"))
    assert (info.api_prefix, info.fn_index, info.history_format) == ("/gradio_api", 0, "messages")


def test_defaults_match_the_real_space_as_last_seen() -> None:
    assert parse_space_config(config("4.44.1")).fn_index == DEFAULT_SPACE_INFO.fn_index
    assert DEFAULT_SPACE_INFO.api_prefix == "" and not DEFAULT_SPACE_INFO.discovered


def test_reordered_dependencies_are_found_by_api_name() -> None:
    cfg = copy.deepcopy(config("6.31.0"))
    deps = cfg["dependencies"]
    deps.reverse()
    for new_id, dep in enumerate(deps):
        dep["id"] = new_id
    assert parse_space_config(cfg).fn_index == 3


def test_explicit_messages_type_on_gradio5() -> None:
    cfg = copy.deepcopy(config("4.44.1"))
    cfg["version"] = "5.49.1"
    next(c for c in cfg["components"] if c["id"] == 10)["props"]["type"] = "messages"
    assert parse_space_config(cfg).history_format == "messages"


def test_sse_v1_has_no_diffs() -> None:
    cfg = dict(config("4.44.1"), protocol="sse_v1")
    assert not parse_space_config(cfg).diffs


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda c: c.update(protocol="ws"), "protocol 'ws'"),
        (lambda c: c.pop("protocol"), "protocol 'ws'"),
        (lambda c: c.update(dependencies=[]), "no endpoint named 'model_chat'"),
        (lambda c: c.pop("dependencies"), "no dependencies"),
        (lambda c: c["dependencies"][0].update(id="zero"), "non-integer id"),
    ],
)
def test_unusable_configs(mutate, message: str) -> None:
    cfg = copy.deepcopy(config("4.44.1"))
    mutate(cfg)
    with pytest.raises(DiscoveryError, match=message):
        parse_space_config(cfg)


def test_not_an_object() -> None:
    with pytest.raises(DiscoveryError):
        parse_space_config(["not", "a", "config"])
