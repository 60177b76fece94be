"""Diagnose: prefill time vs p for Gemma-2 (8 layers), flex vs explicit, graphs on/off."""
import json, os, sys, time
from pathlib import Path
sys.path.insert(0, "benchmarks")
import torch
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
print("prepared", round(time.time() - t0, 1), "s; note", getattr(b._engine, "prefill_attention_note", None), getattr(b._engine, "flex_prefill", None) is not None if False else getattr(getattr(b._engine, "model", None), "flex_prefill", None), flush=True)
res = {}
for trial in range(4):
    for p in sizes:
        m = b.measure(Point(p, 1, 1, trial))
        if trial:
            res.setdefault(p, []).append(m.runtime_s)
for p in sizes:
    print(f"p {p}: min {min(res[p])*1e3:.2f} ms  all {[round(x*1e3,2) for x in res[p]]}", flush=True)
prof = {}
if not graphs:
    from torch.profiler import ProfilerActivity, profile
    for p in (33, 161):
        with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as pr:
            b.measure(Point(p, 1, 1, 9))
        t = pr.key_averages().table(sort_by="cuda_time_total", row_limit=14)
        print(f"--- profile p={p}\n{t}", flush=True)
        prof[p] = t
Path(out).write_text(json.dumps({"mode": os.environ.get("INFERMETER_PREFILL_ATTENTION", "auto"), "graphs": graphs, "min_ms": {p: min(v)*1e3 for p, v in res.items()}, "prof": prof}, indent=1))
b.close()
