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
python -m pip install -q -c constraints.txt -e ".[app,dev]"
