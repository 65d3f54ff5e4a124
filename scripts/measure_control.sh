#!/usr/bin/env bash
# docs/control.md, "What it measured": HalfCheetah-v5, learned reward (700 and 1,400 oracle labels) against
# the same PPO on the true reward, seeds 0-2, and the seed-0 ablations; two runs at a time, one thread each.
#   bash scripts/measure_control.sh [OUT_DIR] [STEPS]      (defaults: runs/control-measure, 200704)
# Then: python -m tiller.cli control report --run OUT_DIR/learned-s0 --baseline OUT_DIR/true-s0
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
OUT=${1:-runs/control-measure}
STEPS=${2:-200704}
export OMP_NUM_THREADS=1 TILLER_QUIET=1
mkdir -p "$OUT"
pair() {  # two runs side by side: NAME:OVERRIDES NAME:OVERRIDES (overrides comma-separated)
  for spec in "$@"; do
    name=${spec%%:*}
    IFS=, read -r -a over <<< "${spec#*:}"
    python -m tiller.cli control run --run "$OUT/$name" total_steps="$STEPS" "${over[@]}" > "$OUT/$name.log" 2>&1 &
  done
  wait
}
for s in 0 1 2; do pair "learned-s$s:reward=learned,seed=$s" "true-s$s:reward=true,seed=$s"; done
pair "l1400-s0:labels=1400,seed=0" "l1400-s1:labels=1400,seed=1"
pair "l1400-s2:labels=1400,seed=2" "uniform-s0:queries=uniform,seed=0"
pair "one-member-s0:predictor.members=1,seed=0" "no-noise-s0:predictor.label_noise=0.0,seed=0"
pair "fixed-l2-s0:predictor.tune_l2=false,seed=0"
for m in "$OUT"/*/control/tiller-manifest.json; do
  python -c "import json, sys; m = json.load(open(sys.argv[1]))['metrics']; print(sys.argv[1].split('/')[-3], \
round(m['eval/true_return'], 1), '+-', round(m['eval/true_return_std'], 1), 'labels', m.get('labels/used'))" "$m"
done
