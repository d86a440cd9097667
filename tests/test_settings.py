"""The run's settings: each default written once (pipeline/settings.py), and the command
line, ``configs/default.toml`` and the environment agreeing with it."""

from __future__ import annotations

import ast
import pickle
import re
import sys
from dataclasses import fields, is_dataclass, replace
from pathlib import Path
from typing import Any

import click
import pytest

from pipeline.app import RunOptions, engine_options
from pipeline.cli import main, run_options
from pipeline.engines.actor import ActorConfig, PromptBatchCallable
from pipeline.engines.base import EngineOptions
from pipeline.engines.distributed import actor_config
from pipeline.provider import Qwen_Qwen_2_72B
from pipeline.settings import (
    DEFAULT_MODEL,
    BatchSettings,
    ClientSettings,
    EngineSettings,
    RetryPolicy,
    Timeouts,
    default_of,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_TOML = ROOT / "configs" / "default.toml"
SETTINGS_SOURCES = (ROOT / "pipeline" / "settings.py", ROOT / "pipeline" / "retry.py")
RUN = main.commands["run"]
SETTINGS_CLASSES = (ClientSettings, BatchSettings, EngineSettings, RetryPolicy, Timeouts)


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No option may come from the environment of whoever runs the tests."""
    import os

    for name in list(os.environ):
        if name.startswith("QWEN_BATCH_") or name in ("HF_TOKEN",):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def options_from(*args: str, default_map: dict[str, Any] | None = None) -> RunOptions:
    """What ``qwen-batch run in.jsonl ARGS`` would run, without running it."""
    ctx = RUN.make_context("run", ["in.jsonl", *args], default_map=default_map)
    with ctx:
        params = dict(ctx.params)
        return run_options(params.pop("input_path"), params)


def flat(value: Any, prefix: str = "") -> dict[str, Any]:
    """A settings tree as dotted paths to leaves: ``batch.policy.max_attempts`` -> 4."""
    if not is_dataclass(value):
        return {prefix: value}
    out: dict[str, Any] = {}
    for item in fields(value):
        out.update(flat(getattr(value, item.name), f"{prefix}.{item.name}" if prefix else item.name))
    return out


def test_the_command_lines_defaults_are_the_settings_defaults() -> None:
    options = options_from()
    assert options.client == ClientSettings()
    assert options.batch == BatchSettings()
    assert options.engine == EngineSettings()
    # Everything else too (the bar is off here only because stderr is no terminal).
    assert replace(options, progress=True) == RunOptions(input="in.jsonl", output=options.output,
                                                         errors=options.errors)


def _shown_in_default_toml() -> dict[str, Any]:
    """The commented-out ``# key = value`` lines of configs/default.toml, parsed as TOML."""
    shown: dict[str, Any] = {}
    for line in DEFAULT_TOML.read_text(encoding="utf-8").splitlines():
        if re.match(r"^# [a-z][a-z-]* = ", line):
            shown.update(tomllib.loads(line[2:]))  # the value, its comment ignored
    return shown


def test_default_toml_shows_the_settings_defaults() -> None:
    shown = _shown_in_default_toml()
    resolved = RUN.make_context("run", ["in.jsonl"]).params
    params = {opt[2:]: p for p in RUN.params for opt in p.opts if opt.startswith("--")}
    assert set(shown) <= set(params), set(shown) - set(params)
    defaults = {}
    for key, value in shown.items():
        default = resolved[params[key].name]
        default = list(default) if isinstance(default, tuple) else default
        if default not in (None, []):  # the others have no default and show an example
            assert value == default, (key, value, default)
            defaults[params[key].name] = value
    assert len(defaults) >= 25, sorted(defaults)
    # Read as the config file's values, they make the very settings of no option at all
    # (but for require_id: an id field named in a config must exist in the input).
    assert replace(options_from(default_map=defaults), require_id=False) == options_from()


def test_circuit_breaker_knobs_come_from_the_command_line_toml_and_environment(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    batch = options_from("--failure-threshold", "7", "--probe-cooldown", "0.5").batch
    assert (batch.failure_threshold, batch.probe_cooldown) == (7, 0.5)
    config = tmp_path / "job.toml"
    config.write_text("[run]\nfailure-threshold = 3\nprobe_cooldown = 9.5\n")
    batch = options_from("--config", str(config)).batch
    assert (batch.failure_threshold, batch.probe_cooldown) == (3, 9.5)
    monkeypatch.setenv("QWEN_BATCH_FAILURE_THRESHOLD", "11")
    monkeypatch.setenv("QWEN_BATCH_PROBE_COOLDOWN", "4")
    batch = options_from("--config", str(config)).batch  # the environment beats the file
    assert (batch.failure_threshold, batch.probe_cooldown) == (11, 4.0)
    batch = options_from("--failure-threshold", "2").batch  # the command line beats both
    assert (batch.failure_threshold, batch.probe_cooldown) == (2, 4.0)
    with pytest.raises(click.BadParameter):
        options_from("--failure-threshold", "0")


def test_the_actors_get_the_run_settings_unflattened() -> None:
    options = options_from("--failure-threshold", "7", "--probe-cooldown", "0.5", "--rate", "4",
                           "--max-attempts", "9", "--retry-delay", "0.25", "--concurrency", "8",
                           "--engine", "ray", "--actors", "2", "--timeout", "33")
    config = actor_config(engine_options(options), options.batch,
                          options.engine.per_actor(options.batch.concurrency))
    assert config.client == options.client
    assert config.batch == replace(options.batch, concurrency=4, rate=2.0)
    settings = PromptBatchCallable(config).settings(deadline=None)
    assert (settings.failure_threshold, settings.probe_cooldown) == (7, 0.5)
    assert settings.policy == RetryPolicy(max_attempts=9, base_delay=0.25)


def test_settings_and_actor_config_survive_pickling_and_hide_secrets() -> None:
    client = ClientSettings(urls=("http://127.0.0.1:1", "http://127.0.0.1:2"),
                            proxy="http://u:pw-secret@127.0.0.1:3128", hf_token="hf_secret",
                            timeouts=Timeouts(connect=1, read=2, idle=3, total=4, request=1))
    batch = BatchSettings(concurrency=3, policy=RetryPolicy(2, 0.1, 0.2), failure_threshold=2,
                          probe_cooldown=0.3, seed=5)
    config = ActorConfig(client=client, batch=batch, deadline_at=123.0, flush_rows=2)
    engine = EngineOptions(engine=EngineSettings(kind="ray", actors=3), client=client,
                           output="out.jsonl")
    for value in (client, batch, config, engine, EngineSettings(), Timeouts(), RetryPolicy(),
                  RunOptions(input="i", output="o", errors="e", client=client, batch=batch)):
        assert pickle.loads(pickle.dumps(value)) == value
    for value in (client, config, engine):
        assert "hf_secret" not in repr(value) and "pw-secret" not in repr(value)


def test_the_provider_default_model_is_the_one_constant() -> None:
    assert DEFAULT_MODEL == "qwen-qwen2-72b-instruct"
    assert Qwen_Qwen_2_72B.default_model == DEFAULT_MODEL
    assert Qwen_Qwen_2_72B.get_model("qwen-2-72b") == DEFAULT_MODEL
    assert default_of(BatchSettings, "model") == DEFAULT_MODEL
    literal = '"qwen-qwen2-72b-instruct"'
    holders = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "pipeline").rglob("*.py"))
               if literal in p.read_text(encoding="utf-8")]
    assert holders == ["pipeline/settings.py"]


