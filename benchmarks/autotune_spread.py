"""Do a profile and a later process run the same decode kernels? Tiles tuned per process or kept.

The engine's Triton GEMV (and MoE) kernels are autotuned: the first call of each shape times a
dozen tiles and keeps the fastest. Timed in each fresh process, near-ties go either way, so two
processes can run different tiles, and a profile's decode time need not be a later process's.
Kept (the default: Triton's on-disk cache), every process that uses the same cache folder
runs the first process's choice.

For each way (INFERMETER_KEEP_TILES=0: tuned per process; kept: one Triton cache shared by the
processes, empty at the start; either way without the caller's TRITON_CACHE_AUTOTUNING), one
after the other, N fresh processes each build the model on the engine and time
each query shape (after one untimed call, the minimum of 5 wall-clock trials of the whole
generate() call); the figures are the spread of those minima across processes (largest / smallest
− 1, and the std, in %) and how many different sets of tiles the processes chose for the
autotuned GEMV kernels (looped, whole rows, the MoE grouped GEMM; the records made before
this counted the looped one only).

Run: python benchmarks/autotune_spread.py [--model llama-7b] [--processes 4]
         [--shapes 512x256,1500x3]
Writes docs/benchmarks/autotune_spread.json and .md with device, date and commit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import DOCS, write_result
from _timing import generate_timer

WAYS = {"tuned per process": {"INFERMETER_KEEP_TILES": "0"}, "kept": {}}
CHOICE_ENV = ("INFERMETER_KEEP_TILES", "TRITON_CACHE_AUTOTUNING", "TRITON_CACHE_DIR")


def _tuned_kernels() -> dict[str, Any]:
    """The engine's autotuned GEMV kernels (looped, whole rows, MoE grouped GEMM) by name."""
    from infermeter.engine import gemv_kernels, kernels, moe_kernels

    return {
        "small_linear": kernels._small_linear,
        "rows_gemv": gemv_kernels._rows_gemv,
        "grouped_gemm": moe_kernels._grouped_gemm,
    }


def one_process(model: str, shapes: list[tuple[int, int]]) -> dict[str, Any]:
    """Build `model` on the engine, time each (p, o); the GEMV tiles this process ran."""

    from infermeter.backends.engine import EngineBackend
    from infermeter.engine import kernels
    from infermeter.spec.catalog import resolve_spec

    spec = resolve_spec(model)
    backend = EngineBackend(device="cuda")
    backend.prepare(spec)
    engine = backend._engine
    rng = np.random.default_rng(1)
    times: dict[str, float] = {}

    call = generate_timer(engine, "cuda")

    for p, o in shapes:
        prompt = rng.integers(0, spec.vocab_size, p).tolist()
        call(prompt, o)  # the shape's setup, untimed
        times[f"{p}x{o}"] = min(call(prompt, o) for _ in range(5))
    tiles = {  # key: kernel, then its shape key and the dtypes, as Triton's autotuner keys it
        f"{name} {' '.join(map(str, key))}": (
            " ".join(f"{k}={v}" for k, v in sorted(cfg.kwargs.items()))
            + f" w{cfg.num_warps} s{cfg.num_stages}"
        )
        for name, tuner in _tuned_kernels().items()
        for key, cfg in tuner.cache.items()
    }
    ran = engine.describe()
    backend.close()
    return {
        "times_s": times,
        "tiles": tiles,
        "note": kernels.tiles_note(),
        "one_token_gemv": ran.get("one_token_gemv"),
        "moe_batch1_gemv": ran.get("moe_batch1_gemv"),
    }


def spread(values: list[float]) -> dict[str, float]:
    arr = np.array(values)
    return {
        "spread_pct": float(100 * (arr.max() / arr.min() - 1)),
        "std_pct": float(100 * arr.std(ddof=1) / arr.mean()) if len(arr) > 1 else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-7b")
    parser.add_argument("--processes", type=int, default=4)
    parser.add_argument("--shapes", default="512x256,1500x3", help="PxO,... query shapes")
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    if args.one:
        print("RESULT " + json.dumps(one_process(args.model, shapes)), flush=True)
        return
    if args.processes < 2:
        raise SystemExit("--processes: at least 2 (a spread needs two processes)")
    ways: dict[str, Any] = {}
    rows = []
    for way, extra in WAYS.items():
        runs = []
        with tempfile.TemporaryDirectory() as cache:
            for i in range(args.processes):
                env = {k: v for k, v in os.environ.items() if k not in CHOICE_ENV} | extra
                if way == "kept":
                    env["TRITON_CACHE_DIR"] = cache  # empty at the start: the first process tunes
                command = [sys.executable, __file__, "--one", "--model", args.model,
                           "--shapes", args.shapes]  # fmt: skip
                done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
                (result,) = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
                runs.append(json.loads(result.removeprefix("RESULT ")))
                print(f"{way}, process {i + 1}: {runs[-1]['times_s']}", flush=True)
        per_shape = {
            shape: {"times_s": [r["times_s"][shape] for r in runs],
                    **spread([r["times_s"][shape] for r in runs])}
            for shape in runs[0]["times_s"]
        }  # fmt: skip
        distinct = len({json.dumps(r["tiles"], sort_keys=True) for r in runs})
        ways[way] = {"shapes": per_shape, "distinct_tile_sets": distinct, "runs": runs}
        for shape, s in per_shape.items():
            rows.append((
                f"{args.model}, p x o = {shape}, {way}: minimum of 5 trials across "
                f"{args.processes} processes",
                f"spread {s['spread_pct']:.2f} %, std {s['std_pct']:.2f} % "
                f"({min(s['times_s']) * 1e3:.2f}-{max(s['times_s']) * 1e3:.2f} ms); "
                f"{distinct} different sets of GEMV kernel tiles", "-",
            ))  # fmt: skip
    import triton

    result = {"model": args.model, "processes": args.processes, "shapes": args.shapes,
              "triton": triton.__version__, "ways": ways}  # fmt: skip
    write_result("autotune_spread", result, rows, args.out)


if __name__ == "__main__":
    main()
