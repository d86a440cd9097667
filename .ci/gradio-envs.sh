#!/usr/bin/env bash
# Build the two throwaway virtualenvs that hold real gradio servers for
# tests/test_real_gradio.py (the app itself is tests/gradio_space_app.py).
#
#   gradio6: current gradio 6.x           (api_prefix "/gradio_api", messages history)
#   gradio4: gradio 4.44.1 + the old pins (api_prefix "",            tuples history)
#
# Each venv is reused when it already exists and `import gradio` works with the
# right major version; otherwise it is deleted and rebuilt with the `python3` on PATH.
#
# stdout carries ONLY the export lines, progress goes to stderr, so CI can do:
#
#     envs="$(bash .ci/gradio-envs.sh)" && eval "$envs"
#     QWEN_BATCH_REQUIRE_GRADIO=1 pytest -m gradio
#
# (Prefer that two-step form over `eval "$(bash .ci/gradio-envs.sh)"`: eval of a
# failed command substitution still returns 0, so a failed build would go unnoticed;
# QWEN_BATCH_REQUIRE_GRADIO=1 makes the tests fail in that case anyway.)
#
# Env: QWEN_BATCH_VENVS  where the venvs go (default: .ci-venvs, relative to the cwd).
set -euo pipefail

VENVS="${QWEN_BATCH_VENVS:-.ci-venvs}"
mkdir -p "$VENVS"
VENVS="$(cd "$VENVS" && pwd)"

GRADIO6_SPEC=("gradio>=6,<7")
# 4.44.1 breaks with today's huggingface_hub (HfFolder import), fastapi/pydantic/
# uvicorn/httpx; these pins are the set verified in shared/PROTOCOL.md (beside the repo) §4.
GRADIO4_SPEC=("gradio==4.44.1" "huggingface_hub==0.25.2" "fastapi==0.112.4"
              "pydantic==2.9.2" "uvicorn==0.30.6" "httpx==0.27.2")

log() { printf '[gradio-envs] %s\n' "$*" >&2; }

# has_gradio_major VENV_DIR MAJOR: true if the venv imports gradio MAJOR.x
has_gradio_major() {
    [ -x "$1/bin/python" ] || return 1
    GRADIO_ANALYTICS_ENABLED=False "$1/bin/python" - "$2" >/dev/null 2>&1 <<'PY'
import sys
import gradio
sys.exit(0 if gradio.__version__.split(".")[0] == sys.argv[1] else 1)
PY
}

# build NAME MAJOR SPEC...: make sure $VENVS/NAME holds gradio MAJOR.x
build() {
    local name="$1" major="$2"
    shift 2
    local dir="$VENVS/$name" start
    if has_gradio_major "$dir" "$major"; then
        log "$name: reusing $dir ($("$dir/bin/python" -m pip show gradio 2>/dev/null | sed -n 's/^Version: //p'))"
        return 0
    fi
    start=$SECONDS
    log "$name: building $dir with $(python3 --version 2>&1): pip install $*"
    rm -rf "$dir"
    python3 -m venv "$dir"
    # pip's own stdout would pollute our stdout (the export lines): send it to stderr.
    "$dir/bin/python" -m pip install --quiet --disable-pip-version-check "$@" 1>&2
    if ! has_gradio_major "$dir" "$major"; then
        log "$name: FAILED: the new venv does not import gradio $major.x"
        "$dir/bin/python" -c "import gradio" 1>&2 || true
        return 1
    fi
    log "$name: gradio $("$dir/bin/python" -m pip show gradio | sed -n 's/^Version: //p') built in $((SECONDS - start)) s"
}

build gradio6 6 "${GRADIO6_SPEC[@]}"
build gradio4 4 "${GRADIO4_SPEC[@]}"

# Printed only once both venvs are good.
printf 'export QWEN_BATCH_GRADIO6_PYTHON=%q\n' "$VENVS/gradio6/bin/python"
printf 'export QWEN_BATCH_GRADIO4_PYTHON=%q\n' "$VENVS/gradio4/bin/python"
