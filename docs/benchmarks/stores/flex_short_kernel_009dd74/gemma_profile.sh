# Gemma-2-9B default profile (to 8,191) as at 1682906, on this commit: knots at 33/97 show flex's short-prompt kernel
export PYTHONPATH=src PYTHONUNBUFFERED=1 INFERMETER_COMMIT=${INFERMETER_COMMIT:?}
mkdir -p /tmp/r2; nvidia-smi --query-gpu=name --format=csv,noheader | tee /tmp/r2/gpu.txt
s=$(date +%s)
timeout 540 python3 -m infermeter profile gemma-2-9b --store /tmp/r2/gemma-2-9b.sqlite 2>&1 | grep -v Warn | tee /tmp/r2/gemma-2-9b.log | tail -45
echo "exit ${PIPESTATUS[0]} after $(( $(date +%s) - s )) s" | tee -a /tmp/r2/gemma-2-9b.log
tar -czf $OUT/r2.tgz -C /tmp r2
