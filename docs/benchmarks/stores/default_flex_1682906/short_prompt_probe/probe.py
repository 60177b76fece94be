"""Ad hoc probe: prefill time against p, Gemma-2 (first N layers), flex or explicit, graphs on/off.

Run from a folder at the repository root (probe.sh): python3 probe.py MODEL LAYERS GRAPHS(0|1)
OUT.json SIZES, with INFERMETER_PREFILL_ATTENTION set per arm. Tidied for ruff after the run at
1682906 (the same logic; the start-up line printed the engine's prefill choice less plainly).
"""

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, "benchmarks")

from decode_breakdown import truncated
from infermeter.backends.base import Point
from infermeter.backends.engine import EngineBackend
from infermeter.spec.catalog import resolve_spec

name, layers, graphs, out = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4]
sizes = [int(x) for x in sys.argv[5].split(",")]
spec = truncated(resolve_spec(name), layers)
b = EngineBackend(device="cuda", dtype="bfloat16", cuda_graphs=graphs)
t0 = time.time()
b.prepare(spec)
engine = b._engine
note = getattr(engine, "prefill_attention_note", None)
flex = getattr(getattr(engine, "model", None), "flex_prefill", None)
print("prepared", round(time.time() - t0, 1), "s; note", note, flex, flush=True)
res: dict[int, list[float]] = {}
for trial in range(4):  # trial 0: warm-up
    for p in sizes:
        m = b.measure(Point(p, 1, 1, trial))
        if trial:
            res.setdefault(p, []).append(m.runtime_s)
for p in sizes:
    times = [round(x * 1e3, 2) for x in res[p]]
    print(f"p {p}: min {min(res[p]) * 1e3:.2f} ms  all {times}", flush=True)
prof = {}
if not graphs:
    from torch.profiler import ProfilerActivity, profile

    for p in (33, 161):
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as pr:
            b.measure(Point(p, 1, 1, 9))
        table = pr.key_averages().table(sort_by="cuda_time_total", row_limit=14)
        print(f"--- profile p={p}\n{table}", flush=True)
        prof[p] = table
record = {
    "mode": os.environ.get("INFERMETER_PREFILL_ATTENTION", "auto"),
    "graphs": graphs,
    "min_ms": {p: min(v) * 1e3 for p, v in res.items()},
    "prof": prof,
}
Path(out).write_text(json.dumps(record, indent=1))
b.close()
