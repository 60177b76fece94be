"""Words to Watts on the reference engine: energy per second, token and response of LLaMA.

The issue's benchmark: the LLaMA-7B spec (random weights, bf16) on one H100/H200, GSM8K and
Alpaca-format prompts (the bundled 175 seed tasks unless alpaca_data.json is in
$INFERMETER_DATA), batch 64/128/256 where they fit (the rest stored as infeasible, the paper's
Table II), max generation length 256/512/1024, and LLaMA-13B at batch 64 and length 256, run
through the `infermeter energy` command in a process of its own, as a user would. Every
configuration runs the same N sampled prompts; N defaults to 256 so that the whole script fits
about six minutes of device time (the paper's 4,096: --prompts 4096). Configurations are run
shortest length first, both datasets alike; any not started within --budget-s are listed as
skipped. With random weights no response stops early, so every response is max_len tokens long.

Also measured here, from this run's own windows: the NVML counter against integrated sampled
power over batch windows of at least 1 s (goal within 3%), and the meter's overhead on runtime
(the same batch timed with the sampler on and off, alternately; goal < 1%). The energy model's
held-out MAPE comes from docs/benchmarks/profile_engine.json when present (source recorded).

Run on a GPU:  PYTHONPATH=src python3 benchmarks/energy_bench.py [--out DIR] [--store PATH]
CPU smoke run: PYTHONPATH=src python3 benchmarks/energy_bench.py --quick (tiny models, 16
prompts, energy from the tests' fake NVML; written to /tmp/infermeter-energy-quick)
Writes <out>/energy.json and energy.md (device, date, commit) and the store (default
<out>/stores/energy.sqlite) with every configuration, response, batch window and power sample.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _command import infermeter_command, run_command
from _record import DOCS, write_result
from infermeter.backends.engine import EngineBackend
from infermeter.experiments.energy import EnergySweep, generate_batch, run_energy
from infermeter.measure.meter import Meter
from infermeter.spec.catalog import get_spec
from infermeter.store.db import Store
from infermeter.store.energy import energy_batches, energy_configs
from infermeter.store.provenance import cuda_device_name, device_description
from infermeter.workloads.datasets import load_workload
from infermeter.workloads.tokenizer import prompt_ids, tokenizer_for

TABLE_COLUMNS = [
    "model", "dataset", "batch", "max_len", "shards", "tokens_per_s", "words_per_s",
    "responses_per_s", "watts", "j_per_token", "j_per_response", "sm_util", "mem_util",
    "peak_mem_gb", "status", "detail",
]  # fmt: skip


def sizes(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(","))


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="llama-7b")
    parser.add_argument("--second-model", default="llama-13b")
    parser.add_argument("--second-batch", type=int, default=64)
    parser.add_argument("--second-length", type=int, default=256)
    parser.add_argument(
        "--cli-timeout-s", type=float, default=1800.0, help="for the second model's command"
    )
    parser.add_argument("--datasets", default="gsm8k,alpaca")
    parser.add_argument("--batch-sizes", type=sizes, default=(64, 128, 256))
    parser.add_argument("--max-lengths", type=sizes, default=(256, 512, 1024))
    parser.add_argument("--prompts", type=int, default=256, help="N per configuration")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--budget-s", type=float, default=240.0, help="for the first model")
    parser.add_argument("--overhead-pairs", type=int, default=3)
    parser.add_argument(
        "--warmup-s", type=float, default=30.0, help="load before the first configuration"
    )
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--store", type=Path, default=None)
    parser.add_argument("--resume", action="store_true", help="keep an existing store")
    parser.add_argument("--profile-json", type=Path, default=DOCS / "profile_engine.json")
    parser.add_argument("--quick", action="store_true", help="tiny models on the CPU")
    args = parser.parse_args()
    if args.quick:  # a smoke run of every step in seconds, never written over docs/
        args.model, args.second_model = "tiny-llama", "tiny-gpt2"
        args.batch_sizes, args.max_lengths = (4, 8), (8, 16)
        args.second_batch, args.second_length = 4, 8
        args.prompts, args.device, args.overhead_pairs = 16, "cpu", 1
        args.warmup_s = 0.5
        args.out = args.out or Path("/tmp/infermeter-energy-quick")
    args.out = args.out or DOCS
    args.store = args.store or args.out / "stores" / "energy.sqlite"
    return args


def log(text: str) -> None:
    print(text, flush=True)


def fake_meter() -> Meter:
    """--quick on a CPU: the tests' fake NVML (a steady 300 W), so every energy step runs."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from fake_nvml import FakeGpu, FakeNvml

    return Meter(interval_s=0.01, nvml=FakeNvml([FakeGpu(power=lambda t: 300.0)]))


