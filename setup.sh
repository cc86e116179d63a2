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

# System tools the tests use, as "command package" (Debian/Ubuntu names): Chromium for the
# report's browser check, g++ for the exit hardware's C simulation, tclsh for the generated Tcl.
# Installed with apt-get when we are root and it is here; otherwise one line says what could not
# be installed and why, and the tests that need it are skipped (visibly, with the reason).
SYSTEM_TOOLS=("chromium chromium" "g++ g++" "tclsh tcl")
have_tool() {
    if [ "$1" = chromium ]; then
        command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1
    else
        command -v "$1" >/dev/null 2>&1
    fi
}
install_system_tools() {
    local entry packages=() log reason
    for entry in "${SYSTEM_TOOLS[@]}"; do
        have_tool "${entry%% *}" || packages+=("${entry#* }")
    done
    [ ${#packages[@]} -eq 0 ] && return 0
    if [ "${EXITFLOW_NO_SYSTEM_PACKAGES:-}" = 1 ]; then
        reason="EXITFLOW_NO_SYSTEM_PACKAGES=1 is set"
    elif ! command -v apt-get >/dev/null 2>&1; then
        reason="no apt-get on this machine; install them with your package manager"
    elif [ "$(id -u)" != 0 ]; then
        reason="not root; run: sudo apt-get install -y ${packages[*]}"
    else
        echo "setup.sh: installing ${packages[*]} with apt-get (system tools the tests use)"
        log="$(mktemp)"
        if { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${packages[@]}"; } >"$log" 2>&1; then
            rm -f "$log"
            return 0
        fi
        reason="apt-get failed (no network?): $(grep -v '^\s*$' "$log" | tail -n 1); full output in $log"
    fi
    echo "setup.sh: could not install ${packages[*]}: $reason; the tests that need them are skipped" >&2
}
install_system_tools

# `exitflow` on PATH, so the README's commands run from any folder: a link in the first folder of
# PATH that is writable and already named by PATH (~/.local/bin, then /usr/local/bin). A link of
# another exitflow clone is replaced; a file that is not an exitflow link is left alone.
link_command() {
    local target dir link
    target="$(cd "$VENV/bin" && pwd)/exitflow"
    for dir in "$HOME/.local/bin" /usr/local/bin; do
        case ":$PATH:" in *":$dir:"*) ;; *) continue ;; esac
        [ -d "$dir" ] && [ -w "$dir" ] || continue
        link="$dir/exitflow"
        if [ -e "$link" ] && ! { [ -L "$link" ] && [[ "$(readlink "$link")" == */bin/exitflow ]]; }; then
            echo "setup.sh: $link exists and is not an exitflow link; left alone (use $target)" >&2
            return 0
        fi
        ln -sfn "$target" "$link"
        echo "setup.sh: linked $link -> $target"
        return 0
    done
    echo "setup.sh: could not put exitflow on PATH (no writable folder of PATH among ~/.local/bin, /usr/local/bin); use $target or add $(dirname "$target") to PATH" >&2
}
link_command

"$VENV/bin/exitflow" --version
echo "setup.sh: done. Run the tests with: .venv/bin/pytest; the main job from any folder with: exitflow run --out runs/default"
