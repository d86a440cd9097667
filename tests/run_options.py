"""``run_options(input=..., urls=..., concurrency=...)``: a RunOptions from flat keywords.

Tests name the few knobs they change; each keyword goes to the settings object that has
a field of that name (RunOptions itself, then ClientSettings, BatchSettings, its
RetryPolicy, EngineSettings), so no default is repeated here and a typo fails.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

from pipeline.app import RunOptions
from pipeline.settings import BatchSettings, ClientSettings, EngineSettings, RetryPolicy

_OWN = {f.name for f in fields(RunOptions)} - {"client", "batch", "engine"}


def _names(cls: type) -> set[str]:
    return {f.name for f in fields(cls)}


def run_options(*, input: str, output: str, errors: str, **flat: Any) -> RunOptions:
    """RunOptions with ``flat`` spread over its settings objects (see the module docstring)."""
    return changed(RunOptions(input=input, output=output, errors=errors), **flat)


def changed(options: RunOptions, **flat: Any) -> RunOptions:
    """``options`` with the flat keywords of :func:`run_options` changed."""
    own = {k: v for k, v in flat.items() if k in _OWN}
    client = {k: v for k, v in flat.items() if k in _names(ClientSettings)}
    batch = {k: v for k, v in flat.items() if k in _names(BatchSettings)}
    policy = {k: v for k, v in flat.items() if k in _names(RetryPolicy)}
    engine = {k: v for k, v in flat.items() if k in _names(EngineSettings)}
    unknown = set(flat) - set(own) - set(client) - set(batch) - set(policy) - set(engine)
    if unknown:
        raise TypeError(f"no setting is called {sorted(unknown)}")
    return replace(options, **own, client=replace(options.client, **client),
                   batch=replace(options.batch, **batch,
                                 policy=replace(options.batch.policy, **policy)),
                   engine=replace(options.engine, **engine))
