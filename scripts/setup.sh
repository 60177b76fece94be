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
# Ray for `infermeter sweep --ray` and its tests (about 40 s the first time); optional: where
# it has no wheel for this Python, the Ray tests skip and say why.
if ! .venv/bin/python -c "import ray" 2>/dev/null; then
  pip install -e ".[ray]" || echo "note: could not install Ray; the Ray sweep tests will skip"
fi

# The report test opens the HTML report in headless Chromium (Debian's package). Install it
# where we can (root with apt-get); elsewhere say how, and that test skips with the reason.
if [ ! -x /usr/bin/chromium ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || {
      apt-get update -q >/dev/null 2>&1 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1
    } || echo "note: could not install chromium; the report's browser test will skip"
  else
    echo "note: chromium not found; install it (apt-get install chromium) for the report test"
  fi
fi
