"""Batch-1 MoE decode: the one-token expert GEMVs against the grouped GEMM (issue 20).

A decode step at batch 1 routes one token to k experts. The grouped GEMM of moe_kernels.py
pads that token to a 16-row tensor-core tile in an expert-sorted layout; expert_gemv()
streams the k experts' weights on CUDA cores instead, and in its "sum" mode the down GEMV
also sums over k (one kernel fewer a layer). This script builds each model truncated to
--layers layers (random bf16 weights, CUDA graphs, the engine as profiles run it) once per
INFERMETER_MOE_GEMV mode and times the batch-1 decode step the way decode_breakdown.py does
(`tpot_s` of one 480-token prompt and 65 new tokens, median of 3), against the bytes floor
spec.decode_bytes(context, 1) / copy bandwidth.

Run (GPU): PYTHONPATH=src python benchmarks/moe_gemv_bench.py
           [--models mixtral-8x7b,qwen3-30b-a3b,deepseek-v2-lite,gpt-oss-20b] [--layers 8]
           [--modes 0,pairs,sum,auto]
CPU check (tiny specs; the CPU runs the expert loop, so every mode is the same): --quick
Writes docs/benchmarks/moe_gemv.json and .md with device, date and commit.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import DOCS, write_result
from decode_breakdown import truncated
from infermeter.backends.base import Point
from infermeter.backends.engine import EngineBackend
from infermeter.spec.catalog import get_spec
from models_bench import copy_bandwidth

GPU_MODELS = "mixtral-8x7b,qwen3-30b-a3b,deepseek-v2-lite,gpt-oss-20b"
QUICK_MODELS = "tiny-qwen3-moe"
LABEL = {
    "0": "grouped GEMM",
    "pairs": "GEMVs, sum after",
    "sum": "GEMVs, sum in the down GEMV",
    "auto": "the engine's choice (fastest at start)",
}


def step(name: str, layers: int, device: str, mode: str, bandwidth: float) -> dict[str, Any]:
    """The batch-1 decode step of `name` cut to `layers` layers with INFERMETER_MOE_GEMV=mode."""
    os.environ["INFERMETER_MOE_GEMV"] = mode
    spec = truncated(get_spec(name), layers)
    prompt, new = (480, 65) if device == "cuda" else (48, 9)
    backend = EngineBackend(device=device, dtype="bfloat16" if device == "cuda" else None)
    backend.prepare(spec)
    try:
        backend.measure(Point(prompt, new, 1, 0))
        runs = [backend.measure(Point(prompt, new, 1, t)) for t in range(1, 4)]
        info = backend.describe()
    finally:
        backend.close()
        gc.collect()
    step_s = statistics.median(m.extra["tpot_s"] for m in runs)
    floor_s = spec.decode_bytes(round(prompt + (new - 2) / 2), 1) / bandwidth
    row = {
        "model": name,
        "spec": spec.name,
        "mode": mode,
        "tpot_s": step_s,
        "floor_s": floor_s,
        "over_floor": step_s / floor_s,
        "moe_experts": info.get("moe_experts"),
        "moe_batch1_gemv": info.get("moe_batch1_gemv"),
        "moe_batch1_us": info.get("moe_batch1_us"),
        "moe_experts_note": info.get("moe_experts_note"),
    }
    used = f"gemv {row['moe_batch1_gemv']}, note {row['moe_experts_note']}"
    print(f"{spec.name} mode {mode}: {step_s * 1e3:.3f} ms = {step_s / floor_s:.2f}x floor "
          f"({used})", flush=True)  # fmt: skip
    return row


def table(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """One row per model and mode: the step against the floor."""
    out = []
    for r in rows:
        figure = f"{r['spec']}: batch-1 decode step, {LABEL.get(r['mode'], r['mode'])}"
        if r["mode"] == "auto":
            grouped = "grouped" if r["moe_experts"] == "triton" else r["moe_experts"]
            figure += f": {r['moe_batch1_gemv'] or grouped}"
        elif not r["moe_batch1_gemv"] and r["mode"] != "0":
            figure += f" (not run: {r['moe_experts']} experts path)"
        value = f"{r['tpot_s'] * 1e3:.3f} ms / {r['floor_s'] * 1e3:.3f} ms = {r['over_floor']:.2f}×"
        out.append((figure, value, "≤ 1.3×"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=None)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--modes", default="0,pairs,sum,auto")
    parser.add_argument("--quick", action="store_true", help="CPU: tiny specs")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    device = "cpu" if args.quick else "cuda"
    models = (args.models or (QUICK_MODELS if args.quick else GPU_MODELS)).split(",")
    began = time.perf_counter()
    bandwidth = copy_bandwidth(device)
    rows: list[dict[str, Any]] = []
    name = "moe_gemv" + ("_quick" if args.quick else "")
    for model in models:  # written after each model: a run cut short keeps what it measured
        for mode in args.modes.split(","):
            rows.append(step(model, args.layers, device, mode, bandwidth))
        result = {"copy_bandwidth_Bps": bandwidth, "layers": args.layers, "models": rows,
                  "wall_s": time.perf_counter() - began}  # fmt: skip
        path = write_result(name, result, table(rows), args.out)
    print(f"written {path} in {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
