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
Writes docs/benchmarks/moe_gemv.json and .md (or --name) with device, date and commit.
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
from _record import DOCS, write_record
from decode_breakdown import truncated
from infermeter.backends.base import Point
from infermeter.backends.engine import EngineBackend
from infermeter.spec.catalog import get_spec
from infermeter.store.provenance import provenance
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
    try:
        backend.prepare(spec)
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
    note = f"; {row['moe_experts_note']}" if row["moe_experts_note"] else ""
    print(f"{spec.name} mode {mode}: {step_s * 1e3:.3f} ms = {step_s / floor_s:.2f}x floor "
          f"(ran: {ran(row)}{note})", flush=True)  # fmt: skip
    return row


def ran(row: dict[str, Any]) -> str:
    """The batch-1 expert path that ran: a GEMV mode, the grouped GEMM, or the engine's
    other paths (the expert loop on a CPU, the dense fallback)."""
    if row["moe_experts"] != "triton":
        return f"{row['moe_experts']} experts path"
    return f"GEMVs ({row['moe_batch1_gemv']})" if row["moe_batch1_gemv"] else "grouped GEMM"


def table(rows: list[dict[str, Any]], gpu: bool) -> list[tuple[str, str, str]]:
    """One row per model and mode: the step against the floor, and the path that ran where
    it is not the one the mode names."""
    out = []
    for r in rows:
        figure = f"{r['spec']}: batch-1 decode step, {LABEL.get(r['mode'], r['mode'])}"
        wanted = {"0": "grouped GEMM", "sum": "GEMVs (sum)", "pairs": "GEMVs (pairs)"}
        if wanted.get(r["mode"]) != ran(r):
            figure += f" (ran: {ran(r)})"
        value = f"{r['tpot_s'] * 1e3:.3f} ms / {r['floor_s'] * 1e3:.3f} ms = {r['over_floor']:.2f}×"
        out.append((figure, value, "≤ 1.3×" if gpu else "-"))
    return out


def sections(args: argparse.Namespace, gpu: bool) -> list[str]:
    """What the table measured, under it."""
    prompt, new = (480, 65) if gpu else (48, 9)
    lines = [
        "",
        f"Each model cut to its first {args.layers} layers, random weights, "
        f"{'bfloat16 under CUDA graphs' if gpu else 'float32, eager'}; the step is the "
        f"median of 3 runs' time per output token of a {prompt}-token prompt and {new} new "
        "tokens, the floor spec.decode_bytes(context, 1) over this machine's copy bandwidth. "
        "Modes: INFERMETER_MOE_GEMV (0 the grouped GEMM, sum and pairs the expert GEMVs, "
        "auto the fastest of the three timed at the engine's start).",
    ]
    if not gpu:
        lines.append("")
        lines.append(
            "On a CPU every mode runs the expert loop (no Triton): the rows differ by noise "
            "only and check the script, not the kernels."
        )
    return lines


def modes_list(text: str) -> list[str]:
    """--modes: a comma-separated list of INFERMETER_MOE_GEMV values."""
    modes = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in modes if m not in LABEL]
    if bad or not modes:
        raise argparse.ArgumentTypeError(f"modes are 0, pairs, sum or auto, not {bad or text!r}")
    return modes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=None)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument(
        "--modes", default="0,pairs,sum,auto", type=modes_list, help="of 0, pairs, sum, auto"
    )
    parser.add_argument("--quick", action="store_true", help="CPU: tiny specs")
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--name", default=None, help="record name (default moe_gemv[_quick])")
    args = parser.parse_args()
    device = "cpu" if args.quick else "cuda"
    models = (args.models or (QUICK_MODELS if args.quick else GPU_MODELS)).split(",")
    began = time.perf_counter()
    bandwidth = copy_bandwidth(device)
    rows: list[dict[str, Any]] = []
    name = args.name or "moe_gemv" + ("_quick" if args.quick else "")
    for model in models:  # written after each model: a run cut short keeps what it measured
        for mode in args.modes:
            rows.append(step(model, args.layers, device, mode, bandwidth))
        result = {"copy_bandwidth_Bps": bandwidth, "layers": args.layers, "models": rows,
                  "wall_s": time.perf_counter() - began}  # fmt: skip
        record = {**provenance(), **result}
        gpu = not args.quick
        path = write_record(name, record, table(rows, gpu), args.out, sections(args, gpu))
    print(f"written {path} in {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
