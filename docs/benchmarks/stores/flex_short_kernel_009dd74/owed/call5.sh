# The grouped GEMM's tile and the order of prompt sizes, before the fix (009dd74's source in
# devrun/old/src: git archive 009dd74 src | tar -x -C devrun/old) and after it (src); carry devrun.
export PYTHONUNBUFFERED=1 INFERMETER_KEEP_TILES=0
mkdir -p /tmp/r5; nvidia-smi --query-gpu=name --format=csv,noheader | tee /tmp/r5/gpu.txt
for code in devrun/old/src src; do for order in 97,4065 4065,97; do
  n=$(basename "$(dirname $code)")_${order/,/_}
  echo "== $code order $order"
  PYTHONPATH=$code timeout 100 python3 devrun/tiles.py $order /tmp/r5/$n.json 2>&1 | grep -v Warn | tail -3
  tar -czf $OUT/r5.tgz -C /tmp r5
done; done
