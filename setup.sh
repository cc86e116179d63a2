#!/usr/bin/env bash
# One command to set exitflow up on a fresh machine: ./setup.sh
#
# Creates .venv with Python 3.11, installs the pinned environment from requirements.lock
# without dependency resolution (see the comment at the top of that file for why), then
# exitflow itself in editable mode. Nothing is downloaded at run time afterwards.
# Safe to run again: an existing .venv is reused and brought up to the lock.
set -euo pipefail
cd "$(dirname "$0")"

PYTHON="${PYTHON:-python3.11}"
VENV="${EXITFLOW_VENV:-.venv}"

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "setup.sh: error: $PYTHON not found; exitflow needs CPython 3.11 (set PYTHON=/path/to/python3.11)" >&2
    exit 2
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
    echo "setup.sh: error: $PYTHON is $("$PYTHON" -V 2>&1); exitflow needs CPython 3.11 (torch 2.13.0 CPU wheel)" >&2
    exit 2
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "setup.sh: creating $VENV with $("$PYTHON" -V 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi

echo "setup.sh: installing the pinned environment (requirements.lock)"
# --no-deps: the lock is complete; resolving would fail on finn-plus's brevitas pin.
"$VENV/bin/pip" install --quiet --no-deps -r requirements.lock 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

echo "setup.sh: installing exitflow (editable)"
"$VENV/bin/pip" install --quiet --no-deps --no-build-isolation -e . 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2)

"$VENV/bin/exitflow" --version
echo "setup.sh: done. Run the tests with: .venv/bin/pytest"
