"""`infermeter energy`: the Words-to-Watts experiment (infermeter.experiments.energy)."""

from __future__ import annotations

from pathlib import Path

import typer

from infermeter.cli import options as o
from infermeter.cli.console import console, err_console, progress, show, user_errors
from infermeter.plans import CPU_DEFAULTS, GPU_DEFAULTS

__all__ = ["CPU_DEFAULTS", "GPU_DEFAULTS", "energy", "register"]


def register(app: typer.Typer) -> None:
    """Add `energy` to `app`."""
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
    from infermeter.experiments.energy import run_energy, summary
    from infermeter.plans import energy_setup
    from infermeter.store.db import Store
    from infermeter.store.provenance import device_description

    if restore_power_limit:
        from infermeter.measure.powercap import restore_power_limits

        cuda = device if device.startswith("cuda") else "cuda"
        count = max(o.parse_sizes(shards, "--shards") or (1,))
        for line in restore_power_limits(device=cuda, count=count):
            console.print(line, highlight=False)
        return
    setup = energy_setup(
        model, backend, sampling, power_limit, launched.nodes if launched else 1, warmup, device,
        (prompts, batch_sizes, max_lengths), shards, (dataset, seed, template), dtype, checkpoint,
        tokenizer, sample_interval,
    )  # fmt: skip
    spec, workload = setup.spec, setup.workload

    def note(text: str) -> None:
        err_console.print(f"[yellow]note:[/] {text}", highlight=False)

    for line in setup.notes:
        note(line)
    title = f"energy of {spec.name} on {workload.dataset}"
    with Store(store) as db, progress(title) as bar:
        result = run_energy(
            db,
            spec,
            workload,
            setup.tokenizer,
            setup.sweep,
            setup.backend_for,
            backend_name=backend,
            backend_options=setup.options,
            meter_for=setup.meter_for,
            device=device_description(gpu=setup.on_gpu, device=setup.cuda),
            seed=seed,
            warmup_s=warmup,
            on_start=bar.energy_start(db, len(workload)),
            on_batch=bar.on_batch,
            on_config=bar.on_config,
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
