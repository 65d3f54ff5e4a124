#!/usr/bin/env bash
# docs/control.md, "What it measured": HalfCheetah-v5, learned reward (700 and 1,400 oracle labels) against
# the same PPO on the true reward, seeds 0-2, and the seed-0 ablations; Hopper-v5 as the second task; a queue of
# runs two at a time (one per core), one thread each.
#   bash scripts/measure_control.sh [OUT_DIR] [STEPS] [SET]
#     defaults: runs/control-measure, 200704; SET: main (the 9 HalfCheetah runs of the comparison), ablations
#     (4 runs), all (both), or hopper (Hopper-v5, 700 labels against true reward, 3 seeds: 6 runs)
# It ends with `tiller control summary OUT_DIR`; one run beside its baseline:
#   python -m tiller.cli control report --run OUT_DIR/learned-s0 --baseline OUT_DIR/true-s0
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
OUT=${1:-runs/control-measure}
STEPS=${2:-200704}
SET=${3:-all}
export OMP_NUM_THREADS=1 TILLER_QUIET=1 OUT STEPS
mkdir -p "$OUT"
jobs() {  # one run per line: NAME OVERRIDE...
  if [[ $SET == main || $SET == all ]]; then
    for s in 0 1 2; do
      echo "learned-s$s reward=learned seed=$s"
      echo "true-s$s reward=true seed=$s"
      echo "l1400-s$s labels=1400 seed=$s"
    done
  fi
  if [[ $SET == ablations || $SET == all ]]; then
    echo "uniform-s0 queries=uniform seed=0"
    echo "one-member-s0 predictor.members=1 seed=0"
    echo "no-noise-s0 predictor.label_noise=0.0 seed=0"
    echo "fixed-l2-s0 predictor.tune_l2=false seed=0"
  fi
  if [[ $SET == hopper ]]; then  # the paper's Hopper: termination removed (gym_env.py), 1 s clips (125 x 8 ms)
    local hop="env=Hopper-v5 env_kwargs.terminate_when_unhealthy=false segment_length=125"
    for s in 0 1 2; do
      echo "hopper-learned-s$s $hop reward=learned seed=$s"
      echo "hopper-true-s$s $hop reward=true seed=$s"
    done
  fi
}
run_one() {  # NAME OVERRIDE...: one run, its log beside it, its wall time in OUT/times.txt
  local name=$1; shift
  local start=$SECONDS rc=0
  python -m tiller.cli control run --run "$OUT/$name" total_steps="$STEPS" "$@" > "$OUT/$name.log" 2>&1 || rc=$?
  echo "$name rc=$rc seconds=$((SECONDS - start))" >> "$OUT/times.txt"
}
export -f run_one
jobs | xargs -P 2 -L 1 bash -c 'run_one "$@"' _
python -m tiller.cli control summary "$OUT"  # the table over seeds, against true reward; OUT/summary
