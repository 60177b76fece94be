"""A full profile of a model on a backend, then queries never profiled against the estimate.

Issue goals for LLaMA-7B on the engine (H100/H200): every per-p R² ≥ 0.9999, wall time
including model initialisation ≤ 2 min, and on 50 random (p, o) queries measured directly:
MAPE ≤ 2%, max error ≤ 5%.

Run: python benchmarks/profile_bench.py [--model llama-7b] [--backend engine] [--out DIR]
Writes <out>/profile_<backend>.json and .md with device, date and commit.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import DOCS, write_result
from infermeter.backends import get_backend
from infermeter.backends.base import Point
from infermeter.catalog import get_spec
from infermeter.fit import fit_cost_model
from infermeter.profile import ProfileGrid, run_profile
from infermeter.store import Store


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
    args = parser.parse_args()

    spec = get_spec(args.model)
    grid = ProfileGrid(args.prompt_sizes, args.output_sizes, (1,), args.trials)
    backend = get_backend(args.backend, device=args.device)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, Store(Path(tmp) / "bench.sqlite") as store:
        # run_profile closes the backend when done; the held-out queries reuse a fresh one.
        run = run_profile(store, spec, {"backend": args.backend}, backend, {}, grid)
        profile_seconds = time.perf_counter() - start
        points = store.points(run.id)
        info = run.backend_info
    model = fit_cost_model(points, model=spec.name)
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
    check.prepare(spec)
    rows = []
    try:
        for q in queries:
            measured = check.measure(q)
            estimate = float(model.predict(q.prompt_tokens, q.output_tokens))
            rows.append((q.prompt_tokens, q.output_tokens, measured.runtime_s, estimate))
    finally:
        check.close()
    held = pd.DataFrame(
        rows, columns=["prompt_tokens", "output_tokens", "measured_s", "estimate_s"]
    )
    held["error_pct"] = 100 * (held.estimate_s - held.measured_s) / held.measured_s
    mape = float(held.error_pct.abs().mean())
    max_err = float(held.error_pct.abs().max())
    print(f"held-out queries: MAPE {mape:.2f}%, max {max_err:.2f}%")

    result = {
        "model": spec.name,
        "backend": args.backend,
        "backend_info": info,
        "grid": grid.to_dict(),
        "profile_wall_s": profile_seconds,
        "r2_per_prompt": {str(p): r2 for p, r2 in per_p.items()},
        "prompt_encoding_s": dict(
            zip(map(str, model.prompt_sizes), model.prompt_encoding, strict=True)
        ),
        "per_output_token_s": model.per_output_token,
        "fit": model.fit,
        "heldout_mape_pct": mape,
        "heldout_max_error_pct": max_err,
        "heldout_queries": held.to_dict(orient="records"),
    }
    rows_md = [
        ("profile wall time (init included)", f"{profile_seconds:.1f} s", "≤ 120 s"),
        ("min per-p R²", f"{min(per_p.values()):.6f}", "≥ 0.9999"),
        ("g (per output token)", f"{model.per_output_token * 1e3:.3f} ms", "-"),
        *((f"PE({p})", f"{model.prompt_encoding_at(p) * 1e3:.2f} ms", "-") for p in per_p),
        (f"held-out MAPE ({len(held)} queries)", f"{mape:.2f}%", "≤ 2%"),
        ("held-out max error", f"{max_err:.2f}%", "≤ 5%"),
    ]
    path = write_result(f"profile_{args.backend}", result, rows_md, args.out)
    print(f"written to {path}")


if __name__ == "__main__":
    main()
