#!/usr/bin/env bash
# Create .venv and install tiller with its extras. CPU torch 2.13.0 goes in first, and every later
# install is constrained to it, so nothing pulls a multi-GB CUDA build (see constraints.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -c "import torch, sys; sys.exit(0 if torch.__version__.startswith('2.13.0') else 1)" 2>/dev/null \
  || python -m pip install -q "torch==2.13.0"
# DeepSpeed (ZeRO-2/3 through accelerate, configs/accelerate/): a source package whose setup.py reads the
# installed torch, so it builds without isolation (setuptools and wheel first). Its CPU communication op is
# compiled on first use (g++, ninja; ~1.5 min): here, once, into .cache/torch_extensions (git-ignored), the
# folder tests/test_deepspeed.py uses too. A machine without g++ still installs; the op is then missing.
if ! python -c "import importlib.metadata as m, sys; sys.exit(m.version('deepspeed') != '0.19.8')" 2>/dev/null; then
  python -m pip install -q -c constraints.txt setuptools wheel
  python -m pip install -q --no-build-isolation -c constraints.txt "deepspeed==0.19.8"
fi
python -m pip install -q -c constraints.txt -e ".[app,dev,judge,deepspeed,control]"
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.cache/torch_extensions}
if [ -z "$(ls "$TORCH_EXTENSIONS_DIR"/deepspeed_shm_comm/*.so 2>/dev/null)" ]; then
  python -c "from deepspeed.comm.torch import build_shm_op; build_shm_op()" >/dev/null 2>&1 \
    || echo "setup.sh: DeepSpeed's CPU op did not compile (needs g++ and ninja); DeepSpeed runs will try again" >&2
fi
