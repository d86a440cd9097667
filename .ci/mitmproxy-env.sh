#!/usr/bin/env bash
# Build the throwaway virtualenv that holds mitmproxy (a real authenticating forward
# proxy, `mitmdump --proxyauth`) for tests/test_proxy_real.py. Its dependencies pin
# versions the package's own virtualenv must not have to share, hence a venv of its own.
#
# The venv is reused when it already exists and `mitmdump --version` reports 11.x;
# otherwise it is deleted and rebuilt with the `python3` on PATH.
#
# stdout carries ONLY the export line, progress goes to stderr, so CI can do:
#
#     envs="$(bash .ci/mitmproxy-env.sh)" && eval "$envs"
#     QWEN_BATCH_REQUIRE_PROXY=1 pytest -m proxy
#
# (Two steps, not eval "$(...)": eval of a failed command substitution returns 0.)
#
# Env: QWEN_BATCH_VENVS  where the venv goes (default: .ci-venvs, relative to the cwd).
set -euo pipefail

VENVS="${QWEN_BATCH_VENVS:-.ci-venvs}"
mkdir -p "$VENVS"
VENVS="$(cd "$VENVS" && pwd)"
DIR="$VENVS/mitmproxy"
SPEC=("mitmproxy>=11,<12")

log() { printf '[mitmproxy-env] %s\n' "$*" >&2; }

# has_mitmdump VENV_DIR: true if the venv's mitmdump runs and is 11.x
has_mitmdump() {
    [ -x "$1/bin/mitmdump" ] || return 1
    "$1/bin/mitmdump" --version 2>/dev/null | grep -q '^Mitmproxy: 11\.'
}

if has_mitmdump "$DIR"; then
    log "reusing $DIR ($("$DIR/bin/mitmdump" --version | sed -n 's/^Mitmproxy: //p'))"
else
    start=$SECONDS
    log "building $DIR with $(python3 --version 2>&1): pip install ${SPEC[*]}"
    rm -rf "$DIR"
    python3 -m venv "$DIR"
    # pip's own stdout would pollute our stdout (the export line): send it to stderr.
    "$DIR/bin/python" -m pip install --quiet --disable-pip-version-check "${SPEC[@]}" 1>&2
    if ! has_mitmdump "$DIR"; then
        log "FAILED: the new venv has no working mitmdump 11.x"
        "$DIR/bin/mitmdump" --version 1>&2 || true
        exit 1
    fi
    log "mitmproxy $("$DIR/bin/mitmdump" --version | sed -n 's/^Mitmproxy: //p') built in $((SECONDS - start)) s"
fi

# Printed only once the venv is good.
printf 'export QWEN_BATCH_MITMDUMP=%q\n' "$DIR/bin/mitmdump"
