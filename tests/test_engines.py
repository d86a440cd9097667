"""The engine seam: the engines the package offers, and a caller's own engine plugged in."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import click
import pytest

from pipeline.app import RunOptions, run
from pipeline.cli import main
from pipeline.client import Timeouts
from pipeline.engines import ENGINES, EngineOptions, Rows, open_engine
from pipeline.errors import ConfigError
from pipeline.models import Failure, Result
from pipeline.runner import BatchSettings, BatchState


def engine_options(engine: str) -> EngineOptions:
    return EngineOptions(engine=engine, urls=("http://127.0.0.1:9",), timeouts=Timeouts(),
                         proxy=None, hf_token=None, ca_bundle=None, max_response_chars=None,
                         output="out.jsonl", concurrency=4, actors=2, per_actor_concurrency=None,
                         ray_address=None, engine_connect_timeout=30.0, engine_start_timeout=120.0)


def test_the_command_line_offers_exactly_the_package_engines() -> None:
    run_command = main.commands["run"]
    choice = next(p.type for p in run_command.params if p.name == "engine")
    assert isinstance(choice, click.Choice)
    assert tuple(choice.choices) == ENGINES == ("local", "ray")


@pytest.mark.parametrize("name", ["inprocess", "spark"])
def test_an_unknown_engine_is_a_config_error_naming_the_real_ones(name: str) -> None:
    with pytest.raises(ConfigError) as caught:
        open_engine(engine_options(name), [], BatchSettings(), asyncio.Event(), BatchState())
    assert str(caught.value) == f"unknown engine {name!r}: use one of local, ray"


async def test_run_hands_its_engine_options_to_an_engine_it_is_given(tmp_path: Path) -> None:
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"id": f"r{i}", "prompt": f"q{i}"}) + "\n"
                              for i in range(3)), encoding="utf-8")
    seen: list[EngineOptions] = []

    @contextlib.asynccontextmanager
    async def failing(options: EngineOptions, rows: Rows, settings: BatchSettings,
                      stop: asyncio.Event, state: BatchState,
                      ) -> AsyncIterator[AsyncIterator[Result]]:
        seen.append(options)

        async def results() -> AsyncIterator[Result]:
            for row in rows:  # every row fails at once: no request is made
                yield row if isinstance(row, Failure) else Failure(
                    row.id, row.position, "test", "no engine here", 1, row=row)

        yield results()

    options = RunOptions(input=str(source), output=str(tmp_path / "out.jsonl"),
                         errors=str(tmp_path / "errors.jsonl"), urls=("http://127.0.0.1:9",),
                         hf_token="hf_secret_token", progress=False, engine="ray", actors=3)
    outcome = await run(options, engine=failing)
    assert outcome.exit_code == 3 and outcome.summary.failed == 3
    [given] = seen
    assert (given.engine, given.output, given.actors, given.hf_token) == \
        ("ray", options.output, 3, "hf_secret_token")
    assert "hf_secret_token" not in repr(given)
