export PYTHONUNBUFFERED=1
mkdir -p /tmp/r3; nvidia-smi --query-gpu=name --format=csv,noheader | tee /tmp/r3/gpu.txt
timeout 230 python3 devrun/tunable.py /tmp/r3/tunable.json 2>&1 | grep -v Warn | tail -20
tar -czf $OUT/r3.tgz -C /tmp r3
