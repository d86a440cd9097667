#!/usr/bin/env bash
# CI: prove the lower bounds in pyproject.toml are honest. Installs the package with the
# LOWEST versions its ranges allow for every direct dependency (runtime and the `test`
# extra; transitive ones resolve to their newest, as a user's install would), prints what
# it got, and runs the fast tests (no real-gradio servers, no Ray) there. It runs them on
# Python 3.10, the oldest requires-python admits, when the machine has it (the code and
# dependencies only 3.10 takes, async-timeout and tomli, run nowhere else), else on python3.
#
#   bash .ci/lowest-deps.sh            # from anywhere; works on the checkout it lives in
#
# The resolver is uv's `--resolution lowest-direct`, installed from PyPI into its own tool
# venv so the tested venv holds nothing but the package and its dependencies. The tested
# venv is built anew on every run (a leftover one could hide a missing or too-low pin).
#
# Env: QWEN_BATCH_VENVS           where the venvs go (default: .ci-venvs, relative to the checkout)
#      QWEN_BATCH_LOWEST_PYTHON    interpreter for the tested venv (default: a Python 3.10 on
#                                  PATH or in pyenv, else python3)
#      QWEN_BATCH_LOWEST_TIMEOUT   seconds allowed for the test run (default: 900)
set -euo pipefail
cd "$(dirname "$0")/.."

VENVS="${QWEN_BATCH_VENVS:-.ci-venvs}"
mkdir -p "$VENVS"
VENVS="$(cd "$VENVS" && pwd)"
TOOL="$VENVS/uv-tool"
VENV="$VENVS/lowest"

log() { printf '[lowest-deps] %s\n' "$*" >&2; }
started=$SECONDS

# uv: reuse the tool venv when it works, otherwise (re)build it.
if ! "$TOOL/bin/uv" --version >/dev/null 2>&1; then
    rm -rf "$TOOL"
    python3 -m venv "$TOOL"
    "$TOOL/bin/python" -m pip install --quiet --disable-pip-version-check 'uv>=0.4'
fi
UV="$TOOL/bin/uv"
log "$("$UV" --version)"

# pick_python: the first of these that really is a Python 3.10 (a pyenv shim may not be).
pick_python() {
    local c
    for c in python3.10 "$(pyenv root 2>/dev/null)"/versions/3.10*/bin/python3.10; do
        if "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 10))' >/dev/null 2>&1; then
            command -v "$c"
            return
        fi
    done
    command -v python3
}
PYTHON="$(command -v "${QWEN_BATCH_LOWEST_PYTHON:-$(pick_python)}")"

rm -rf "$VENV"
"$UV" venv --quiet --python "$PYTHON" "$VENV"
# Editable: the tests import the checkout's pipeline/ anyway (pytest runs from its root).
"$UV" pip install --quiet --python "$VENV/bin/python" --resolution lowest-direct -e '.[test]'

log "installed into $VENV ($("$VENV/bin/python" --version 2>&1)):"
"$UV" pip freeze --python "$VENV/bin/python" | grep -v '^qwen-batch' | sed 's/^/    /' >&2
log "setup took $(( SECONDS - started )) s"

# The fast tests: everything but the real-gradio servers and Ray (neither is installed
# here). Unset the CI switches that would turn their skips into failures.
unset QWEN_BATCH_REQUIRE_GRADIO QWEN_BATCH_REQUIRE_RAY
timeout --kill-after=30 "${QWEN_BATCH_LOWEST_TIMEOUT:-900}" \
    "$VENV/bin/python" -m pytest -q -p no:cacheprovider -m "not gradio and not ray"
log "done in $(( SECONDS - started )) s"
