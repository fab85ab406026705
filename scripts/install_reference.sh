#!/usr/bin/env bash
# Install the reference Moonraker (black box for behavioural comparison) into its own venv.
# Usage: scripts/install_reference.sh [VENV_DIR]   (default: .reference-venv in the repo root)
# Idempotent: does nothing when VENV_DIR/bin/python can already `import moonraker`.
# Start it with:  VENV_DIR/bin/moonraker -d DATA_PATH -c moonraker.conf -l moonraker.log
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${1:-$REPO_ROOT/.reference-venv}"
case "$VENV_DIR" in /*) ;; *) VENV_DIR="$REPO_ROOT/$VENV_DIR" ;; esac
REF_PKG="moonraker==0.11.0"
PYTHON="${PYTHON:-python3}"

if [ -x "$VENV_DIR/bin/python" ] && "$VENV_DIR/bin/python" -c 'import moonraker' 2>/dev/null; then
    echo "moonraker already installed in $VENV_DIR"
    exit 0
fi
if [ ! -x "$VENV_DIR/bin/python" ]; then
    "$PYTHON" -m venv "$VENV_DIR"
fi
"$VENV_DIR/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
"$VENV_DIR/bin/python" -m pip install "$REF_PKG"
"$VENV_DIR/bin/python" -c 'import moonraker'
echo "moonraker installed in $VENV_DIR"
