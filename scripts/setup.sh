#!/usr/bin/env bash
# One-step set-up on a fresh machine: a virtual environment in .venv with infermeter, its
# PyTorch backends and the test tools. Safe to rerun; it only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
pip() { .venv/bin/python -m pip --disable-pip-version-check -q "$@"; }

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    pip install torch            # the default CUDA build for a machine with a GPU
  else
    pip install "torch==2.13.0"  # a pinned release; a CPU build where the index offers one
  fi
fi
pip install -e ".[torch,dev]"
