"""Where the decode step's time goes: the LLaMA-7B step (batch 1, context 512) with
programmatic dependent launch off and on, against the memory floor.

Variants (each in its own process, since the switch is read when kernels launch):
- base: plain launches, one per operation (10 per layer);
- pdl: programmatic dependent launch (the engine's default on Hopper; INFERMETER_PDL=0
  turns it off), the next kernel is scheduled while the current one drains.
Per variant: the median decode step over repeats (CUDA events around whole generations, as
engine_bench), its ratio to the floor (weight + KV bytes / copy bandwidth, measured once in
this run), and, from the profiler, the summed kernel time per step (a generation minus one
that stops after its prefill): without PDL, step − kernels is the time the GPU spent between
kernels (with PDL the kernels' profiled durations include their waits and overlap).

Run on a GPU: python benchmarks/decode_ablation.py [--out DIR] [--repeats N]
Writes <out>/decode_ablation.json and .md with device, date and commit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import DOCS, write_result
from engine_bench import LLAMA_7B, copy_bandwidth, medians
from infermeter.backends.base import Point
from infermeter.backends.engine import EngineBackend

VARIANTS = {"base": "0", "pdl": "1"}  # name: INFERMETER_PDL
POINT = Point(prompt_tokens=480, output_tokens=65)  # steps at contexts 480..543: mean = 512


def _kernel_us(backend: EngineBackend, point: Point) -> dict[str, float]:
    """Device µs per kernel name over one generation at `point` (graph replays included)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        backend.measure(point)
    per_name: dict[str, float] = {}
    for event in prof.events():
        if event.device_type.name == "CUDA":
            per_name[event.name] = per_name.get(event.name, 0.0) + event.device_time
    return per_name


def kernel_time_per_step(backend: EngineBackend) -> dict[str, Any]:
    """Kernel time per decode step: a generation at POINT minus one that stops after the
    prefill (same prompt), over the steps between; and the largest kernels per step."""
    whole = _kernel_us(backend, POINT)
    prefill = _kernel_us(backend, replace(POINT, output_tokens=1))
    steps = POINT.output_tokens - 1
    per_step = {k: (t - prefill.get(k, 0.0)) / steps for k, t in whole.items()}
    top = sorted(per_step.items(), key=lambda kv: -kv[1])[:8]
    return {
        "kernel_us_per_step": sum(per_step.values()),
        "top_kernels_us_per_step": [(name[:60], round(t, 2)) for name, t in top],
    }


def run_variant(repeats: int) -> dict[str, Any]:
    backend = EngineBackend(device="cuda", dtype="bfloat16")
    backend.prepare(LLAMA_7B)
    info = backend.describe()
    got = medians(backend, POINT, repeats)
    again = medians(backend, POINT, repeats)  # the same version twice: the noise band
    out: dict[str, Any] = {
        "step_s": got["tpot_s"],
        "step_s_repeat": again["tpot_s"],
        "decode_pdl": info.get("decode_pdl"),
        "decode_attention": info.get("decode_attention"),
    }
    try:
        out.update(kernel_time_per_step(backend))
    except Exception as error:  # the profiler is a diagnosis, not the figure
        out["profile_error"] = f"{type(error).__name__}: {error}"[:200]
    backend.close()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: one child process
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("decode_ablation needs a CUDA GPU")
    if args.variant:
        print(json.dumps(run_variant(args.repeats)), flush=True)
        return
    bandwidth = copy_bandwidth(50)
    torch.cuda.empty_cache()
    floor_s = LLAMA_7B.decode_bytes(512) / bandwidth
    print(f"copy {bandwidth / 1e12:.2f} TB/s, floor {floor_s * 1e3:.3f} ms", flush=True)
    results: dict[str, Any] = {}
    for name, pdl in VARIANTS.items():
        env = {**os.environ, "INFERMETER_PDL": pdl}
        cmd = [sys.executable, __file__, "--variant", name, "--repeats", str(args.repeats)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            results[name] = {"error": done.stderr.strip()[-600:]}
        else:
            row = json.loads(done.stdout.strip().splitlines()[-1])
            row["ratio_to_floor"] = row["step_s"] / floor_s
            # With PDL a kernel is resident while it waits on the one before, so the
            # profiler's durations overlap and their sum says nothing about gaps.
            if pdl == "0" and "kernel_us_per_step" in row:
                row["gap_us_per_step"] = row["step_s"] * 1e6 - row["kernel_us_per_step"]
            results[name] = row
        print(name, results[name], flush=True)
    rows = [
        (
            f"decode step, {name}",
            f"{r['step_s'] * 1e3:.3f} ms ({r['step_s_repeat'] * 1e3:.3f} again) = "
            f"{r['ratio_to_floor']:.3f}x floor"
            if "step_s" in r
            else f"failed: {r['error'][-120:]}",
            "<= 1.15x" if name == "pdl" else "",
        )
        for name, r in results.items()
    ]
    rows.append(("floor (weights + KV at 512 / copy bandwidth)", f"{floor_s * 1e3:.3f} ms", ""))
    write_result(
        "decode_ablation",
        {
            "spec": LLAMA_7B.name,
            "copy_bandwidth_Bps": bandwidth,
            "floor_s": floor_s,
            "decode_bytes_512": LLAMA_7B.decode_bytes(512),
            "variants": results,
            "env": {name: {"INFERMETER_PDL": pdl} for name, pdl in VARIANTS.items()},
        },
        rows,
        args.out,
    )


if __name__ == "__main__":
    main()
