"""Where ``qwen-batch demo`` finds its sample prompts (package data) and keeps its work (the user cache)."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from importlib.resources import as_file, files
from pathlib import Path

APP_NAME = "qwen-batch"


@contextmanager
def sample_prompts() -> Iterator[Path]:
    """A real path to the bundled ``prompts.jsonl`` for as long as the block runs.

    Read through :mod:`importlib.resources`, so it works from a wheel, a zip or a checkout alike.
    """
    with as_file(files("pipeline") / "samples" / "prompts.jsonl") as path:
        yield path


def user_cache_dir(environ: Mapping[str, str] | None = None, platform: str | None = None,
                   home: Path | None = None) -> Path:
    """The user's cache folder for qwen-batch (the stdlib's answer to ``platformdirs``).

    ``XDG_CACHE_HOME`` wins on every platform when it is an absolute path (the XDG spec says
    to ignore a relative one); else ``~/Library/Caches`` on macOS, ``%LOCALAPPDATA%`` on
    Windows and ``~/.cache`` elsewhere.
    """
    environ = os.environ if environ is None else environ
    platform = sys.platform if platform is None else platform
    home = Path.home() if home is None else home
    xdg = environ.get("XDG_CACHE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / APP_NAME
    if platform == "darwin":
        return home / "Library" / "Caches" / APP_NAME
    if platform == "win32":
        local = environ.get("LOCALAPPDATA", "")
        return (Path(local) if local else home / "AppData" / "Local") / APP_NAME / "Cache"
    return home / ".cache" / APP_NAME


def demo_work_dir(environ: Mapping[str, str] | None = None, platform: str | None = None,
                  home: Path | None = None) -> Path:
    """The demo's fixed work folder, so that running it again resumes."""
    return user_cache_dir(environ, platform, home) / "demo"
