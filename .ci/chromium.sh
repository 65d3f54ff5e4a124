#!/usr/bin/env bash
# Install Debian's Chromium for the Playwright browser tests (tests/feedback, marker `browser`).
# Playwright drives it through executable_path="/usr/bin/chromium"; never `playwright install`
# (CI has no internet beyond the Debian mirror).
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  echo "chromium already installed: $(/usr/bin/chromium --version 2>/dev/null || true)" >&2
  exit 0
fi
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -q >&2
$SUDO apt-get install -y -q --no-install-recommends chromium fonts-dejavu-core >&2
/usr/bin/chromium --version >&2 || true
