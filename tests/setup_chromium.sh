#!/usr/bin/env bash
# Installs Debian's `chromium` for the browser test in tests/test_inspect.py (the HTML page of `inspect-mask`
# is opened in a real headless browser). `make test` runs this only in CI (CI=true); elsewhere the browser test
# skips and says to run `bash tests/setup_chromium.sh` as root. Idempotent: does nothing when chromium is there.
set -euo pipefail
if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "setup_chromium.sh: no apt-get here; install chromium with your system's package manager" >&2
  exit 1
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "setup_chromium.sh: installing chromium needs root; rerun as root: bash tests/setup_chromium.sh" >&2
    exit 1
  fi
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# Stale or empty package lists make `install` fail: refresh them once and retry.
$SUDO apt-get install -y -q chromium || { $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium; }
