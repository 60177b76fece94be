"""Ad hoc: does the order of prompt sizes decide gpt-oss-20b's prefill time (the MoE grouped
GEMM's tile tuned at the first size)? python3 devrun/tiles.py ORDER OUT.json, ORDER a
comma list of p (the first tunes); least of 3 trials of a one-token generation per p (the
engine's own timing), first 8 layers, eager. Run with INFERMETER_KEEP_TILES=0."""

import json
import sys

sys.path.insert(0, "benchmarks")

from decode_breakdown import truncated
from infermeter.backends.base import Point
from infermeter.backends.engine import EngineBackend
from infermeter.engine import moe_kernels
from infermeter.spec.catalog import resolve_spec

order, out = [int(x) for x in sys.argv[1].split(",")], sys.argv[2]
b = EngineBackend(device="cuda", dtype="bfloat16", cuda_graphs=False)
b.prepare(truncated(resolve_spec("gpt-oss-20b"), 8))
best: dict[int, float] = {}
for trial in range(4):
    for p in order:
        t = b.measure(Point(p, 1, 1, trial)).runtime_s
        if trial:
            best[p] = min(best.get(p, 1e9), t)
tuned = {str(k): str(v) for k, v in moe_kernels._grouped_gemm.cache.items()}
rec = {"order": order, "min_ms": {p: round(v * 1e3, 3) for p, v in best.items()}, "tiles": tuned}
print(json.dumps(rec["min_ms"]), len(tuned), "tiles", flush=True)
with open(out, "w") as f:
    json.dump(rec, f, indent=1)
b.close()