def profile_mape(path: Path) -> tuple[float | None, str | None]:
    """The energy model's held-out MAPE from profile_bench's result, and where it came from."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None, None
    value = data.get("energy_model_mape")
    source = (
        f"{path.name}: {data.get('device')}, {data.get('date')}, commit "
        f"{str(data.get('commit'))[:7]}"
    )
    return (float(value) if value is not None else None), source


def meter_overhead(
    backend: Any, prompts: list[list[int]], length: int, stops: tuple[int, ...], meter: Meter,
    pairs: int,
) -> tuple[float | None, list[tuple[bool, float]]]:  # fmt: skip
    """Runtime of one batch with the sampler (and window) on vs off, alternating the order."""
    if not meter.available:
        return None, []
    generate_batch(backend, prompts, length, stops, 0, None)  # warm: shapes, graphs, caches
    timings = []
    for i in range(pairs):
        for sampler_on in (i % 2 == 0, i % 2 == 1):
            (meter.start if sampler_on else meter.stop)()
            generation, _, _ = generate_batch(
                backend, prompts, length, stops, 0, meter if sampler_on else None
            )
            timings.append((sampler_on, float(generation.runtime_s)))
    meter.stop()
    on = [t for s, t in timings if s]
    off = [t for s, t in timings if not s]
    return 100 * (sum(on) / len(on) - sum(off) / len(off)) / (sum(off) / len(off)), timings


def second_model_cli(args: argparse.Namespace, dataset: str, on_gpu: bool) -> dict[str, Any]:
    """Run the second model with `infermeter energy` in a process of its own, into the same
    store: the command a user types is then measured on the GPU, not just the library."""
    command = infermeter_command(
        "energy", args.second_model, "--dataset", dataset, "--prompts", str(args.prompts),
        "--seed", str(args.seed), "--batch-sizes", str(args.second_batch),
        "--max-lengths", str(args.second_length), "--store", str(args.store),
        *([] if on_gpu else ["--device", "cpu"]),
    )  # fmt: skip
    done = run_command(command, timeout_s=args.cli_timeout_s)
    del done["output"]
    return done


def counter_vs_integrated(batches: pd.DataFrame) -> dict[str, Any]:
    long = batches[
        (batches.method == "counter") & (batches.window_s >= 1.0) & (batches.energy_j > 0)
    ]
    if long.empty:
        return {"counter_vs_integrated_pct": None, "counter_vs_integrated_windows": 0}
    gap = 100 * (long.integrated_j - long.energy_j).abs() / long.energy_j
    return {
        "counter_vs_integrated_pct": float(gap.mean()),
        "counter_vs_integrated_max_pct": float(gap.max()),
        "counter_vs_integrated_windows": len(long),
    }


def markdown(table: pd.DataFrame) -> str:
    shown = table.drop(columns=["detail"])
    lines = ["| " + " | ".join(shown.columns) + " |", "|" + "---|" * len(shown.columns)]
    for row in shown.itertuples(index=False):
        cells = [
            "-" if v is None or (isinstance(v, float) and v != v) else
            f"{v:.4g}" if isinstance(v, float) else str(v)
            for v in row
        ]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    args = parse()
    started = time.perf_counter()
    on_gpu = args.device != "cpu" and cuda_device_name() is not None
    if not args.resume:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{args.store}{suffix}").unlink(missing_ok=True)
    meter = Meter.for_device("cuda", 1) if on_gpu else fake_meter() if args.quick else None
    what = "none (CPU)" if meter is None else meter.note or f"NVML {meter.power_field_used} power"
    log(f"device: {device_description(gpu=on_gpu)}; meter: {what}")
    datasets = args.datasets.split(",")
    notes: list[str] = []
    skipped: list[str] = []
    result: dict[str, Any] = {}
    options = {"device": "cuda" if on_gpu else "cpu", "sampling": "top_p"}
    options.update(temperature=0.8, top_p=0.95, seed=args.seed)

    def backend() -> EngineBackend:
        return EngineBackend(**options)  # type: ignore[arg-type]

    def on_config(config: Any, row: dict[str, Any]) -> None:
        elapsed = time.perf_counter() - started
        figures = row["detail"]
        if row["status"] == "ok":
            figures = f"{row['tokens_per_s']:.0f} tok/s"
            if row["watts"] is not None:
                figures += f", {row['watts']:.0f} W, {row['j_per_token']:.3f} J/token"
        log(f"[{elapsed:6.1f} s] {config.key}: {row['status']}: {figures}")

    with Store(args.store) as store:
        # ---- the first model: datasets × lengths × batches, shortest length first ----------
        spec = get_spec(args.model)
        tok, tok_note = tokenizer_for(spec)
        notes += [tok_note] if tok_note else []
        workloads = {d: load_workload(d, args.prompts, args.seed) for d in datasets}
        for workload in workloads.values():
            notes += list(workload.notes)
        first = backend()
        deadline = time.perf_counter() + args.budget_s
        try:
            for length in args.max_lengths:
                for name, workload in workloads.items():
                    log(f"{spec.name} {name} max_len {length}: {len(workload)} prompts")
                    run = run_energy(
                        store, spec, workload, tok, EnergySweep(args.batch_sizes, (length,)),
                        lambda tp: first, backend_options=options, meter_for=lambda tp: meter,
                        device=device_description(gpu=on_gpu), seed=args.seed,
                        warmup_s=args.warmup_s, close_backends=False, on_config=on_config,
                        stop_when=lambda: time.perf_counter() > deadline,
                    )  # fmt: skip
                    skipped += [f"{spec.name} {name} {c.key}" for c in run.skipped]
            sweep_s = time.perf_counter() - started
            # ---- the meter's overhead on runtime, on the first configuration's batch ---------
            stops = (tok.eos_id,) if tok.eos_id is not None else ()
            batch = [prompt_ids(tok, p) for p in workloads[datasets[0]].prompts]
            batch = batch[: args.batch_sizes[0]]
            overhead, timings = (
                meter_overhead(first, batch, args.max_lengths[0], stops, meter, args.overhead_pairs)
                if meter is not None
                else (None, [])
            )
            log(f"meter overhead: {overhead}% over {len(timings)} runs")
        finally:
            first.close()

        # ---- the second model, through `infermeter energy` as a user runs it --------------
        log(f"{args.second_model} {datasets[0]}: batch {args.second_batch}, "
            f"max_len {args.second_length}, through the CLI")  # fmt: skip
        cli = second_model_cli(args, datasets[0], on_gpu)
        log(f"$ {cli['command']}  (exit {cli['exit_code']}, {cli['wall_s']:.0f} s)")
        notes += cli["notes"]
        if cli["exit_code"] != 0:
            log(cli["output_tail"])

        runs = store.runs()[["id", "model"]].rename(columns={"id": "run_id"})
        configs = energy_configs(store).merge(runs, on="run_id")
        batches = energy_batches(store)
        info = store.get_run(int(configs.run_id.iloc[0])).backend_info if len(configs) else {}

    table = configs[TABLE_COLUMNS]
    mape, mape_source = profile_mape(args.profile_json)
    result = {
        "model": args.model,
        "second_model": args.second_model,
        "second_model_cli": cli,
        "backend": "engine",
        "backend_info": info,
        "prompts_per_config": args.prompts,
        "datasets": datasets,
        "seed": args.seed,
        "batch_sizes": list(args.batch_sizes),
        "max_lengths": list(args.max_lengths),
        "budget_s": args.budget_s,
        "warmup_s": args.warmup_s,
        "sweep_wall_s": sweep_s,
        "total_wall_s": time.perf_counter() - started,
        **counter_vs_integrated(batches),
        "meter_overhead_pct": overhead,
        "meter_overhead_runs": [{"sampler_on": s, "runtime_s": t} for s, t in timings],
        "energy_model_mape": mape,
        "energy_model_mape_source": mape_source,
        "configs": table.to_dict(orient="records"),
        "skipped": skipped,
        "notes": sorted(set(notes)),
        "store": str(args.store),
    }
    ok = table[table.status == "ok"]
    rows = [
        ("prompts per configuration (N)", f"{args.prompts}", "4,096 in the paper"),
        ("configurations ok / infeasible / skipped",
         f"{len(ok)} / {int((table.status == 'infeasible').sum())} / {len(skipped)}", "-"),
        ("counter vs integrated power (windows ≥ 1 s)",
         _pct(result["counter_vs_integrated_pct"]), "≤ 3%"),
        ("metering overhead on runtime", _pct(overhead), "< 1%"),
        ("energy model held-out MAPE", _pct(mape) + (f" ({mape_source})" if mape_source else ""),
         "≤ 3%"),
        ("second model through `infermeter energy`",
         f"exit {cli['exit_code']} in {cli['wall_s']:.0f} s: `{cli['command']}`", "exit 0"),
        ("wall time (sweep / total)",
         f"{sweep_s:.0f} s / {result['total_wall_s']:.0f} s", "-"),
    ]  # fmt: skip
    path = write_result("energy", result, rows, args.out)
    md = path.with_suffix(".md")
    md.write_text(
        md.read_text()
        + f"\n## Per configuration ({args.prompts} prompts each)\n\n"
        + markdown(table)
        + "\n\n"
        + "".join(f"- {note}\n" for note in result["notes"])
    )
    log(markdown(table))
    log(f"written to {path} and {md}; store {args.store}")


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}%"


if __name__ == "__main__":
    main()