def test_no_run_option_writes_its_own_default() -> None:
    source = (ROOT / "pipeline" / "cli.py").read_text(encoding="utf-8")
    start = source.index('@main.command("run"')
    decorators = source[start:source.index("def run_command", start)]
    literal = re.findall(r"default=\s*[-\d\"'\[(]", decorators)
    assert literal == [], "run options must take their defaults from pipeline/settings.py"


def _field_notes() -> dict[tuple[str, str], str]:
    """Each settings field's docstring (the string after it), by (class, field)."""
    notes = {}
    for source in SETTINGS_SOURCES:
        for node in ast.parse(source.read_text(encoding="utf-8")).body:
            if not isinstance(node, ast.ClassDef):
                continue
            body = node.body
            for item, after in zip(body, [*body[1:], None], strict=True):
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) \
                        and isinstance(after, ast.Expr) and isinstance(after.value, ast.Constant):
                    notes[(node.name, item.target.id)] = str(after.value.value)
    return notes


# A value for each option that differs from its default and passes its checks.
CHANGED: dict[str, list[str]] = {
    "urls": ["--url", "http://127.0.0.1:1"], "proxy": ["--proxy", "http://127.0.0.1:3128"],
    "hf_token": ["--hf-token", "hf_x"], "deadline": ["--deadline", "1h"],
    "engine": ["--engine", "ray"], "ray_address": ["--address", "auto"],
    "input_format": ["--input-format", "csv"], "output_format": ["--output-format", "parquet"],
    "model": ["--model", "qwen-2-72b"],
}
REACHED_OTHERWISE = {
    "client.ca_bundle": "needs a real PEM file: tests/test_fail_fast.py runs --ca-bundle",
    "batch.model": "one model is served: the alias gives the same name",
}


def test_every_settings_field_is_set_by_an_option_or_is_internal() -> None:
    base = flat(options_from())
    resolved = RUN.make_context("run", ["in.jsonl"]).params
    reached: set[str] = set()
    for param in RUN.params:
        if not isinstance(param, click.Option) or param.name in ("config", "help"):
            continue
        assert param.name is not None
        if param.name in CHANGED:
            args = CHANGED[param.name]
        elif param.is_flag:
            args = [param.opts[0]]
        elif isinstance(param.type, (click.IntRange, click.FloatRange)):
            args = [param.opts[-1], str((resolved[param.name] or 1) + 1)]
        elif param.name == "ca_bundle":
            continue
        else:
            args = [param.opts[-1], "x"]
        changed = flat(options_from(*args))
        reached |= {path for path, value in changed.items() if base[path] != value}
    notes = _field_notes()
    missing = []
    for prefix, cls in (("client", ClientSettings), ("batch", BatchSettings),
                        ("engine", EngineSettings), ("batch.policy", RetryPolicy),
                        ("client.timeouts", Timeouts)):
        for item in fields(cls):
            path = f"{prefix}.{item.name}"
            if is_dataclass(default_of(cls, item.name)) or path in REACHED_OTHERWISE:
                continue
            if path not in reached and not notes.get((cls.__name__, item.name), "").startswith(
                    "internal:"):
                missing.append(path)
    assert missing == [], f"settings no option sets and not marked internal: {missing}"
