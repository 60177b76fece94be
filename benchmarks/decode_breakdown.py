"""Where does a batch-1 decode step go? Kernel by kernel, against the bytes floor (issue 20).

models.md found today's MoE models' batch-1 decode 1.4-2.5x their bytes floor on an H200
and did not say why. This script splits a decode step into its kernels for each model: the
model truncated to its first --layers layers (the per-layer work is the same; the LM head's
share grows, and the floor below counts it for the truncated model too), random weights,
bf16, on the engine:

1. the step as profiles time it: `tpot_s` of one 480-token prompt and 65 new tokens (CUDA
   graphs, median of 3), against the floor spec.decode_bytes(context, 1) / copy bandwidth;
2. the kernels of 32 decode steps, from torch.profiler (CUPTI) around a generation of 33
   tokens minus one of 1 token after the same prompt, so prefill cancels out: per kernel name,
   launches and device time per step, under CUDA graphs (when CUPTI reports a graph's kernels)
   and without (eager, where every kernel is a launch from Python);
3. the eager kernels' busy time (their sum) beside the graph step: launch gaps make the step
   (step >> busy) or the kernels themselves do (step ~ busy); see table() for why the graph
   kernels' own sum passes the step.

Run (GPU): PYTHONPATH=src python benchmarks/decode_breakdown.py
           [--models qwen3-30b-a3b,deepseek-v2-lite,gpt-oss-20b,mixtral-8x7b] [--layers 8]
CPU check (tiny specs, eager only: a CPU runs no CUDA graphs; no kernels to see): ... --quick
Writes docs/benchmarks/decode_breakdown.json and .md with device, date and commit.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import DOCS, read_record, write_record, write_result
from infermeter.backends.base import Point
from infermeter.backends.engine import EngineBackend
from infermeter.spec.catalog import resolve_spec
from infermeter.spec.model import ModelSpec
from models_bench import copy_bandwidth

GPU_MODELS = "qwen3-30b-a3b,deepseek-v2-lite,gpt-oss-20b,mixtral-8x7b"
QUICK_MODELS = "tiny-qwen3-moe,tiny-mixtral"
STEPS = 32  # decode steps whose kernels are counted
TOP = 12  # kernels listed per model and mode


def truncated(spec: ModelSpec, layers: int) -> ModelSpec:
    """`spec` with its first `layers` layers (all of them if it has fewer); per-layer fields
    (layer types, Llama-4's layers without rotary positions) keep the layers kept."""
    if layers >= spec.num_layers:
        return spec
    types = tuple(spec.layer_types[:layers]) if spec.layer_types else ()
    nope = tuple(i for i in spec.nope_layers if i < layers)
    return replace(
        spec, name=f"{spec.name}@{layers}L", num_layers=layers, layer_types=types, nope_layers=nope
    )


def kernel_times(backend: EngineBackend, prompt: int, steps: int) -> dict[str, list[float]]:
    """Per kernel name: [launches, device µs] of `steps` decode steps (a generation of
    steps + 1 tokens minus one of 1 token after the same prompt; both shapes run once first)."""
    from torch.profiler import ProfilerActivity, profile

    def per_name(o: int) -> dict[str, list[float]]:
        point = Point(prompt, o, 1, 0)
        backend.measure(point)  # first visit: warm-up, graph capture
        with profile(activities=[ProfilerActivity.CUDA]) as prof:
            backend.measure(replace(point, trial=1))
        out: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for event in prof.key_averages():
            device_us = getattr(event, "device_time_total", None)
            if device_us is None:
                device_us = getattr(event, "cuda_time_total", 0.0)
            if device_us <= 0 or getattr(event, "device_type", None) is None:
                continue
            if str(event.device_type).endswith("CPU"):
                continue
            out[event.key][0] += event.count
            out[event.key][1] += device_us
        return out

    long, short = per_name(steps + 1), per_name(1)
    return {
        name: [(n - short.get(name, [0, 0])[0]) / steps, (us - short.get(name, [0, 0])[1]) / steps]
        for name, (n, us) in long.items()
    }


def summarise(kernels: dict[str, list[float]], step_s: float | None) -> dict[str, Any]:
    """Totals per step and the TOP kernels by device time."""
    rows = sorted(
        ({"kernel": k[:120], "launches_per_step": n, "us_per_step": us}
         for k, (n, us) in kernels.items() if us > 0),
        key=lambda r: -r["us_per_step"],
    )  # fmt: skip
    total_us = sum(r["us_per_step"] for r in rows)
    launches = sum(r["launches_per_step"] for r in rows)
    out: dict[str, Any] = {
        "kernel_us_per_step": total_us,
        "launches_per_step": launches,
        "top": rows[:TOP],
    }
    if step_s is not None and rows:
        out["idle_us_per_step"] = step_s * 1e6 - total_us
    return out


def one_model(name: str, layers: int, device: str, bandwidth: float) -> dict[str, Any]:
    """The step, its floor and its kernels for `name` cut to `layers` layers."""
    spec = truncated(resolve_spec(name), layers)
    prompt, new = (480, 65) if device == "cuda" else (48, 9)
    row: dict[str, Any] = {"model": name, "spec": spec.name, "layers": spec.num_layers}
    for graphs in (True, False) if device == "cuda" else (False,):  # a CPU runs no graphs
        backend = EngineBackend(
            device=device, dtype="bfloat16" if device == "cuda" else None, cuda_graphs=graphs
        )
        backend.prepare(spec)
        # labelled by what the engine runs (it falls back to eager where graphs cannot run)
        mode = "graphs" if backend.describe().get("cuda_graphs") else "eager"
        try:
            backend.measure(Point(prompt, new, 1, 0))
            runs = [backend.measure(Point(prompt, new, 1, t)) for t in range(1, 4)]
            step_s = statistics.median(m.extra["tpot_s"] for m in runs)
            context = round(prompt + (new - 2) / 2)
            floor_s = spec.decode_bytes(context, 1) / bandwidth
            row[f"{mode}_tpot_s"] = step_s
            row[f"{mode}_over_floor"] = step_s / floor_s
            row["floor_s"], row["decode_bytes"] = floor_s, spec.decode_bytes(context, 1)
            row.setdefault("backend_info", backend.describe())  # the first mode's
            if device == "cuda":
                row[mode] = part = summarise(kernel_times(backend, prompt, STEPS), step_s)
                for k in part["top"][:8]:
                    print(f"  {k['us_per_step']:8.1f} us {k['launches_per_step']:6.1f}x "
                          f"{k['kernel'][:90]}", flush=True)  # fmt: skip
        finally:
            backend.close()
            gc.collect()
        print(f"{name} {mode}: step {step_s * 1e3:.3f} ms = {step_s / floor_s:.2f}x floor "
              f"{floor_s * 1e3:.3f} ms", flush=True)  # fmt: skip
    return row


def short_kernel(name: str) -> str:
    """A kernel's name as the table shows it: without its return type, template arguments
    and parameters ("void at::native::reduce_kernel<128, 4, ...>(...)" is
    "at::native::reduce_kernel"); Triton's and cuBLAS's plain names ("_small_linear") as they
    are. The record keeps the names as the profiler gave them."""
    name = name.removeprefix("void ")
    cuts = [i for i in (name.find("<"), name.find("(")) if i > 0]  # "(anonymous namespace)::"
    return name[: min(cuts, default=len(name))]


def table(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    """(figure, value, goal) rows: the graph step against the floor (the eager step where
    no graphs ran: a CPU), and the eager kernels' busy time against the graph step. Under
    CUDA graphs the engine launches kernels with
    programmatic dependent launch, so a kernel's recorded time includes its wait for the one
    before and the sum over kernels passes the step; eager kernels run one after another, so
    their sum is the GPU's busy time, and beside the graph step it says whether launch gaps
    (step >> busy) or the kernels themselves (step ~ busy) make the step."""
    out = []
    for r in rows:
        eager = r.get("eager") or {}
        mode = "graphs" if "graphs_tpot_s" in r else "eager"
        value = (f"{r[f'{mode}_tpot_s'] * 1e3:.3f} ms / {r['floor_s'] * 1e3:.3f} ms = "
                 f"{r[f'{mode}_over_floor']:.2f}×")  # fmt: skip
        if eager:
            top = "; ".join(
                f"{short_kernel(k['kernel'])} {k['us_per_step']:.0f} µs "
                f"({k['launches_per_step']:.0f}×)"
                for k in eager["top"][:4]
            )
            value += (f"; eager kernels busy {eager['kernel_us_per_step'] / 1e3:.3f} ms a step "
                      f"in {eager['launches_per_step']:.0f} launches: {top}")  # fmt: skip
        out.append((f"{r['spec']}: batch-1 decode step under {mode} / bytes floor", value,
                    "≤ 1.3×"))  # fmt: skip
    return out


def write(rows: list[dict[str, Any]], args: Any, bandwidth: float, wall_s: float) -> Path:
    """The record of the models measured so far."""
    result = {
        "copy_bandwidth_Bps": bandwidth,
        "layers": args.layers,
        "steps_profiled": STEPS,
        "models": rows,
        "wall_s": wall_s,
    }
    return write_result("decode_breakdown" + ("_quick" if args.quick else ""), result,
                        table(rows), args.out)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", default=None)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="CPU: tiny specs, eager, no kernels")
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument(
        "--table-from", type=Path, help="a record (JSON): write its table again, measure nothing"
    )
    args = parser.parse_args()
    if args.table_from:
        needs = ("device", "date", "commit", "models")
        record = read_record(
            args.table_from, "--table-from", needs, ("model", "floor_s", "eager_tpot_s")
        )
        name = args.table_from.stem
        print(f"written {write_record(name, record, table(record['models']), args.out)}")
        return
    device = "cpu" if args.quick else "cuda"
    models = (args.models or (QUICK_MODELS if args.quick else GPU_MODELS)).split(",")
    began = time.perf_counter()
    bandwidth = copy_bandwidth(device)
    rows: list[dict[str, Any]] = []
    for model in models:  # written after each model: a run cut short keeps what it measured
        rows.append(one_model(model, args.layers, device, bandwidth))
        path = write(rows, args, bandwidth, time.perf_counter() - began)
    print(f"written {path} in {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
