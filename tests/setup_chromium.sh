#!/usr/bin/env bash
# Installs Debian's `chromium` for tests/test_inspect.py (the HTML page of `inspect-mask` is opened in a real
# headless browser). Idempotent: does nothing when /usr/bin/chromium is already there.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
# Stale or empty package lists make `install` fail: refresh them once and retry.
$SUDO apt-get install -y -q chromium || { $SUDO apt-get update -q && $SUDO apt-get install -y -q chromium; }
