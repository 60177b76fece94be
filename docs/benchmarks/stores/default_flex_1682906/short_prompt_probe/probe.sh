export PYTHONPATH=src PYTHONUNBUFFERED=1
mkdir -p /tmp/fd; nvidia-smi --query-gpu=name --format=csv,noheader
S=1,17,33,64,97,127,128,129,161,255,257,481,520,584,640,737,993
for g in 1 0; do for m in auto explicit; do
  echo "=== mode $m graphs $g"; INFERMETER_PREFILL_ATTENTION=$m timeout 150 python3 devrun/probe.py gemma-2-9b 8 $g /tmp/fd/${m}_g$g.json $S 2>&1 | grep -v Warn | tail -50
done; done
tar -czf $OUT/fd.tgz -C /tmp fd
