"""Energy under tensor parallelism and on a chosen GPU, as a user runs it (issue 17).

Needs two GPUs. Each step is a command line a user types, run in a process of its own; the
steps share nothing but their stores (under --out/stores/meter_tp):

1. tp2:     infermeter profile llama-13b --tp 2 --prompt-sizes 1,129 --output-sizes 1,32,128
            --trials 2 --validate 0 --warmup-s 5 --output tp2.json
2. shards2: infermeter energy llama-13b --shards 2 --batch-sizes 1 --max-lengths 128
            --prompts 8 --dataset gsm8k --sampling greedy --warmup-s 5 (greedy, as the
            profile decodes: top-p sampling costs each step a little more)
3. cuda1:   infermeter profile gpt2 --device cuda:1 --prompt-sizes 1,129 --output-sizes 1,32
            --trials 1 --validate 0 --warmup-s 2

Figures:
- tp2_profile_j_per_token: step 1's energy model priced on the queries step 2 answered (each
  response's prompt and output tokens), over their output tokens; shards2_j_per_token: step
  2's J/token (the counters of both GPUs over each batch's timed generation, over the tokens
  generated); tp2_vs_shards2_pct, their gap (goal: within 5%). Beside them: how many of step
  1's points have energy, the per-GPU split, and whether an energy model was fitted.
- cuda1_metered_gpu: the GPU the meter of step 3 read (from its run's record), the device
  name it was priced as, and every GPU's energy counter read by this script around the step
  (mean W over it, by NVML index and UUID): the metered GPU's is the one that worked.

Run on two H200s (about 3-4 minutes; the steps' own limits add up to 580 s):
  NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1 \\
  INFERMETER_COMMIT=<sha> PYTHONPATH=src python benchmarks/meter_tp_bench.py --out DIR
Writes DIR/meter_tp.json and meter_tp.md (device, date, commit; default docs/benchmarks).
`--steps tp2,shards2` runs some; `--append` merges them into the record already in DIR.
CPU smoke run of the plumbing (no energy, no cuda:1): PYTHONPATH=src python
benchmarks/meter_tp_bench.py --quick (tiny-llama, into /tmp/infermeter-meter-tp-quick).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _command import infermeter_command, run_command
from _record import DOCS, write_result
from infermeter.measure.meter import load_nvml
from infermeter.model.cost_model import models_from_dict
from infermeter.store.db import Store
from infermeter.store.energy import energy_configs, energy_responses

STEPS = ("tp2", "shards2", "cuda1")
MODEL = "llama-13b"
EXTRA: tuple[str, ...] = ()  # --quick: ("--device", "cpu")
PROMPTS = ("--prompt-sizes", "1,129")
NVLS_OFF = {
    "NCCL_NVLS_ENABLE": "0",
    "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1",
    "NVSHMEM_DISABLE_NVLS": "1",
}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--steps", default=",".join(STEPS))
    parser.add_argument("--append", action="store_true", help="merge into the record in --out")
    parser.add_argument("--quick", action="store_true", help="tiny-llama on the CPU")
    args = parser.parse_args()
    global MODEL, EXTRA
    args.steps = [s for s in args.steps.split(",") if s]
    if args.quick:
        MODEL, EXTRA = "tiny-llama", ("--device", "cpu")
        args.out = Path("/tmp/infermeter-meter-tp-quick")
        args.steps = [s for s in args.steps if s != "cuda1"]
    if set(args.steps) - set(STEPS):
        parser.error(f"steps are {', '.join(STEPS)}")
    args.stores = args.out / "stores" / "meter_tp"
    return args


def step(name: str, args: list[str], timeout_s: float) -> dict[str, Any]:
    print(f"$ infermeter {' '.join(args)}", flush=True)
    done = run_command(infermeter_command(*args), timeout_s=timeout_s)
    print(done["output_tail"][-1500:], flush=True)
    if done["exit_code"] != 0:
        raise SystemExit(f"step {name} failed ({done['exit_code']}):\n{done['output_tail']}")
    return {"command": done["command"], "wall_s": round(done["wall_s"], 1)}


def only_run(store: Path) -> Any:
    with Store(store) as db:
        runs = db.runs()
        return db.get_run(int(runs.id.iloc[-1]))


def tp2(stores: Path) -> dict[str, Any]:
    store, model = stores / "tp2.sqlite", stores / "tp2.json"
    ran = step(
        "tp2",
        [
            *("profile", MODEL, "--tp", "2", *PROMPTS, "--output-sizes", "1,32,128"),
            *("--trials", "2", "--validate", "0", "--warmup-s", "5"),
            *("--output", str(model), "--store", str(store), *EXTRA),
        ],
        timeout_s=240,
    )
    run = only_run(store)
    with Store(store) as db:
        points = db.points(run.id)
    extra = points.extra_json.map(json.loads)
    per_gpu = np.array([e.get("energy_per_gpu_j") or [np.nan, np.nan] for e in extra])
    energy_file = model.with_name(model.stem + ".energy" + model.suffix)
    return {
        "tp2": {
            **ran,
            "run": run.id,
            "points": len(points),
            "points_with_energy": int(points.energy_j.notna().sum()),
            "energy_model_fitted": energy_file.exists(),
            "gpu_share": (np.nansum(per_gpu, axis=0) / np.nansum(per_gpu)).round(4).tolist(),
            "meter": run.backend_info.get("meter"),
            "energy_model": str(energy_file),
        }
    }


def shards2(stores: Path) -> dict[str, Any]:
    store = stores / "shards2.sqlite"
    ran = step(
        "shards2",
        [
            *("energy", MODEL, "--shards", "2", "--batch-sizes", "1", "--max-lengths", "128"),
            *("--prompts", "8", "--dataset", "gsm8k", "--sampling", "greedy"),
            *("--warmup-s", "5", "--store", str(store), *EXTRA),
        ],
        timeout_s=200,
    )
    run = only_run(store)
    with Store(store) as db:
        row = energy_configs(db, run.id).iloc[0]
        responses = energy_responses(db, run.id)
    return {
        "shards2": {
            **ran,
            "run": run.id,
            "j_per_token": _float(row.j_per_token),
            "watts": _float(row.watts),
            "tokens_per_s": _float(row.tokens_per_s),
            "detail": row.detail,
            "meter": run.backend_info.get("meter"),
            "queries": responses[["prompt_tokens", "output_tokens"]].to_dict("list"),
        }
    }


def _float(value: Any) -> float | None:
    return None if value is None or value != value else float(value)


def compare(record: dict[str, Any], stores: Path) -> dict[str, Any]:
    """The tp2 profile's energy model priced on the queries the shards2 run answered."""
    if "tp2" not in record or "shards2" not in record:
        return {}
    if not record["tp2"]["energy_model_fitted"] or record["shards2"]["j_per_token"] is None:
        return {}  # nothing metered (a CPU run)
    data = json.loads(Path(record["tp2"]["energy_model"]).read_text())
    energy = next(m for m in models_from_dict(data) if m.batch_size == 1)
    queries = record["shards2"]["queries"]
    p, o = np.array(queries["prompt_tokens"]), np.array(queries["output_tokens"])
    profile = float(energy.predict(p, o).sum() / o.sum())
    measured = record["shards2"]["j_per_token"]
    return {
        "tp2_profile_j_per_token": profile,
        "shards2_j_per_token": measured,
        "tp2_vs_shards2_pct": 100 * (profile / measured - 1),
    }


