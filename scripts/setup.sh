#!/usr/bin/env bash
# One-step set-up on a fresh machine: a virtual environment in .venv with infermeter, its
# PyTorch backends and the test tools. Safe to rerun; it only installs what is missing.
# Each step says what it does (and how long it took): the PyTorch download alone can take
# minutes, and a silent terminal for that long looks like a hang.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

say() { echo "setup [${SECONDS}s]: $*"; }
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }

if [ ! -x .venv/bin/python ]; then
  say "creating the virtual environment .venv ($PYTHON -m venv)"
  "$PYTHON" -m venv .venv
fi

if ! .venv/bin/python -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    say "installing PyTorch, the CUDA build (a GPU is visible): a download of a few GB, minutes"
    pip install --progress-bar on torch
  else
    say "installing PyTorch 2.13.0 (no GPU visible: a CPU build where the index offers one);" \
      "a download of up to a few hundred MB, a minute or more"
    pip install --progress-bar on "torch==2.13.0"  # a pinned release
  fi
else
  say "PyTorch is installed already"
fi
say "installing infermeter with its backends and test tools (pip install -e '.[torch,dev]')"
pip install -q -e ".[torch,dev]"
# Ray for `infermeter sweep --ray` and its tests (about 40 s the first time); optional: where
# it has no wheel for this Python, the Ray tests skip and say why.
if ! .venv/bin/python -c "import ray" 2>/dev/null; then
  say "installing Ray for the cluster sweep (optional extra, about 40 s)"
  pip install -q -e ".[ray]" || echo "note: could not install Ray; the Ray sweep tests will skip"
fi

# The report test opens the HTML report in headless Chromium (Debian's package). Install it
# where we can (root with apt-get); elsewhere say how, and that test skips with the reason.
if [ ! -x /usr/bin/chromium ] && ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
    say "installing Chromium for the report's browser test (apt-get install chromium)"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1 || {
      apt-get update -q >/dev/null 2>&1 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null 2>&1
    } || echo "note: could not install chromium; the report's browser test will skip"
  else
    echo "note: chromium not found; install it (apt-get install chromium) for the report test"
  fi
fi
say "done: run .venv/bin/infermeter profile gpt2, or .venv/bin/python -m pytest"
