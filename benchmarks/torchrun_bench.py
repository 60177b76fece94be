"""Ranks started by torchrun against the engine's own launcher, as a user runs both (issue 21).

Needs two GPUs. Two command lines, each in a process of its own, on the same small grid and
into stores of their own (under --out/stores/torchrun):

1. spawn:    infermeter profile llama-13b --tp 2 --prompt-sizes 1,129 --output-sizes 1,32,128
             --trials 3 --validate 0 --warmup-s 5 (the engine spawns its two ranks itself)
2. torchrun: torchrun --nproc-per-node 2 -m infermeter profile llama-13b --tp 2 (the same
             options; torchrun starts both ranks, rank 0 drives and writes the store)

A third step runs the spawn command again (skip it with --once). Figures, torchrun against
the mean of the two spawn runs: the fitted g (s/token) and PE at each prompt size; every point's
fastest trial (median and largest gap); the noise they are judged by, the larger of each run's
own spread between the trials of a point (median over points) and the largest gap between the
two spawn runs (the same launcher twice: card state and order); energy per output token of the
fitted energy models; how many points produced the same tokens (tokens_sha); and what the
torchrun run recorded of its launcher (torchrun, 1 node, 2 ranks). Goal: every gap within the
noise, energy within 2%.

Run on two H200s (about 4 minutes; each step's limit is 240 s):
  NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 \\
  INFERMETER_COMMIT=<sha> PYTHONPATH=src python benchmarks/torchrun_bench.py
Writes docs/benchmarks/torchrun.json and torchrun.md (device, date, commit; --out DIR to
change). CPU smoke run of the plumbing (no energy): PYTHONPATH=src python
benchmarks/torchrun_bench.py --quick (tiny-llama on gloo, into /tmp/infermeter-torchrun-quick).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _command import infermeter_command, run_command, shown
from _record import DOCS, write_result
from infermeter.model.fit import FitPolicy
from infermeter.model.fitted import fit_run
from infermeter.store.db import Store

STEP_LIMIT_S = 240
NVLS_OFF = ("NCCL_NVLS_ENABLE", "TORCH_SYMM_MEM_DISABLE_MULTICAST", "NVSHMEM_DISABLE_NVLS")


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--model", default="llama-13b")
    parser.add_argument("--quick", action="store_true", help="tiny-llama on the CPU (gloo)")
    parser.add_argument("--once", action="store_true", help="no second spawn run")
    args = parser.parse_args()
    args.options = ["--prompt-sizes", "1,129", "--output-sizes", "1,32,128", "--trials", "3",
                    "--validate", "0", "--warmup-s", "5"]  # fmt: skip
    if args.quick:
        args.model, args.out = "tiny-llama", Path("/tmp/infermeter-torchrun-quick")
        args.options = ["--prompt-sizes", "1,9", "--output-sizes", "1,8,16", "--trials", "3",
                        "--validate", "0", "--device", "cpu"]  # fmt: skip
    args.stores = args.out / "stores" / "torchrun"
    args.stores.mkdir(parents=True, exist_ok=True)
    return args


def step(args: argparse.Namespace, name: str) -> dict[str, Any]:
    store = args.stores / f"{name}.sqlite"
    store.unlink(missing_ok=True)
    profile = ["profile", args.model, "--tp", "2", *args.options, "--store", str(store)]
    command = infermeter_command(*profile)
    if name == "torchrun":  # torchrun --nproc-per-node 2 -m infermeter profile ...
        command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
                   *command[1:]]  # fmt: skip
    ran = run_command(command, timeout_s=STEP_LIMIT_S)
    ran.pop("output")
    if name == "torchrun":
        ran["command"] = "torchrun --nproc-per-node 2 -m " + shown(infermeter_command(*profile))
    print(f"{name}: exit {ran['exit_code']} in {ran['wall_s']:.1f} s", flush=True)
    if ran["exit_code"] != 0:
        print(ran["output_tail"], flush=True)
        return {"run": ran}
    with Store(store) as db:
        run_id = db.latest_run_id()
        points = db.points(run_id)
        info = db.get_run(run_id).backend_info
        models = fit_run(db, run_id, FitPolicy())
    ok = points[points.status == "ok"]
    extra = ok.extra_json.map(json.loads)
    shape = ["prompt_tokens", "output_tokens"]
    fastest = ok.groupby(shape).runtime_s.min()
    spread = ok.groupby(shape).runtime_s.agg(lambda s: (s.max() - s.min()) / s.min())
    runtime = next(m for m in models if m.quantity == "runtime_s")
    energy = next((m for m in models if m.quantity == "energy_j"), None)
    return {
        "run": ran,
        "fastest_s": {f"{p},{o}": float(v) for (p, o), v in fastest.items()},
        "trial_spread_median": float(spread.median()),
        "g_s_per_token": runtime.per_output_token,
        "pe_s": dict(zip(map(str, runtime.prompt_sizes), runtime.prompt_encoding, strict=True)),
        "j_per_output_token": energy.per_output_token if energy is not None else None,
        "tokens": {
            f"{r.prompt_tokens},{r.output_tokens},{r.trial}": e.get("tokens_sha")
            for r, e in zip(ok.itertuples(), extra, strict=True)
        },
        "launcher": {k: info.get(k) for k in ("launcher", "nodes", "ranks", "tp")},
    }


def gap(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or a == 0 else 100.0 * (b - a) / a


def main() -> None:
    args = parse()
    # spawn, torchrun, then spawn again: the two spawn runs say how far one launcher's runs
    # lie apart (card state, order), the noise torchrun's gap is judged by.
    spawn, torchrun = step(args, "spawn"), step(args, "torchrun")
    again = step(args, "spawn_again") if not args.once else None
    result: dict[str, Any] = {"model": args.model, "spawn": spawn, "torchrun": torchrun,
                              "spawn_again": again}  # fmt: skip
    runs = [spawn, torchrun] + ([again] if again is not None else [])
    if any("fastest_s" not in r for r in runs):
        write_result("torchrun", result, [("every command ran", "no", "yes")], args.out)
        sys.exit(1)
    shapes = sorted(set(spawn["fastest_s"]) & set(torchrun["fastest_s"]))

    def gaps_between(a: dict[str, Any], b: dict[str, Any]) -> np.ndarray:
        return np.array([gap(a["fastest_s"][s], b["fastest_s"][s]) for s in shapes])

    gaps = gaps_between(spawn, torchrun)
    if again is not None:
        # torchrun against the mean of the two spawn runs, beside their own gap
        mean = {"fastest_s": {s: (spawn["fastest_s"][s] + again["fastest_s"][s]) / 2
                              for s in shapes}}  # fmt: skip
        gaps = gaps_between(mean, torchrun)
        rerun = gaps_between(spawn, again)
    trial_noise = 100.0 * max(r["trial_spread_median"] for r in runs)
    noise = trial_noise
    if again is not None:
        noise = max(trial_noise, float(np.max(np.abs(rerun))))
    same = [k for k in spawn["tokens"] if spawn["tokens"][k] == torchrun["tokens"].get(k)]
    energy_gap = gap(spawn["j_per_output_token"], torchrun["j_per_output_token"])
    g_spawn = spawn["g_s_per_token"]
    if again is not None:
        g_spawn = (spawn["g_s_per_token"] + again["g_s_per_token"]) / 2
    result.update(
        point_gap_pct={s: float(g) for s, g in zip(shapes, gaps, strict=True)},
        point_gap_median_pct=float(np.median(gaps)),
        point_gap_max_abs_pct=float(np.max(np.abs(gaps))),
        trial_spread_pct=trial_noise,
        spawn_rerun_gap_pct=(
            None if again is None else {s: float(g) for s, g in zip(shapes, rerun, strict=True)}
        ),
        spawn_rerun_gap_max_abs_pct=None if again is None else float(np.max(np.abs(rerun))),
        noise_pct=noise,
        g_gap_pct=gap(g_spawn, torchrun["g_s_per_token"]),
        g_spawn_rerun_gap_pct=(
            None if again is None else gap(spawn["g_s_per_token"], again["g_s_per_token"])
        ),
        energy_gap_pct=energy_gap,
        same_tokens=f"{len(same)}/{len(spawn['tokens'])}",
        nvls_off={k: os.environ.get(k) for k in NVLS_OFF},
    )

    def pct(v: float | None) -> str:
        return "n/a" if v is None else f"{v:+.2f}%"

    rows = [
        ("commands", f"{spawn['run']['command']} / {torchrun['run']['command']}", ""),
        ("wall s (spawn / torchrun)",
         f"{spawn['run']['wall_s']:.1f} / {torchrun['run']['wall_s']:.1f}", ""),
        ("g s/token (spawn mean / torchrun)",
         f"{g_spawn:.6g} / {torchrun['g_s_per_token']:.6g} "
         f"({pct(result['g_gap_pct'])})", f"within {noise:.2f}%"),
        ("fastest trial per point, torchrun vs spawn (mean of both spawn runs)",
         f"median {pct(result['point_gap_median_pct'])}, "
         f"largest {result['point_gap_max_abs_pct']:.2f}%", f"within {noise:.2f}%"),
        ("noise: trial spread per point (median, largest run)", f"{trial_noise:.2f}%", ""),
        ("noise: spawn run against spawn run again (largest point gap; g)",
         "n/a" if again is None else
         f"{result['spawn_rerun_gap_max_abs_pct']:.2f}%; {pct(result['g_spawn_rerun_gap_pct'])}",
         ""),
        ("energy J/output token (spawn / torchrun)",
         f"{spawn['j_per_output_token']} / {torchrun['j_per_output_token']} "
         f"({pct(energy_gap)})", "within 2%"),
        ("points with the same tokens", result["same_tokens"], ""),
        ("torchrun run's launcher record", json.dumps(torchrun["launcher"]),
         '{"launcher": "torchrun", "nodes": 1, "ranks": 2, "tp": 2}'),
    ]  # fmt: skip
    print(write_result("torchrun", result, rows, args.out), flush=True)


if __name__ == "__main__":
    main()
