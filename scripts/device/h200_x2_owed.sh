#!/usr/bin/env bash
# GPU work owed for two H200s (the device tool's nvidia-h200-x2; not lent since the 30th session):
#   run (kind nvidia-h200-x2, needs_h200: Scout's 218 GB of weights do not fit two H100s):
#   INFERMETER_COMMIT=<commit> bash scripts/device/h200_x2_owed.sh 590
# Results in $OUT/a.tgz, refreshed after each step. Steps:
# 1. models.md's gpt-oss-120b row at --tp 2 at this engine (its row is from fd77d7e, before the
#    prefill parity fix), merged into a copy of docs/benchmarks/models.json;
# 2. the whole Llama-4 Scout (its published config, tests/data/hf_configs) profiled at --tp 2 to
#    16,384 tokens, as its 8-layer cut was on one H200 (docs/benchmarks/stores/scout8_1cfb365).
#    To finish it in a second call, unpack a.tgz into a carried folder F and run with STEPS=2
#    PRIOR=F/a on two cards of the same kind (refused otherwise).
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
source "$(dirname "$0")/_steps.sh"
cp docs/benchmarks/models.json "$WORK/docs/models_before.json"
# models_bench's record is written after its profile, whose own limit (--timeout-s) must end
# first: 60 s inside what the step will have
t=$(( $(left) < 420 ? $(left) : 420 ))
step 1 420 gpt-oss-120b python3 benchmarks/models_bench.py --models gpt-oss-120b --tp 2 \
  --curve none --max-context 4096 --timeout-s $(( t > 120 ? t - 60 : 60 )) --out "$WORK/docs" \
  --merge "$WORK/docs/models_before.json"
step 2 600 scout python3 -m infermeter profile \
  tests/data/hf_configs/llama-4-scout-17b-16e.json --tp 2 --max-context 16384 \
  --store "$WORK/scout.sqlite"
finish
