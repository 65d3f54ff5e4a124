#!/usr/bin/env bash
# Set up and run the whole test suite: installs tiller, then (as root, via apt) Chromium for the browser
# tests and PostgreSQL for the database tests, starts PostgreSQL, and runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  [ -x /usr/bin/chromium ] || bash .ci/chromium.sh
  if [ -z "${TILLER_TEST_PG_URL:-}" ]; then
    eval "$(bash .ci/postgres.sh)"
    export TILLER_TEST_PG_URL
  fi
else
  echo "not root: browser and PostgreSQL tests will be skipped" >&2
fi
python -m pytest -q "$@"
