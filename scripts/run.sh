#!/usr/bin/env bash
# The main job: set up, then the whole InstructGPT loop on the embedded world, ending in a report.
# Extra arguments go to `tiller run` (e.g. --run NAME, rounds=1, ppo.iterations=20).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. .venv/bin/activate
tiller run --config configs/default.yaml "$@"
