#!/usr/bin/env bash
# GPU work owed since the 34th session, for one H200 (the device tool's nvidia-h200), one call:
#   run: INFERMETER_COMMIT=<commit> bash scripts/device/h200_owed.sh 590
# Results (records, the profile's store and its output) in $OUT/a.tgz, refreshed after each step,
# so a call cut short keeps what it measured. Steps, most wanted first:
# 1. benchmarks/prefill_alignment.py: prefill at every p of 480-512 and 1800-1870 (Gemma-2-9B,
#    gpt-oss-20b, LLaMA-7B as the control), keys padded and unpadded: do aligned p prefill
#    faster, and is the key padding why (Gemma-2's validation priced p = 496, 1840 high)?
# 2. benchmarks/explicit_attention.py: the explicit attention path against compiled
#    FlexAttention at Gemma-2's and gpt-oss's shapes (never yet run on a GPU).
# 3. `infermeter profile gpt-oss-20b` with its defaults (to 32,768 tokens), not run since the
#    global layers with sinks moved to blocks (67b5632); resumable: a second call finishes it.
set -u
LIMIT=${1:?usage: h200_owed.sh LIMIT_S}
: "${INFERMETER_COMMIT:?set INFERMETER_COMMIT to the commit of this checkout: the device has no git}"
export PYTHONPATH=src PYTHONUNBUFFERED=1 INFERMETER_COMMIT
mkdir -p /tmp/a/docs "$OUT"
start=$(date +%s)
left() { echo $((LIMIT - 20 - $(date +%s) + start)); }
keep() { tar -czf "$OUT/a.tgz" -C /tmp a; echo "$1 done at $(( $(date +%s) - start )) s"; }
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm,temperature.gpu --format=csv
timeout $(( $(left) < 200 ? $(left) : 200 )) python3 benchmarks/prefill_alignment.py \
  --out /tmp/a/docs 2>&1 | grep -v Warn | tail -8
keep alignment
timeout $(( $(left) < 150 ? $(left) : 150 )) python3 benchmarks/explicit_attention.py \
  --trials 10 --out /tmp/a/docs 2>&1 | grep -v Warn | tail -8
keep explicit_attention
if [ "$(left)" -gt 60 ]; then
  /usr/bin/time -f "wall %e s" timeout "$(left)" python3 -m infermeter profile gpt-oss-20b \
    --store /tmp/a/gpt-oss-20b.sqlite 2>&1 | grep -v Warn | tail -30 | tee /tmp/a/profile.log
  keep profile
fi
