# bump probe, then flex_prefill at short sizes (both models), results in $OUT/r.tgz
export PYTHONPATH=src PYTHONUNBUFFERED=1
mkdir -p /tmp/r; nvidia-smi --query-gpu=name --format=csv,noheader | tee /tmp/r/gpu.txt
timeout 200 python3 devrun/bump.py /tmp/r/bump.json 2>&1 | grep -v Warn | tee /tmp/r/bump.log | tail -60
tar -czf $OUT/r.tgz -C /tmp r
timeout 300 python3 benchmarks/flex_prefill.py --sizes 33,97,127,128,161,481 --graph-p 0 --out /tmp/r 2>&1 | grep -v Warn | tee /tmp/r/flex.log | tail -40
tar -czf $OUT/r.tgz -C /tmp r
