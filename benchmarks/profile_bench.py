"""A full profile of a model on a backend, then queries never profiled against the estimate.

Issue goals for LLaMA-7B on the engine (H100/H200): every per-p R² ≥ 0.9999, wall time
including model initialisation ≤ 2 min, and on 50 random (p, o) queries measured directly:
MAPE ≤ 2%, max error ≤ 5%. Where NVML is present the profile is metered: the energy model
E(p, o) is fitted and checked on the same queries (goal MAPE ≤ 3%), counter-based energy is
compared with integrated sampled power over the same windows (goal within 3%), and the
metering overhead on runtime is measured by timing the same queries with the sampler on and
off, alternately (goal < 1%).

For the models of the paper's Table 3 the fitted PE(512/1024/1536) and g are printed beside
the paper's idealized figures (Megatron on A100s: other hardware and software, for context).

A model too large for the GPUs at hand can be profiled truncated: `--layers L --tp N` keeps
L of its layers (same layer shape) and reports the per-layer-scaled figures for the full depth
on N GPUs with ideal tensor parallelism, PE·(layers/(N·L)) and g·(layers/(N·L)): with
L = layers/N that is the truncated model's own time, i.e. what each of N GPUs computes, with
the all-reduces between them left out (stated in the record).

Run: python benchmarks/profile_bench.py [--model llama-7b] [--backend engine] [--out DIR]
Writes <out>/profile_<backend>.json and .md (or <out>/<--name>.json) with device, date and
commit.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import DOCS, write_result
from infermeter.backends import get_backend
from infermeter.backends.base import Point
from infermeter.errors import UserError
from infermeter.experiments.profile import ProfileGrid, measure_point, run_profile
from infermeter.measure.meter import Meter
from infermeter.model.fit import fit_cost_model
from infermeter.spec.catalog import get_spec
from infermeter.spec.hardware import build_stack
from infermeter.store.db import Store
from infermeter.store.provenance import cuda_device_name, device_description

# The idealized-runtime paper's Table 3, t_idealized on (Megatron, A100): PE at p = 512 /
# 1024 / 1536 and g, in seconds (../shared/papers/idealized-runtime-paper.txt, Table 3).
PAPER_TABLE3 = {
    "openai/davinci": ((0.178, 0.323, 0.476), 0.081),
    "ai21/j1-grande-v1": ((0.097, 0.190, 0.298), 0.038),
    "ai21/j1-jumbo-v1": ((0.164, 0.310, 0.465), 0.064),
    "anthropic/v4-s3": ((0.108, 0.189, 0.279), 0.054),
}


def sizes(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="llama-7b")
    parser.add_argument("--backend", default="engine")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--prompt-sizes", type=sizes, default=(1, 256, 512, 1024, 1536))
    parser.add_argument("--output-sizes", type=sizes, default=(1, 32, 64, 128, 256))
    parser.add_argument("--trials", type=int, default=3)
    parser.add_argument("--queries", type=int, default=50)
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument(
        "--store",
        type=Path,
        default=None,
        help="keep the SQLite store here (default: <out>/stores/profile_<backend>.sqlite)",
    )
    parser.add_argument(
        "--min-energy-window",
        type=float,
        default=0.5,
        help="repeat queries shorter than this inside one energy window (s)",
    )
    parser.add_argument(
        "--warmup-s",
        type=float,
        default=30.0,
        help="seconds of load before a metered profile (working temperature); in the wall time",
    )
    parser.add_argument("--layers", type=int, default=None, help="profile only L layers")
    parser.add_argument("--tp", type=int, default=1, help="with --layers: scale to N GPUs")
    parser.add_argument("--name", default=None, help="result file stem (profile_<backend>)")
    args = parser.parse_args()
    name = args.name or f"profile_{args.backend}"

    if args.tp != 1 and args.layers is None:
        sys.exit("--tp scales a truncated profile: give --layers too")
    full = get_spec(args.model)
    spec = full
    if args.layers is not None:
        if not 0 < args.layers <= full.num_layers:
            sys.exit(f"--layers must be in 1..{full.num_layers}")
        spec = replace(full, name=f"{full.name}@{args.layers}L", num_layers=args.layers)
    grid = ProfileGrid(args.prompt_sizes, args.output_sizes, (1,), args.trials)
    backend = get_backend(args.backend, device=args.device)
    # The stack as `infermeter profile` records it (detected GPU, dtype), so it is priced as run;
    # a GPU the catalog lacks is recorded by backend only, and priced as the report's fallback.
    try:
        stack = build_stack(args.backend, args.device, None, spec.dtype, None, 1, 1, {})[0]
        stack_record = stack.to_dict()
    except UserError as error:
        print(f"note: {error}; the run records its device name only")
        stack_record = {"backend": args.backend}
    meter = Meter.for_device("cuda", 1)
    print(f"meter: {meter.note or 'NVML ' + meter.power_field_used + ' power'}")
    start = time.perf_counter()
    store_path = args.store or args.out / "stores" / f"{name}.sqlite"
    store_path.parent.mkdir(parents=True, exist_ok=True)
    store_path.unlink(missing_ok=True)  # a fresh profile each run; the report reads it
    with Store(store_path) as store:
        # run_profile closes the backend when done; the held-out queries reuse a fresh one.
        run = run_profile(
            store,
            spec,
            stack_record,
            backend,
            {},
            grid,
            meter=meter,
            min_energy_window_s=args.min_energy_window,
            warmup_s=args.warmup_s,
            device=device_description(gpu=args.device != "cpu" and cuda_device_name() is not None),
        )
        profile_seconds = time.perf_counter() - start
        points = store.points(run.id)
        info = run.backend_info
    model = fit_cost_model(points, model=spec.name)
    metered = points.energy_j.notna().all()
    energy_model = (
        fit_cost_model(points, quantity="energy_j", denoise="median", model=spec.name)
        if metered
        else None
    )
    per_p = {row["prompt_tokens"]: row["r2"] for row in model.fit["per_prompt"]}
    print(f"profile: {len(points)} points in {profile_seconds:.1f} s (init included)")
    for p, r2 in per_p.items():
        print(f"  p={p:5d}  PE={model.prompt_encoding_at(p):.5f} s  R²={r2:.6f}")
    print(f"  g = {model.per_output_token * 1e3:.4f} ms/token")

    # Queries never profiled: random sizes within the profiled range, measured directly.
    rng = np.random.default_rng(7)
    max_p, max_o = max(grid.prompt_sizes), max(grid.output_sizes)
    queries = [
        Point(int(rng.integers(1, max_p + 1)), int(rng.integers(2, max_o + 1)), 1, 0)
        for _ in range(args.queries)
    ]
    check = get_backend(args.backend, device=args.device)
    if queries:
        check.prepare(spec)
    rows = []
    overhead_rows = []
    try:
        if metered:
            meter.start()
        for q in queries:
            if metered:
                (_, measured), *_ = measure_point(check, q, [0], meter, args.min_energy_window)
            else:
                measured = check.measure(q)
            window = measured.extra if metered else {}
            rows.append(
                {
                    "prompt_tokens": q.prompt_tokens,
                    "output_tokens": q.output_tokens,
                    "measured_s": measured.runtime_s,
                    "estimate_s": float(model.predict(q.prompt_tokens, q.output_tokens)),
                    "measured_j": measured.energy_j,
                    "energy_repeats": measured.extra.get("energy_window_runs"),
                    "integrated_j": window.get("energy_integrated_j"),
                    "window_s": window.get("energy_window_s"),
                    "estimate_j": float(energy_model.predict(q.prompt_tokens, q.output_tokens))
                    if energy_model
                    else None,
                }
            )
        if metered:
            # Metering overhead: the same queries with the sampler running and stopped, in
            # alternating order so drift of the card falls on both alike.
            for i, q in enumerate(queries[:12]):
                for sampler_on in (i % 2 == 0, i % 2 == 1):
                    (meter.start if sampler_on else meter.stop)()
                    overhead_rows.append((sampler_on, check.measure(q).runtime_s))
            meter.stop()
    finally:
        check.close()
    held = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["measured_s", "estimate_s"])
    held["error_pct"] = 100 * (held.estimate_s - held.measured_s) / held.measured_s
    mape = float(held.error_pct.abs().mean())
    max_err = float(held.error_pct.abs().max())
    print(f"held-out queries: MAPE {mape:.2f}%, max {max_err:.2f}%")
    energy_result: dict[str, object] = {"metered": bool(metered), "meter_note": meter.note}
    if metered:
        energy_result["phases"] = phase_summary(points)
    if metered and energy_model is not None and len(held):
        # A window the counter did not see move reads 0 J: report how many, leave them out.
        read = held[held.measured_j > 0]
        held["energy_error_pct"] = 100 * (read.estimate_j - read.measured_j) / read.measured_j
        long = held[(held.window_s >= 1.0) & (held.energy_repeats == 1)]
        window_j = long.measured_j
        agreement = 100 * (long.integrated_j - window_j).abs() / window_j
        timing = pd.DataFrame(overhead_rows, columns=["sampler_on", "runtime_s"])
        on = timing[timing.sampler_on].runtime_s.sum()
        off = timing[~timing.sampler_on].runtime_s.sum()
        energy_result.update(
            power_field=meter.power_field_used,
            idle_w=meter.idle_w,
            energy_per_output_token_j=energy_model.per_output_token,
            energy_prompt_encoding_j=dict(
                zip(map(str, energy_model.prompt_sizes), energy_model.prompt_encoding, strict=True)
            ),
            energy_fit=energy_model.fit,
            energy_model_mape=float(held.energy_error_pct.abs().mean()),
            energy_windows_read_zero=int((held.measured_j <= 0).sum()),
            min_energy_window_s=args.min_energy_window,
            energy_model_max_error_pct=float(held.energy_error_pct.abs().max()),
            counter_vs_integrated_pct=float(agreement.mean()) if len(long) else None,
            counter_vs_integrated_max_pct=float(agreement.max()) if len(long) else None,
            counter_vs_integrated_windows=len(long),
            meter_overhead_pct=float(100 * (on - off) / off),
        )
        print(
            f"energy model MAPE {energy_result['energy_model_mape']:.2f}%; counter vs "
            f"integrated {energy_result['counter_vs_integrated_pct']}% over {len(long)} "
            f"windows; meter overhead {energy_result['meter_overhead_pct']:.2f}%"
        )

    pe_table3 = [float(model.prompt_encoding_at(p)) for p in (512, 1024, 1536)]
    truncated = None
    if spec is not full:
        scale = full.num_layers / (args.tp * spec.num_layers)
        truncated = {
            "layers_profiled": spec.num_layers,
            "layers_full": full.num_layers,
            "tp": args.tp,
            "scale": scale,
            "pe_full_tp_s": [scale * pe for pe in pe_table3],
            "g_full_tp_s": scale * model.per_output_token,
            "note": f"{spec.num_layers} of {full.num_layers} layers on one GPU, scaled by "
            f"layers/(tp*profiled) = {scale:.3f}: ideal tensor parallelism over {args.tp} "
            "GPUs, all-reduce time not included",
        }
        print(f"truncated: {truncated}")
    table3 = None
    if full.name in PAPER_TABLE3:
        paper_pe, paper_g = PAPER_TABLE3[full.name]
        table3 = {
            "pe_s": pe_table3,
            "g_s": model.per_output_token,
            "paper_idealized_a100_megatron_pe_s": list(paper_pe),
            "paper_idealized_a100_megatron_g_s": paper_g,
            "note": "paper: Megatron on A100s (its Table 3); here: this engine on this GPU",
        }
        if truncated is not None:  # compare the full depth, scaled as stated
            table3["pe_s"], table3["g_s"] = truncated["pe_full_tp_s"], truncated["g_full_tp_s"]
            table3["note"] += "; " + truncated["note"]
        print(f"Table 3 ({spec.name}): {table3}")
    result = {
        "model": spec.name,
        "truncated": truncated,
        "backend": args.backend,
        "backend_info": info,
        "grid": grid.to_dict(),
        "profile_wall_s": profile_seconds,
        "thermal_warmup": info.get("thermal_warmup"),
        "r2_per_prompt": {str(p): r2 for p, r2 in per_p.items()},
        "prompt_encoding_s": dict(
            zip(map(str, model.prompt_sizes), model.prompt_encoding, strict=True)
        ),
        "per_output_token_s": model.per_output_token,
        "fit": model.fit,
        "heldout_mape_pct": mape,
        "heldout_max_error_pct": max_err,
        "heldout_queries": held.to_dict(orient="records"),
        "paper_table3": table3,
        **energy_result,
    }
    rows_md = [
        ("profile wall time (init included)", f"{profile_seconds:.1f} s", "≤ 120 s"),
        ("min per-p R²", f"{min(per_p.values()):.6f}", "≥ 0.9999"),
        ("g (per output token)", f"{model.per_output_token * 1e3:.3f} ms", "-"),
        *((f"PE({p})", f"{model.prompt_encoding_at(p) * 1e3:.2f} ms", "-") for p in per_p),
    ]
    if len(held):
        rows_md += [
            (f"held-out MAPE ({len(held)} queries)", f"{mape:.2f}%", "≤ 2%"),
            ("held-out max error", f"{max_err:.2f}%", "≤ 5%"),
        ]
    if truncated is not None:
        rows_md.append(("truncated profile", truncated["note"], "-"))
    if table3 is not None:
        ours = " / ".join(f"{v:.3f}" for v in table3["pe_s"])
        paper = " / ".join(f"{v:.3f}" for v in table3["paper_idealized_a100_megatron_pe_s"])
        rows_md += [
            ("PE(512/1024/1536): here vs paper Table 3 (A100, Megatron)", f"{ours} s", paper),
            ("g: here vs paper Table 3 (A100, Megatron)", f"{table3['g_s']:.4f} s", str(paper_g)),
        ]
    if metered:
        phases = energy_result["phases"]
        rows_md += [
            ("prefill share of energy, longest o", f"{phases['prefill_share_o_max']:.1%}", "-"),
            ("decode J/token from the phase split", f"{phases['decode_j_per_token']:.3f} J", "-"),
        ]
    if metered and energy_model is not None and len(held):
        rows_md += [
            ("energy per output token", f"{energy_model.per_output_token:.3f} J", "-"),
            ("energy model held-out MAPE", f"{energy_result['energy_model_mape']:.2f}%", "≤ 3%"),
            (
                f"counter vs integrated power ({len(long)} windows ≥ 1 s)",
                _pct(energy_result["counter_vs_integrated_pct"]),
                "≤ 3%",
            ),
            ("metering overhead on runtime", f"{energy_result['meter_overhead_pct']:.2f}%", "< 1%"),
        ]
    path = write_result(name, result, rows_md, args.out)
    print(f"written to {path}")


def _pct(value: object) -> str:
    return "no window long enough" if value is None else f"{value:.2f}%"


def phase_summary(points: pd.DataFrame) -> dict[str, float]:
    """Prefill vs decode energy from the profile's phase split (extra of each point)."""
    extra = points.extra_json.map(json.loads)
    frame = pd.DataFrame(
        {
            "output_tokens": points.output_tokens,
            "energy_j": points.energy_j,
            "prefill_j": extra.map(lambda e: e.get("energy_prefill_j")),
            "per_token_j": extra.map(lambda e: e.get("energy_per_decode_token_j")),
        }
    ).dropna(subset=["prefill_j"])
    longest = frame[frame.output_tokens == frame.output_tokens.max()]
    return {
        "prefill_share_o_max": float((longest.prefill_j / longest.energy_j).mean()),
        "decode_j_per_token": float(longest.per_token_j.median()),
        "prefill_j_by_prompt": {
            str(p): float(v)
            for p, v in frame.groupby(points.prompt_tokens).prefill_j.median().items()
        },
    }


if __name__ == "__main__":
    main()
