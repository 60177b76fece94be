#!/usr/bin/env bash
# GPU work owed for two H200s (the device tool's nvidia-h200-x2; not lent since the 30th session):
#   run (kind nvidia-h200-x2, needs_h200: Scout's 218 GB of weights do not fit two H100s):
#   INFERMETER_COMMIT=<commit> bash scripts/device/h200_x2_owed.sh 590
# Results in $OUT/a.tgz, refreshed after each step. Steps:
# 1. models.md's gpt-oss-120b row at --tp 2 at this engine (its row is from fd77d7e, before the
#    prefill parity fix), merged into a copy of docs/benchmarks/models.json;
# 2. the whole Llama-4 Scout (its published config, tests/data/hf_configs) profiled at --tp 2 to
#    16,384 tokens, as its 8-layer cut was on one H200 (docs/benchmarks/stores/scout8_1cfb365);
#    resumable: a second call finishes it.
set -u
LIMIT=${1:?usage: h200_x2_owed.sh LIMIT_S}
: "${INFERMETER_COMMIT:?set INFERMETER_COMMIT to the commit of this checkout: the device has no git}"
export PYTHONPATH=src PYTHONUNBUFFERED=1 INFERMETER_COMMIT
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p /tmp/a/docs "$OUT"
cp docs/benchmarks/models.json /tmp/a/docs/models_before.json
start=$(date +%s)
left() { echo $((LIMIT - 20 - $(date +%s) + start)); }
keep() { tar -czf "$OUT/a.tgz" -C /tmp a; echo "$1 done at $(( $(date +%s) - start )) s"; }
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm,temperature.gpu --format=csv
timeout $(( $(left) < 300 ? $(left) : 300 )) python3 benchmarks/models_bench.py \
  --models gpt-oss-120b --tp 2 --curve none --max-context 4096 --out /tmp/a/docs \
  --merge /tmp/a/docs/models_before.json 2>&1 | grep -v Warn | tail -20
keep gpt-oss-120b
if [ "$(left)" -gt 60 ]; then
  /usr/bin/time -f "wall %e s" timeout "$(left)" python3 -m infermeter profile \
    tests/data/hf_configs/llama-4-scout-17b-16e.json --tp 2 --max-context 16384 \
    --store /tmp/a/scout.sqlite 2>&1 | grep -v Warn | tail -30 | tee /tmp/a/profile.log
  keep scout
fi
