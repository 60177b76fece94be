# tile A/B (009dd74's grouped GEMM tile key vs the current one) then TunableOp probe
export PYTHONUNBUFFERED=1 INFERMETER_KEEP_TILES=0
mkdir -p /tmp/r5 /tmp/r3; nvidia-smi --query-gpu=name,power.limit --format=csv,noheader | tee /tmp/r5/gpu.txt
date -u | tee -a /tmp/r5/gpu.txt
for code in devrun/old/src src; do for order in 97,4065 4065,97; do
  tag=new; [ $code = src ] || tag=old; n=${tag}_${order/,/_}
  echo "== $code order $order"
  PYTHONPATH=$code timeout 75 python3 devrun/tiles.py $order /tmp/r5/$n.json 2>&1 | grep -v Warn | tail -3
  tar -czf $OUT/r5.tgz -C /tmp r5
done; done
PYTHONPATH=src timeout 220 python3 devrun/tunable.py /tmp/r3/tunable.json 2>&1 | grep -v Warn | tail -20
tar -czf $OUT/r3.tgz -C /tmp r3