def counters_j(nvml: Any) -> dict[str, float]:
    """Every GPU's energy counter (J), keyed by NVML index and UUID."""
    out = {}
    for index in range(nvml.nvmlDeviceGetCount()):
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        uuid = nvml.nvmlDeviceGetUUID(handle)
        key = f"gpu{index} {uuid.decode() if isinstance(uuid, bytes) else uuid}"
        out[key] = nvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1000
    return out


def cuda1(stores: Path) -> dict[str, Any]:
    store = stores / "cuda1.sqlite"
    nvml, note = load_nvml()
    if nvml is None:
        raise SystemExit(f"the cuda:1 step reads NVML itself: {note}")
    before, started = counters_j(nvml), time.perf_counter()
    ran = step(
        "cuda1",
        [
            *("profile", "gpt2", "--device", "cuda:1", *PROMPTS, "--output-sizes", "1,32"),
            *("--trials", "1", "--validate", "0", "--warmup-s", "2", "--store", str(store)),
        ],
        timeout_s=140,
    )
    after, seconds = counters_j(nvml), time.perf_counter() - started
    run = only_run(store)
    with Store(store) as db:
        points = db.points(run.id)
    gpus = (run.backend_info.get("meter") or {}).get("gpus") or []
    return {
        "cuda1_metered_gpu": gpus[0] if len(gpus) == 1 else gpus,
        "cuda1": {
            **ran,
            "run": run.id,
            "priced_device": run.device,
            "accelerator": (run.stack.get("accelerator") or {}).get("name"),
            "points_with_energy": int(points.energy_j.notna().sum()),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "mean_w_by_counter": {
                key: round((after[key] - before[key]) / seconds, 1) for key in before
            },
        },
    }


def main() -> None:
    args = parse()
    for key, value in NVLS_OFF.items():
        os.environ.setdefault(key, value)
    args.stores.mkdir(parents=True, exist_ok=True)
    path = args.out / "meter_tp.json"
    record: dict[str, Any] = json.loads(path.read_text()) if args.append and path.exists() else {}
    for name in args.steps:
        for store in args.stores.glob(f"{name}.*"):
            store.unlink()  # a fresh run each time: never a resumed one
        record.update({"tp2": tp2, "shards2": shards2, "cuda1": cuda1}[name](args.stores))
    record.update(compare(record, args.stores))
    for key in ("device", "date", "commit"):
        record.pop(key, None)  # write_result stamps this run's own

    def fmt(key: str, digits: int = 4) -> str:
        value = record.get(key)
        return "-" if value is None else f"{value:.{digits}g}"

    gpu = record.get("cuda1_metered_gpu") or {}
    tp, one = record.get("tp2", {}), record.get("cuda1", {})
    rows = [
        ("tp2 profile J/token (its energy model on shards2's queries)",
         fmt("tp2_profile_j_per_token"), ""),
        ("shards2 J/token (energy --shards 2, batch 1)", fmt("shards2_j_per_token"), ""),
        ("gap", f"{fmt('tp2_vs_shards2_pct', 3)}%", "within ±5%"),
        ("tp2 points with energy",
         f"{tp.get('points_with_energy', '-')}/{tp.get('points', '-')}", "all"),
        ("tp2 energy split GPU 0 / GPU 1", str(tp.get("gpu_share", "-")), "both"),
        ("--device cuda:1 metered",
         f"NVML GPU {gpu.get('nvml_index', '-')} ({gpu.get('uuid', '-')})", "GPU 1"),
        ("--device cuda:1 priced as", str(one.get("accelerator", "-")), "GPU 1's"),
        ("mean W by counter during the cuda:1 step", str(one.get("mean_w_by_counter", "-")),
         "the metered GPU highest"),
    ]  # fmt: skip
    written = write_result("meter_tp", record, rows, args.out)
    print(f"wrote {written}", flush=True)


if __name__ == "__main__":
    main()
