"""`infermeter energy`: the Words-to-Watts experiment (infermeter.experiments.energy)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from infermeter.cli import options as o
from infermeter.cli.console import console, err_console, progress_bar, show
from infermeter.plans import CPU_DEFAULTS, GPU_DEFAULTS, PAPER_TEMPERATURE, PAPER_TOP_P

__all__ = ["CPU_DEFAULTS", "GPU_DEFAULTS", "energy", "register"]


def register(app: typer.Typer) -> None:
    """Add `energy` to `app`."""
    from infermeter.cli.console import user_errors

    app.command("energy")(user_errors(energy))


def energy(
    model: str | None = typer.Argument(None, help="Catalog name (e.g. llama-7b) or a config.json."),
    dataset: str = typer.Option(
        "gsm8k", help="gsm8k, alpaca, or a JSON/JSONL file of Alpaca or GSM8K records."
    ),
    prompts: int | None = typer.Option(
        None, help="Prompts sampled from the dataset (default: the paper's 4,096; 16 on a CPU)."
    ),
    seed: int = typer.Option(0, help="Seed of the sample and of generation."),
    template: str | None = typer.Option(
        None,
        help="Prompt template: alpaca, gsm8k, @FILE, or text with {instruction} {input} "
        "{question} (default: the dataset's own).",
    ),
    batch_sizes: str | None = typer.Option(
        None, help="Batch sizes (default: 64,128,256; 4,8 on a CPU)."
    ),
    max_lengths: str | None = typer.Option(
        None, help="Max generation lengths in tokens (default: 256,512,1024; 16,32 on a CPU)."
    ),
    shards: str = typer.Option("1", help="GPUs per model (tensor parallel), e.g. 1,2."),
    power_limit: str | None = typer.Option(
        None,
        "--power-limit",
        help="GPU power caps in W, e.g. 250,175,150. Changes the GPUs' limit through NVML (needs "
        "root) and restores it on exit; only for GPUs that are your own.",
    ),
    restore_power_limit: bool = typer.Option(
        False,
        "--restore-power-limit",
        help="Put back the power limits an earlier run left set (killed, or the machine lost "
        "power) and exit; with none recorded, reset this run's GPUs (--device, --shards) "
        "that sit below their default limit.",
    ),
    backend: str = typer.Option("engine", help="Stack that generates: engine."),
    device: str = o.DeviceOption,
    dtype: str | None = o.DtypeOption,
    checkpoint: Path | None = typer.Option(
        None, help="Local LLaMA checkpoint folder: real weights, so real response lengths."
    ),
    tokenizer: str | None = typer.Option(
        None, help="SentencePiece .model or 'bytes' (default: LLaMA's for LLaMA specs)."
    ),
    sampling: str = typer.Option("top_p", help="top_p (the paper's T = 0.8, p = 0.95) or greedy."),
    sample_interval: float = o.IntervalOption,
    warmup: float = typer.Option(
        30.0,
        "--warmup-s",
        help="Seconds of load before the first configuration, so energy is measured at working "
        "temperature (a cold card reads a few percent low). Only where energy is metered.",
    ),
    store: Path = o.StoreOption,
) -> None:
    """Energy per second, token and response of dataset prompts (Words to Watts)."""
    from infermeter.engine.launcher import serve_if_follower

    launched = serve_if_follower()  # under torchrun/srun: ranks other than 0 serve, then exit
    from infermeter.backends.config import config_for
    from infermeter.backends.options import generating_backend
    from infermeter.errors import UserError
    from infermeter.experiments.energy import (
        EnergySweep,
        batches_left,
        batches_of,
        run_energy,
        summary,
    )
    from infermeter.measure.meter import Meter, check_warmup_s
    from infermeter.plans import energy_plan
    from infermeter.spec.catalog import resolve_spec
    from infermeter.store.db import Store
    from infermeter.store.provenance import cuda_device_name, device_description
    from infermeter.workloads.datasets import load_workload
    from infermeter.workloads.tokenizer import tokenizer_for

    if restore_power_limit:
        from infermeter.measure.powercap import restore_power_limits

        cuda = device if device.startswith("cuda") else "cuda"
        count = max(o.parse_sizes(shards, "--shards") or (1,))
        for line in restore_power_limits(device=cuda, count=count):
            console.print(line, highlight=False)
        return
    if model is None:
        raise UserError("give a MODEL (e.g. llama-7b), or --restore-power-limit")
    if backend not in ("engine", "hf"):
        raise UserError(f"energy runs a local model (engine), not backend {backend!r}")
    if sampling not in ("top_p", "greedy"):
        raise UserError(f"--sampling must be top_p or greedy, not {sampling!r}")
    spec = resolve_spec(model)
    caps = o.parse_list(
        power_limit, "--power-limit", float, "250,175,150", "watts", "watts, e.g. 250"
    )
    if caps and launched is not None and launched.nodes > 1:
        raise UserError(
            "--power-limit caps the GPUs of this node only; on a run over several nodes set "
            "the caps on each node (nvidia-smi -pl) and leave --power-limit out"
        )
    check_warmup_s(warmup)
    scaled = device == "cpu" or (not device.startswith("cuda") and cuda_device_name() is None)
    plan = energy_plan(scaled, prompts, batch_sizes, max_lengths)
    sweep = EnergySweep(
        o.parse_sizes(plan.batch_sizes, "--batch-sizes") or (64,),
        o.parse_sizes(plan.max_lengths, "--max-lengths") or (256,),
        o.parse_sizes(shards, "--shards") or (1,),
        caps or (None,),
    )
    sweep.validate(spec)
    cuda = device if device.startswith("cuda") else "cuda"  # cuda:N: its shards follow it
    on_gpu = device != "cpu" and cuda_device_name(cuda) is not None
    if device.startswith("cuda") and not on_gpu:
        raise UserError(
            f"--device {device} asked for, but CUDA shows no such GPU; use another --device "
            "or --device cpu"
        )
    if caps and not on_gpu:
        raise UserError("--power-limit caps NVIDIA GPUs; this run has none (nothing was changed)")
    workload = load_workload(dataset, plan.prompts, seed, template)
    tok, tok_note = tokenizer_for(spec, tokenizer)
    options: dict[str, Any] = {"device": cuda if on_gpu else "cpu", "dtype": dtype, "seed": seed}
    if checkpoint is not None:
        options["checkpoint"] = str(checkpoint)
    if backend == "engine":
        options.update(sampling=sampling, temperature=PAPER_TEMPERATURE, top_p=PAPER_TOP_P)

    def backend_for(tp: int) -> Any:
        config = config_for(backend, **options, **({"tp": tp} if tp > 1 else {}))
        return generating_backend(config, backend)

    backend_for(1)  # refuse a backend that cannot run prompts before anything is stored

    def meter_for(tp: int) -> Meter | None:
        """The GPUs the run's work uses (cuda:N and, with shards, the next ones), resolved
        once (infermeter.measure.gpus); power caps go to the same ones."""
        return Meter.for_device(cuda, tp, interval_s=sample_interval) if on_gpu else None

    def note(text: str) -> None:
        err_console.print(f"[yellow]note:[/] {text}", highlight=False)

    for line in [plan.scaled_note, *workload.notes, tok_note]:
        if line:
            note(line)
    if not on_gpu:
        note("no GPU in use: throughput only, energy columns stay empty")
    else:  # a cap an earlier run left would price every batch at the wrong power
        from infermeter.measure.powercap import leftover_power_caps

        for line in leftover_power_caps(cuda, max(sweep.shards)):
            note(line)

    with Store(store) as db, progress_bar() as bar:
        task = bar.add_task(f"energy of {spec.name} on {workload.dataset}", total=None, last="")

        left: dict[str, int] = {}  # batches each configuration still had to run at the start
        ran: dict[str, int] = {}

        def on_start(run: Any, todo: list[Any], total: int) -> None:
            left.update({c.key: batches_left(db, run.id, c, len(workload)) for c in todo})
            bar.update(task, total=sum(left.values()))
            if len(todo) < total:
                bar.console.print(
                    f"resuming run {run.id}: {total - len(todo)}/{total} configurations stored"
                )
            for c in todo:
                if 0 < left[c.key] < (whole := batches_of(len(workload), c.batch)):
                    bar.console.print(
                        f"resuming {c.key}: {whole - left[c.key]}/{whole} batches stored"
                    )

        def on_batch(result: Any) -> None:
            c = result.config
            ran[c.key] = ran.get(c.key, 0) + 1
            bar.update(
                task,
                advance=1,
                last=f"b={c.batch} len={c.max_len} shards={c.shards}"
                + (f" cap={c.power_cap_w:g}W" if c.power_cap_w else "")
                + f" {result.output_tokens / result.runtime_s:.0f} tok/s",
            )

        def on_config(config: Any, row: dict[str, Any]) -> None:
            if row["status"] != "ok":
                bar.console.print(f"[yellow]{config.key} {row['status']}:[/] {row['detail']}")
                # The batches it would have run never will: keep the bar's total honest.
                never = left.get(config.key, 0) - ran.get(config.key, 0)
                bar.update(task, total=(bar.tasks[0].total or 0) - never)

        result = run_energy(
            db,
            spec,
            workload,
            tok,
            sweep,
            backend_for,
            backend_name=backend,
            backend_options=options,
            meter_for=meter_for,
            device=device_description(gpu=on_gpu, device=cuda),
            seed=seed,
            warmup_s=warmup,
            on_start=on_start,
            on_batch=on_batch,
            on_config=on_config,
            on_note=note,
        )
    for line in result.notes[len(workload.notes) :]:
        note(line)
    console.print(f"run {result.run.id} stored in {store} ({result.run.device})", highlight=False)
    configs = result.configs
    title = f"{spec.name} on {workload.dataset}: {len(workload)} prompts per configuration"
    show(summary(configs), title, digits=4)
    for row in configs[configs.status != "ok"].itertuples(index=False):
        console.print(f"{row.status}: batch {row.batch}, max len {row.max_len}: {row.detail}")
