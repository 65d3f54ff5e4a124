#!/usr/bin/env bash
# Set up and run the whole test suite: installs tiller, then (as root, via apt) Chromium for the browser
# tests, headless OpenGL (EGL, OSMesa) for MuJoCo's clips and PostgreSQL for the database tests, starts
# PostgreSQL, and runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# the vLLM rollout server's own environment (.venv-vllm, 3.5 GB, ~2.5 min): without it the vLLM tests skip, saying so
bash scripts/setup_vllm.sh || echo "scripts/setup_vllm.sh failed: the vLLM rollout tests will be skipped" >&2
. .venv/bin/activate
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  [ -x /usr/bin/chromium ] || bash .ci/chromium.sh
  bash .ci/mujoco-gl.sh  # tiller.control.render (tests/control); quick when already installed
  if [ -z "${TILLER_TEST_PG_URL:-}" ]; then
    eval "$(bash .ci/postgres.sh)"
    export TILLER_TEST_PG_URL
  fi
else
  echo "not root: browser and PostgreSQL tests will be skipped (and MuJoCo clips need .ci/mujoco-gl.sh)" >&2
fi
python -m pytest -q "$@"
