"""Ad hoc: does PyTorch's TunableOp smooth cuBLAS's GEMM time in M at Gemma-2-9B's prefill shapes?

python3 devrun/tunable.py OUT.json: each shape's F.linear (bf16) at M = 480..1000 every 8,
default cuBLAS, then with torch.cuda.tunable on (tuned on first use; each shape's time
measured after). Least of 5 rounds of 10 calls (CUDA events), in microseconds.
"""

import json
import sys
import time

import torch
import torch.nn.functional as F

out = sys.argv[1]
sizes = [*range(480, 1001, 8), 584]
shapes = {"qkv": (3584, 8192), "o": (4096, 3584), "gate_up": (3584, 28672), "down": (14336, 3584)}


def timed(x: torch.Tensor, w: torch.Tensor) -> float:
    for _ in range(3):
        F.linear(x, w)
    torch.cuda.synchronize()
    best = 1e9
    for _ in range(5):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(10):
            F.linear(x, w)
        b.record()
        torch.cuda.synchronize()
        best = min(best, a.elapsed_time(b) / 10)
    return round(best * 1e3, 2)


rec: dict = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__, "sizes": sizes}
weights = {
    n: torch.randn(nn, k, device="cuda", dtype=torch.bfloat16) for n, (k, nn) in shapes.items()
}
inputs = {(n, m): torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
          for n, (k, _) in shapes.items() for m in sizes}  # fmt: skip
for arm in ("default", "tunable"):
    if arm == "tunable":
        torch.cuda.tunable.enable(True)
        torch.cuda.tunable.tuning_enable(True)
        torch.cuda.tunable.set_max_tuning_duration(20)
        torch.cuda.tunable.set_filename("/tmp/r3/tunableop_results.csv")
    t0 = time.time()
    rec[arm] = {n: {m: timed(inputs[n, m], weights[n]) for m in sizes} for n in shapes}
    rec[f"{arm}_wall_s"] = round(time.time() - t0, 1)
    print(arm, rec[f"{arm}_wall_s"], "s;", {n: [rec[arm][n][m] for m in (512, 520, 536, 584, 640)]
                                            for n in shapes}, flush=True)  # fmt: skip
    with open(out, "w") as f:
        json.dump(rec, f, indent=1)
