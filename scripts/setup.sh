#!/usr/bin/env bash
# Set up msdmatch on a fresh Debian/Ubuntu machine: system packages, a venv, the package.
# Idempotent: re-running only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
EXTRAS=${EXTRAS:-train,dev}
APT_PKGS="fluidsynth fluid-soundfont-gm musescore-general-soundfont-small"

missing=""
for p in $APT_PKGS; do
  dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then SUDO="sudo"; else
    echo "msdmatch setup: needs the Debian packages:$missing" >&2
    echo "  run as root (or with sudo): apt-get install -y --no-install-recommends$missing" >&2
    exit 1
  fi
  echo "msdmatch setup: installing$missing"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for c in python3.11 python3; do
    if command -v "$c" >/dev/null && "$c" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then PY=$c; break; fi
  done
fi
if [ -z "$PY" ]; then
  echo "msdmatch setup: needs Python 3.11 (found: $(python3 --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
stamp="$VENV/.msdmatch-installed"
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  "$VENV/bin/python" -m pip install -q --upgrade pip
  # torch is pinned in the [train] extra (a CPU build); an open range would pull a CUDA build.
  "$VENV/bin/python" -m pip install -q -e ".[$EXTRAS]"
  touch "$stamp"
fi
echo "msdmatch setup: ready ($("$VENV/bin/msdmatch" --version))"
