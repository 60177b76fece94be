"""Ad hoc: Gemma-2-9B's prefill bump near p = 584 (H100, 1682906: 584 slower than 520 and 640).

python3 devrun/bump.py OUT.json, at p = 480..1000 every 8 and at 481, 520, 584, 640, 737, 993:
(1) torch.nn.functional.linear at the layer's GEMM shapes (cuBLAS, bf16); (2) the engine's
prefill (first 8 layers, eager, explicit then auto); (3) a torch profile (CUDA kernels) of the
explicit 8-layer prefill at 520, 584, 640. Docstring and comment corrected after the run.
"""

import json
import sys
import time

import torch

sys.path.insert(0, "benchmarks")
from decode_breakdown import truncated
from infermeter.backends.base import Point
from infermeter.backends.engine import EngineBackend
from infermeter.spec.catalog import resolve_spec

out = sys.argv[1]
sizes = sorted(set(range(480, 1001, 8)) | {481, 520, 584, 640, 737, 993})
rec: dict = {"gpu": torch.cuda.get_device_name(), "sizes": sizes}
# (1) GEMMs at the layer's shapes: hidden 3584, q 16x256, kv 8x256, FFN 14336 (gate, up fused)
shapes = {"qkv": (3584, 8192), "o": (4096, 3584), "gate_up": (3584, 28672), "down": (14336, 3584)}
g = {}
for name, (k, n) in shapes.items():
    w = torch.randn(n, k, device="cuda", dtype=torch.bfloat16)
    row = {}
    for p in sizes:
        x = torch.randn(p, k, device="cuda", dtype=torch.bfloat16)
        for _ in range(3):
            torch.nn.functional.linear(x, w)
        torch.cuda.synchronize()
        best = 1e9
        for _ in range(5):
            a = torch.cuda.Event(enable_timing=True)
            b = torch.cuda.Event(enable_timing=True)
            a.record()
            for _ in range(10):
                torch.nn.functional.linear(x, w)
            b.record()
            torch.cuda.synchronize()
            best = min(best, a.elapsed_time(b) / 10)
        row[p] = round(best * 1e3, 2)  # us
    g[name] = row
    print(name, {p: row[p] for p in (481, 520, 584, 640, 737)}, flush=True)
rec["gemm_us"] = g
# (2) and (3) the engine
import os  # noqa: E402

from torch.profiler import ProfilerActivity, profile  # noqa: E402

spec = truncated(resolve_spec("gemma-2-9b"), 8)
for mode in ("explicit", "auto"):
    os.environ["INFERMETER_PREFILL_ATTENTION"] = mode
    be = EngineBackend(device="cuda", dtype="bfloat16", cuda_graphs=False)
    t0 = time.time()
    be.prepare(spec)
    print(mode, "prepared", round(time.time() - t0, 1), "s", flush=True)
    res: dict[int, float] = {}
    for trial in range(4):
        for p in sizes:
            t = be.measure(Point(p, 1, 1, trial)).runtime_s
            if trial:
                res[p] = min(res.get(p, 1e9), t)
    rec[f"engine_{mode}_ms"] = {p: round(v * 1e3, 3) for p, v in res.items()}
    print(mode, {p: round(res[p] * 1e3, 2) for p in (481, 520, 584, 640, 737, 993)}, flush=True)
    if mode == "explicit":
        tables = {}
        for p in (520, 584, 640):
            with profile(activities=[ProfilerActivity.CUDA]) as pr:
                be.measure(Point(p, 1, 1, 9))
            ev = [
                (e.key, round(e.device_time_total, 1), e.count)
                for e in pr.key_averages()
                if e.device_time_total > 0
            ]
            tables[p] = sorted(ev, key=lambda r: -r[1])[:25]
            print(f"--- p={p}", *tables[p][:12], sep="\n  ", flush=True)
        rec["kernels_us"] = tables
    be.close()
    del be
    torch.cuda.empty_cache()
with open(out, "w") as f:
    json.dump(rec, f, indent=1)
