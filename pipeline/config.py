"""Option values from a TOML file, for Click's ``default_map`` (command line > env > file > default)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

ENV_PREFIX = "QWEN_BATCH_"


def env_name(option: str) -> str:
    """The environment variable of an option: ``--max-attempts`` -> ``QWEN_BATCH_MAX_ATTEMPTS``."""
    return ENV_PREFIX + option.lstrip("-").replace("-", "_").upper()


def load_config(
    path: str, command: str, known: Iterable[str] | Mapping[str, str]
) -> dict[str, Any]:
    """Read ``path`` and return the values for ``command`` keyed by parameter name.

    Keys may sit at the top level or in a ``[command]`` table (the table wins),
    spelled with dashes or underscores. Unknown keys are an error, so a typo in a
    nightly job's config fails loudly instead of being ignored.
    """
    try:
        raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    # ``known`` maps each accepted key (an option's long name) to its parameter name.
    aliases = dict(known) if isinstance(known, Mapping) else {n: n for n in known}
    names = {k.replace("-", "_") for k in aliases}
    target = {k.replace("-", "_"): v for k, v in aliases.items()}
    values: dict[str, Any] = {}
    tables = {k for k, v in raw.items() if isinstance(v, Mapping)}
    # Table names, like keys, may be spelled with dashes or underscores: [fake_space]
    # is the table of the command ``fake-space``.
    own = sorted(t for t in tables if _norm(t) == _norm(command))
    scopes = [{k: v for k, v in raw.items() if k not in tables}, *(raw[t] for t in own)]
    for scope in scopes:
        spelled: dict[str, str] = {}
        for key, value in scope.items():
            name = key.replace("-", "_")
            if name in spelled:
                raise ConfigError(f"config file {path}: {spelled[name]!r} and {key!r} "
                                  "set the same option; keep one")
            spelled[name] = key
            if name not in names:
                raise ConfigError(
                    f"config file {path}: unknown option {key!r} for {command!r}; "
                    f"known: {', '.join(sorted(n.replace('_', '-') for n in names))}"
                )
            values[target[name]] = value
    for table in tables - set(own):
        if _norm(table) not in ("run", "check", "demo", "fake_space"):
            raise ConfigError(f"config file {path}: unknown table [{table}]")
    return values


def _norm(name: str) -> str:
    return name.replace("-", "_")
