#!/usr/bin/env bash
# Device (nvidia-h200), session 34, call 1. Usage: s34a.sh LIMIT_S
# 1. Scout cut to 8 layers profiled again with prefill in blocks (0321b60: MAPE 4.79 %, max 17.91 %);
# 2. models.md's gpt-oss-20b row at this engine (merged into the record);
# 3. prefill_parity of gpt-oss-20b, Gemma-2-9B, Gemma-3-27B at 8 layers up to 8192.
set -u
LIMIT=$1
export PYTHONPATH=src PYTHONUNBUFFERED=1 INFERMETER_COMMIT=$(cat devrun/COMMIT)
S=benchmarks/configs/llama-4-scout-8-layers.json
mkdir -p /tmp/a/docs /tmp/a/p $OUT
cp docs/benchmarks/models.json /tmp/a/docs/models_before.json
start=$(date +%s)
left() { echo $((LIMIT - 15 - $(date +%s) + start)); }
nvidia-smi --query-gpu=name,power.limit,clocks.max.sm,temperature.gpu --format=csv
/usr/bin/time -f "wall %e s" timeout 240 python3 -m infermeter profile $S --max-context 16384 \
  --store /tmp/a/scout8.sqlite 2>&1 | grep -v Warn | grep -v "^│\|^┃\|^┏\|^┗\|^┡\|^└" | tail -24
echo "scout profile done at $(( $(date +%s) - start )) s"
tar -czf $OUT/a.tgz -C /tmp a
timeout $(( $(left) < 270 ? $(left) : 270 )) python3 benchmarks/models_bench.py --models gpt-oss-20b \
  --curve none --max-context 4096 --out /tmp/a/docs --merge /tmp/a/docs/models_before.json \
  2>&1 | grep -v Warn | tail -20
echo "gpt-oss row done at $(( $(date +%s) - start )) s"
tar -czf $OUT/a.tgz -C /tmp a
if [ $(left) -gt 40 ]; then
  timeout $(left) python3 benchmarks/prefill_parity.py --models gpt-oss-20b,gemma-2-9b,gemma-3-27b \
    --max-context 8192 --trials 2 --out /tmp/a/p 2>&1 | grep -v Warn | tail -4
  echo "parity done at $(( $(date +%s) - start )) s"
fi
tar -czf $OUT/a.tgz -C /tmp a
