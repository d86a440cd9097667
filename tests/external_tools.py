"""Executables of real peers (gradio servers, mitmproxy) that CI builds in venvs of their own."""

from __future__ import annotations

import os

import pytest


def executable_or_skip(env_var: str, require_var: str, what: str, build: str) -> str:
    """The executable named by ``env_var``; skip if unset, or fail when ``require_var`` is 1.

    CI sets ``require_var`` so the tests that need ``what`` can never be skipped silently;
    a path that is set but not executable is always a failure.
    """
    path = os.environ.get(env_var, "").strip()
    if not path:
        reason = f'{env_var} is not set: no {what} (build one with: envs="$(bash {build})" && eval "$envs")'
        if os.environ.get(require_var, "").strip() == "1":
            pytest.fail(f"{require_var}=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    if not (os.path.isfile(path) and os.access(path, os.X_OK)):
        pytest.fail(f"{env_var}={path!r} is not an executable file", pytrace=False)
    return path
