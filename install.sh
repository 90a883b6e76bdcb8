#!/usr/bin/env bash
# Create .venv with Python >= 3.12 and install AiSpendTrack into it, from this checkout.
#   ./install.sh                 the proxy, CLI and web app
#   ./install.sh --with shared   plus extras: shared (several replicas, docs/deploy.md), encryption
#   ./install.sh --test          plus what the tests need (every extra included)
# Set PYTHON=/path/to/python3.12 to choose the interpreter. Prints nothing but errors.
set -euo pipefail
cd "$(dirname "$0")"

is_new_enough() { "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 12) else 1)' >/dev/null 2>&1; }

find_python() {
  local candidate version
  for candidate in "${PYTHON:-}" python3.13 python3.12 python3; do
    if [ -n "$candidate" ] && is_new_enough "$candidate"; then echo "$candidate"; return; fi
  done
  # pyenv installs 3.12 without putting a working python3.12 on PATH unless it is selected.
  if command -v pyenv >/dev/null 2>&1; then
    for version in $(pyenv versions --bare 2>/dev/null | grep -E '^3\.(1[2-9])(\.[0-9]+)?$' | sort -rV); do
      candidate="$(pyenv prefix "$version")/bin/python"
      if is_new_enough "$candidate"; then echo "$candidate"; return; fi
    done
  fi
  echo "AiSpendTrack needs Python 3.12 or newer. Install it, or set PYTHON=/path/to/python3.12." >&2
  exit 1
}

# install VENV EXTRAS: (re)create VENV with a new-enough Python and install AiSpendTrack into it.
install() {
  if ! { [ -x "$1/bin/python" ] && is_new_enough "$1/bin/python"; }; then
    rm -rf "$1"
    "$(find_python)" -m venv "$1"
  fi
  "$1/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade pip
  # setuptools tells every editable install that a folder named like a package may shadow it:
  # true of any checkout, and not something a user can act on, so it is not shown.
  PYTHONWARNINGS="ignore:Editable installation" \
    "$1/bin/python" -m pip install --quiet --disable-pip-version-check -e ".$2"
}

extras="" tests=false
while [ $# -gt 0 ]; do
  case "$1" in
    --test) tests=true extras="${extras:+$extras,}test" ;;
    --with) extras="${extras:+$extras,}${2:?--with takes extras, e.g. --with shared,encryption}"; shift ;;
    *) echo "Unknown option $1. Usage: ./install.sh [--with shared,encryption] [--test]" >&2; exit 2 ;;
  esac
  shift
done

install .venv "${extras:+[$extras]}"
if $tests; then
  # The Vercel AI SDK, a client in tests/test_real_clients.py.
  command -v npm >/dev/null 2>&1 || { echo "The tests need Node.js and npm (Debian: apt-get install nodejs npm)." >&2; exit 1; }
  npm ci --prefix tests/js --no-audit --no-fund --loglevel=error >/dev/null  # its summary line is no error
fi
