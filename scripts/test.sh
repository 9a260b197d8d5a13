#!/usr/bin/env bash
# Installs everything the tests need on a fresh machine, then runs the whole suite.
# Fails when any test is skipped: a missing driver or package must never silently turn tests off.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
log=$(mktemp)
set +e
python -m pytest -m "not gpu" -rs "$@" 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
set -e
if grep -qE "^SKIPPED|[0-9]+ skipped" "$log"; then
    echo "FAIL: tests were skipped (see the SKIPPED lines above); skipping is not allowed here." >&2
    exit 1
fi
exit "$status"
