#!/usr/bin/env bash
# CI: the wheel is the product. Build it, install it into a fresh virtualenv outside the
# checkout, and use the installed command from an unrelated folder the way a user would:
# --help, `demo` twice (the second run must resume from the user cache), and `fake-space`
# answering /config. Every step is bounded by `timeout`.
# PYTHON picks the interpreter (default python3); pip's own cache is reused.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
work="$(mktemp -d "${TMPDIR:-/tmp}/qwen-batch-wheel.XXXXXX")"
space_pid=""
cleanup() {
    if [ -n "$space_pid" ]; then
        kill "$space_pid" 2>/dev/null || true
        wait "$space_pid" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "wheel-demo: FAIL: $*" >&2; exit 1; }
case "$work/" in "$repo"/*) fail "the temporary folder $work is inside the checkout" ;; esac
started=$(date +%s)

# 1. Build from a copy of the working tree's files (tracked or new, never ignored ones):
# an in-tree build would leave build/ behind, whose stale copies can leak into later wheels.
mkdir "$work/src" "$work/dist"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard \
    | while IFS= read -r -d '' f; do if [ -e "$f" ]; then printf '%s\0' "$f"; fi; done \
    | tar --null -T - -cf -) | tar -C "$work/src" -xf -
timeout 300 "$python" -m pip wheel -v --no-deps -w "$work/dist" "$work/src" >"$work/build.log" 2>&1 \
    || { tail -40 "$work/build.log" >&2; fail "pip wheel"; }
if grep -E "DeprecationWarning|SetuptoolsWarning" "$work/build.log" >&2; then
    fail "the build printed the warnings above"
fi
wheel=("$work"/dist/qwen_batch-*.whl)
[ -f "${wheel[0]}" ] || fail "no wheel in $work/dist"
"$python" - "${wheel[0]}" <<'EOF' || fail "the wheel lacks package data"
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
missing = {"pipeline/samples/prompts.jsonl", "pipeline/py.typed"} - names
sys.exit(f"missing from {sys.argv[1]}: {sorted(missing)}" if missing else 0)
EOF

# 2. A fresh virtualenv outside the checkout, the wheel and its dependencies from the index.
timeout 120 "$python" -m venv "$work/venv"
timeout 300 "$work/venv/bin/python" -m pip install --quiet "${wheel[0]}" || fail "pip install of the wheel"
qb="$work/venv/bin/qwen-batch"
mkdir "$work/elsewhere" "$work/cache"
cd "$work/elsewhere"
export XDG_CACHE_HOME="$work/cache"
where="$(timeout 30 "$work/venv/bin/python" -c 'import pipeline; print(pipeline.__file__)')"
case "$where" in "$work/venv/"*) ;; *) fail "pipeline imported from $where, not from the venv" ;; esac

# 3. The installed command.
timeout 30 "$qb" --help >/dev/null || fail "qwen-batch --help"
rows="$(timeout 30 "$work/venv/bin/python" -c '
from importlib.resources import files
print(len((files("pipeline") / "samples" / "prompts.jsonl").read_text(encoding="utf-8").splitlines()))')"
rc=0; timeout 120 "$qb" demo >"$work/demo1.out" 2>"$work/demo1.err" || rc=$?
[ "$rc" -eq 0 ] || { cat "$work/demo1.err" >&2; fail "the first qwen-batch demo exited $rc"; }
grep -q "Resumed:" "$work/demo1.err" && fail "the first demo claims to resume"
# The demo names its output file; it must be in the cache folder the demo promises.
completions="$(sed -n 's/^Completions: //p' "$work/demo1.err")"
case "$completions" in
    "$work/cache/qwen-batch/demo/"*) ;;
    *) cat "$work/demo1.err" >&2; fail "the demo's output '$completions' is not in $work/cache/qwen-batch/demo" ;;
esac
[ "$(wc -l <"$completions")" -eq "$rows" ] || fail "$completions does not hold $rows records"
rc=0; timeout 120 "$qb" demo >"$work/demo2.out" 2>"$work/demo2.err" || rc=$?
[ "$rc" -eq 0 ] || { cat "$work/demo2.err" >&2; fail "the second qwen-batch demo exited $rc"; }
grep -q "Resumed: $rows rows were already done" "$work/demo2.err" \
    || { cat "$work/demo2.err" >&2; fail "the second demo did not resume"; }
[ "$(wc -l <"$completions")" -eq "$rows" ] || fail "the second demo wrote rows again"

# 4. fake-space answers /config on loopback, then stops on SIGTERM.
port="$("$work/venv/bin/python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
timeout 60 "$qb" fake-space --port "$port" 2>"$work/space.err" &
space_pid=$!
timeout 30 "$work/venv/bin/python" - "$port" <<'EOF' || { cat "$work/space.err" >&2; fail "fake-space did not answer /config"; }
import json, sys, time, urllib.request
url = f"http://127.0.0.1:{sys.argv[1]}/config"
for _ in range(200):
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            config = json.load(resp)
        break
    except OSError:
        time.sleep(0.1)
else:
    sys.exit(f"no answer from {url}")
assert "components" in config, sorted(config)
EOF
kill "$space_pid"
rc=0; wait "$space_pid" || rc=$?
[ "$rc" -eq 0 ] || fail "fake-space exited $rc on SIGTERM"
space_pid=""

echo "wheel-demo: ok ($(basename "${wheel[0]}"), $rows demo rows, resumed; $(( $(date +%s) - started )) s)" >&2
