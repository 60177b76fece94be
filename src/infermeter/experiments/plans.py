"""An experiment's plan from a caller's choices (the CLI's options, a notebook's arguments):
the profile grid and its validation queries, the load grid, the energy sweep and its defaults.
Each refuses a plan that cannot run with a UserError, before anything is measured.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from infermeter.errors import UserError
from infermeter.spec.model import ModelSpec
from infermeter.units import plural
from infermeter.workloads.queries import parse_list

if TYPE_CHECKING:
    from infermeter.requests import EnergyRequest, LoadRequest, ProfileRequest

PAPER_TEMPERATURE, PAPER_TOP_P = 0.8, 0.95  # the paper's decoding settings (§III-A)
# The paper's sweep (4,096 prompts, batch 64-256, up to 1,024 tokens) and the one a CPU runs
# by default: the paper's would keep a 2-core CPU busy for hours with its first batch taking
# minutes, so a bare `infermeter energy gpt2` there shows nothing for that long.
GPU_DEFAULTS = {"prompts": 4096, "batch_sizes": "64,128,256", "max_lengths": "256,512,1024"}
CPU_DEFAULTS = {"prompts": 16, "batch_sizes": "4,8", "max_lengths": "16,32"}


def parse_rates(text: str | None, label: str) -> tuple[float, ...] | None:
    """Comma-separated positive numbers (requests per second), or a UserError."""
    if text is not None and text.replace(" ", "").replace(",", ""):
        rates = parse_list(text, label, float, "0.5,1,2", "numbers")
        if rates and min(rates) > 0:
            return rates
    if text is not None:
        raise UserError(f"{label} must be positive numbers, e.g. 0.5,1,2")
    return None


def profile_grid(
    spec: ModelSpec,
    on_gpu: bool,
    trials: int,
    prompt_sizes: tuple[int, ...] | None,
    output_sizes: tuple[int, ...] | None,
    batch_sizes: tuple[int, ...] | None,
    max_context: int | None = None,
) -> Any:
    """The ProfileGrid of the sizes chosen (token counts), the defaults for the rest (over
    `max_context` tokens, default_context's default if None); the default grid's PE knots
    only with the default prompt sizes. Checked against `spec`; raises UserError for a prompt
    size past `max_context` (--prompt-sizes and --max-context disagree: neither wins)."""
    from infermeter.experiments.profile import ProfileGrid, default_grid

    defaults = default_grid(spec, on_gpu, trials, max_context)  # checks max_context
    past = [p for p in prompt_sizes or () if max_context is not None and p > max_context]
    if past:
        raise UserError(
            f"--prompt-sizes {','.join(map(str, past))} {'is' if len(past) == 1 else 'are'} "
            f"past --max-context {max_context}; drop {'it' if len(past) == 1 else 'them'} or "
            "raise --max-context"
        )
    grid = ProfileGrid(
        prompt_sizes or defaults.prompt_sizes,
        output_sizes or defaults.output_sizes,
        batch_sizes or (1,),
        trials,
        () if prompt_sizes else defaults.pe_sizes,  # PE knots go with the default prompt sizes
        () if prompt_sizes else defaults.head_sizes,  # and so does the head curve
    )
    grid.validate(spec)
    return grid


def validation_count(on_gpu: bool, warmup_s: float, validate: int | None) -> int:
    """Validation queries a profile measures (default 16 on a GPU, 4 elsewhere), the warm-up
    (s) checked too. Raises UserError for a negative count or warm-up."""
    from infermeter.experiments.profile import DEFAULT_VALIDATE_CPU, DEFAULT_VALIDATE_GPU
    from infermeter.measure.meter import check_warmup_s

    check_warmup_s(warmup_s)
    if validate is None:
        validate = DEFAULT_VALIDATE_GPU if on_gpu else DEFAULT_VALIDATE_CPU
    if validate < 0:
        raise UserError(f"--validate must be 0 or more queries, not {validate}")
    return validate


def load_grid(
    spec: ModelSpec,
    mode: str,
    prompt_tokens: int,
    output_sizes: tuple[int, ...],
    concurrency: tuple[int, ...] | None,
    rates: tuple[float, ...] | None,
    trials: int,
    duration_s: float,
    warmup_s: float,
    arrival: str,
) -> Any:
    """A LoadGrid (mode "burst": bursts of each concurrency, `trials` times) or a TimedLoad
    ("concurrent": levels kept in flight; "rate": requests per second, both at the largest of
    `output_sizes`) for `duration_s` a level after `warmup_s`. Checked against `spec`;
    UserError for a bad mode or no levels."""
    from infermeter.experiments.load import LoadGrid, TimedLoad

    if mode == "burst":
        grid: Any = LoadGrid(prompt_tokens, output_sizes, concurrency or (1,), trials)
    elif mode in ("concurrent", "rate"):
        levels = rates if mode == "rate" else concurrency
        if not levels:
            raise UserError("--mode rate needs --rate, e.g. --rate 1,2,5 (requests per second)")
        grid = TimedLoad(
            prompt_tokens, max(output_sizes), mode, tuple(float(v) for v in levels), duration_s,
            warmup_s, arrival,  # type: ignore[arg-type]
        )  # fmt: skip
    else:
        raise UserError(f"--mode must be burst, concurrent or rate, got {mode!r}")
    grid.validate(spec)
    return grid


def load_plan(r: LoadRequest, spec: ModelSpec) -> Any:
    """The load grid of `infermeter load`'s request (its sizes, levels and rates parsed)."""
    sizes = parse_list(r.output_sizes, "--output-sizes") or (1,)
    levels = None if r.mode == "rate" else parse_list(r.concurrency, "--concurrency")
    rates = parse_rates(r.rate, "--rate") if r.mode == "rate" else None
    return load_grid(spec, r.mode, r.prompt_tokens, sizes, levels, rates, r.trials, r.duration_s,
                     r.warmup_s, r.arrival)  # fmt: skip


@dataclass
class EnergyPlan:
    """The energy sweep's prompts, batch sizes and max lengths (defaults filled in: the
    paper's on a GPU, a small one on a CPU) and the note that says a CPU's was scaled down."""

    prompts: int
    batch_sizes: str
    max_lengths: str
    scaled_note: str | None


def energy_plan(
    scaled: bool, prompts: int | None, batch_sizes: str | None, max_lengths: str | None
) -> EnergyPlan:
    """The energy sweep's sizes with the defaults of a CPU (`scaled`) or a GPU."""
    chosen = {"prompts": prompts, "batch_sizes": batch_sizes, "max_lengths": max_lengths}
    defaults = CPU_DEFAULTS if scaled else GPU_DEFAULTS
    values: dict[str, Any] = {k: defaults[k] if v is None else v for k, v in chosen.items()}
    note = (
        f"on a CPU the sweep is scaled down to {values['prompts']} prompts, batch sizes "
        f"{values['batch_sizes']} and max lengths {values['max_lengths']} (the paper's would "
        "take hours); pass --prompts, --batch-sizes and --max-lengths to choose"
        if scaled and any(v is None for v in chosen.values())
        else None
    )
    return EnergyPlan(scaled_note=note, **values)


@dataclass
class LoadResult:
    """A stored load run, its summary (percentiles in s) and how it ended (an outcome)."""

    run: Any
    summary: Any
    outcome: Any


def run_load(
    db: Any,
    spec: ModelSpec,
    runner: Any,
    options: dict[str, Any],
    grid: Any,
    on_start: Any = None,
    on_step: Any = None,
) -> LoadResult:
    """Run a load grid (load_grid) on an API backend into `db` and summarise it; a run with
    requests that failed is marked incomplete. `on_step(label, measurements, total,
    warmup=n)` is called after each burst or timed level (`total`: the levels, given with the
    first; a timed level's measurements leave its `n` warm-up requests out)."""
    from infermeter.experiments.load import LoadGrid, run_load_sweep, run_timed_load

    step = on_step or (lambda label, ms, total=None, warmup=0: None)
    device = f"api: {options['base_url']}"
    stack = {"backend": "openai"}
    if isinstance(grid, LoadGrid):

        def burst(o: int, c: int, t: int, ms: list[Any]) -> None:
            timed = [m.runtime_s for m in ms if m.runtime_s == m.runtime_s]  # failed: NaN
            slowest = f", slowest {max(timed):.3f}s" if timed else ""
            step(f"o={o} c={c}: {plural(len(ms), 'request')}{slowest}", ms)

        run = run_load_sweep(db, spec, stack, runner, options, grid, on_start, burst, device)
    else:
        step("", [], len(grid.levels))

        def level(value: float, ms: list[Any]) -> None:
            measured = [m for m in ms if not m.extra.get("warmup")]  # as the summary counts
            step(f"level {value:g}: {plural(len(measured), 'request')}", measured,
                 warmup=len(ms) - len(measured))  # fmt: skip

        run = run_timed_load(db, spec, stack, runner, options, grid, level, device, on_start)
    summary = load_table(grid, db.points(run.id))
    outcome = load_outcome(grid, db.points(run.id))
    if not outcome.complete:
        db.set_run_status(run.id, "incomplete")
    return LoadResult(run, summary, outcome)


def load_table(grid: Any, points: Any) -> Any:
    """A load run's summary (pandas DataFrame) as `load` prints it: a row per output length
    and burst size of a LoadGrid (load.load_summary), or per level of a TimedLoad, warm-ups
    left out (load.timed_summary); latencies in seconds."""
    from infermeter.experiments.load import LoadGrid, load_summary, timed_summary

    if isinstance(grid, LoadGrid):
        return load_summary(points)
    return timed_summary(points, grid.duration_s)


def load_title(grid: Any) -> str:
    """The title `load` and `show` give a load run's summary table."""
    from infermeter.experiments.load import LoadGrid

    p = grid.prompt_tokens
    if isinstance(grid, LoadGrid):
        return f"runtime vs queries in flight (p = {p})"
    return f"{grid.mode} load (p = {p}, o = {grid.output_tokens}, {grid.duration_s:g} s a level)"


def load_outcome(grid: Any, points: Any) -> Any:
    """How a load run ended (backends.api.outcome.RunOutcome): its stored requests (Store.points)
    by status and cause, warm-ups left out as in its summary's table, against the requests its
    grid plans (LoadGrid or TimedLoad .planned_requests: a missing one was never sent); a
    `concurrent` load, which plans a time and not a count, against the requests it stored."""
    from infermeter.backends.api.outcome import run_outcome
    from infermeter.store.extra import without_warmup

    measured = without_warmup(points)
    planned = grid.planned_requests()
    return run_outcome(measured, len(measured) if planned is None else planned)


@dataclass
class EnergySetup:
    """An energy run ready to start: the sweep, its prompts and tokenizer, the backend options
    stored with the run, a backend and a meter per shard count, and the notes to show."""

    spec: ModelSpec
    sweep: Any
    workload: Any
    tokenizer: Any
    options: dict[str, Any]
    on_gpu: bool
    cuda: str
    backend_for: Callable[[int], Any]
    meter_for: Callable[[int], Any]
    notes: list[str] = field(default_factory=list)

    def run(self, db: Any, r: EnergyRequest, bar: Any, note: Callable[[str], None]) -> Any:
        """Run the sweep into store `db` (experiments.energy.run_energy), its progress told to
        `bar` (infermeter.report.progress.RunProgress) and its notes to `note`."""
        from infermeter.experiments.energy import run_energy
        from infermeter.store.provenance import device_description

        return run_energy(
            db, self.spec, self.workload, self.tokenizer, self.sweep, self.backend_for,
            backend_name=r.backend, backend_options=self.options, meter_for=self.meter_for,
            device=device_description(gpu=self.on_gpu, device=self.cuda), seed=r.seed,
            warmup_s=r.warmup_s, on_start=bar.energy_start(db, len(self.workload)),
            on_batch=bar.on_batch, on_config=bar.on_config, on_note=note,
        )  # fmt: skip


def energy_setup(r: EnergyRequest, nodes: int = 1) -> EnergySetup:
    """The energy run that `infermeter energy` asks for (over `nodes` nodes), every check made
    before anything is stored: sizes None take the defaults, power caps are in W. Raises
    UserError for a choice that cannot run (with its option's name)."""
    from infermeter.backends.config import config_for
    from infermeter.backends.options import generating_backend
    from infermeter.experiments.energy import EnergySweep
    from infermeter.measure.gpus import check_device
    from infermeter.measure.meter import Meter, check_warmup_s
    from infermeter.spec.catalog import resolve_spec
    from infermeter.store.provenance import cuda_device_name
    from infermeter.workloads.datasets import load_workload
    from infermeter.workloads.tokenizer import tokenizer_for

    model, backend, sampling, device = r.model, r.backend, r.sampling, check_device(r.device)
    if model is None:
        raise UserError("give a MODEL (e.g. llama-7b), or --restore-power-limit")
    if backend not in ("engine", "hf"):
        raise UserError(f"energy runs a local model (engine), not backend {backend!r}")
    if sampling not in ("top_p", "greedy"):
        raise UserError(f"--sampling must be top_p or greedy, not {sampling!r}")
    spec = resolve_spec(model)
    caps = parse_list(
        r.power_limit, "--power-limit", float, "250,175,150", "watts", "watts, e.g. 250"
    )
    if caps and nodes > 1:
        raise UserError(
            "--power-limit caps the GPUs of this node only; on a run over several nodes set "
            "the caps on each node (nvidia-smi -pl) and leave --power-limit out"
        )
    check_warmup_s(r.warmup_s)
    scaled = device == "cpu" or (not device.startswith("cuda") and cuda_device_name() is None)
    plan = energy_plan(scaled, r.prompts, r.batch_sizes, r.max_lengths)
    sweep = EnergySweep(
        parse_list(plan.batch_sizes, "--batch-sizes") or (64,),
        parse_list(plan.max_lengths, "--max-lengths") or (256,),
        parse_list(r.shards, "--shards") or (1,),
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
    prompts = load_workload(r.dataset, plan.prompts, r.seed, r.template)
    tok, tok_note = tokenizer_for(spec, r.tokenizer)
    options: dict[str, Any] = {
        "device": cuda if on_gpu else "cpu",
        "dtype": r.dtype,
        "seed": r.seed,
    }
    if r.checkpoint is not None:
        options["checkpoint"] = str(r.checkpoint)
    if backend == "engine":
        options.update(sampling=sampling, temperature=PAPER_TEMPERATURE, top_p=PAPER_TOP_P)

    def backend_for(tp: int) -> Any:
        config = config_for(backend, **options, **({"tp": tp} if tp > 1 else {}))
        return generating_backend(config, backend)

    backend_for(1)  # refuse a backend that cannot run prompts before anything is stored

    def meter_for(tp: int) -> Meter | None:
        """The GPUs the run's work uses (cuda:N and, with shards, the next ones), resolved
        once (infermeter.measure.gpus); power caps go to the same ones."""
        return Meter.for_device(cuda, tp, interval_s=r.sample_interval_s) if on_gpu else None

    notes = [n for n in [plan.scaled_note, *prompts.notes, tok_note] if n]
    if not on_gpu:
        notes.append("no GPU in use: throughput only, energy columns stay empty")
    else:  # a cap an earlier run left would price every batch at the wrong power
        from infermeter.measure.powercap import leftover_power_caps

        notes += leftover_power_caps(cuda, max(sweep.shards))
    return EnergySetup(spec, sweep, prompts, tok, options, on_gpu, cuda, backend_for, meter_for,
                       notes)  # fmt: skip


def restore_power_limits(r: EnergyRequest) -> list[str]:
    """`infermeter energy --restore-power-limit`: the limits an earlier run left set put back
    (or this request's GPUs reset), a line for each (infermeter.measure.powercap)."""
    from infermeter.measure.powercap import restore_power_limits as restore

    cuda = r.device if r.device.startswith("cuda") else "cuda"
    return restore(device=cuda, count=max(parse_list(r.shards, "--shards") or (1,)))


@dataclass
class ProfileSetup:
    """A profile ready to run: the spec, the stack and whether it is on a GPU, the grid and
    validation count, the backend, its stored options, a meter (or None) and `gpu`
    (cuda or cuda:N: where backend, meter and pricing look)."""

    spec: ModelSpec
    stack: Any
    on_gpu: bool
    grid: Any
    validate: int
    gpu: str
    options: dict[str, Any]
    runner: Any
    meter: Any
    notes: list[str] = field(default_factory=list)
    overrides: dict[str, float] = field(default_factory=dict)
    catalog: Any = None

    def run(self, db: Any, r: ProfileRequest, bar: Any) -> Any:
        """Profile into store `db` (experiments.profile.run_profile), progress told to `bar`
        (infermeter.report.progress.RunProgress); the run's record."""
        from infermeter.experiments.profile import run_profile
        from infermeter.store.provenance import device_description

        return run_profile(
            db, self.spec, self.stack.to_dict(), self.runner, self.options, self.grid,
            bar.profile_start, bar.on_point, device=device_description(gpu=self.on_gpu,
            device=self.gpu), meter=self.meter, warmup_s=r.warmup_s, validate=self.validate,
            second_look=self.on_gpu, on_more=bar.profile_more,
        )  # fmt: skip


def context_notes(spec: ModelSpec, grid: Any, on_gpu: bool = True) -> list[str]:
    """A note when the default grid leaves part of the model's context unprofiled: its cap
    (DEFAULT_MAX_CONTEXT) on a GPU, and half the capped context on a CPU."""
    from infermeter.experiments.profile import DEFAULT_MAX_CONTEXT

    largest = max(grid.profiled_sizes)
    if not on_gpu and largest < min(spec.max_context, DEFAULT_MAX_CONTEXT) - 1:
        return [
            f"on a CPU the default grid profiles prompts up to {largest:,} tokens of "
            f"{spec.name}'s {spec.max_context:,}-token context (about half: long prefills are "
            "slow here); longer prompts are priced by extrapolation, with a warning; "
            "--prompt-sizes chooses others"
        ]
    if spec.max_context <= DEFAULT_MAX_CONTEXT:
        return []
    return [
        f"the default grid profiles prompts up to {largest:,} tokens of {spec.name}'s "
        f"{spec.max_context:,}-token context (the default cap, {DEFAULT_MAX_CONTEXT:,}); longer "
        f"prompts are priced by extrapolation, with a warning; --max-context "
        f"{spec.max_context} profiles the whole context, at several times the time"
    ]


def profile_setup(r: ProfileRequest, warn: Callable[[str], None]) -> ProfileSetup:
    """The profile that `infermeter profile` asks for: its output file checked, sizes parsed
    (None: the defaults), the hardware priced with its overrides, the backend built (an API's
    prepared, so faults stop before a run is stored; `warn` gets its warning). Raises
    UserError for a choice that cannot run."""
    from infermeter.backends.config import (
        BACKENDS,
        build_backend,
        check_runnable,
        config_for,
        unknown_backend,
    )
    from infermeter.backends.openai import api_spec
    from infermeter.backends.options import openai_backend
    from infermeter.measure.gpus import check_device
    from infermeter.model.pricing import parse_overrides
    from infermeter.spec.catalog import resolve_spec
    from infermeter.spec.hardware import build_stack, load_hardware_config
    from infermeter.store.outputs import check_output

    if r.output:
        check_output(r.output, "model file")  # before minutes of profiling, not after
    backend, device, tp = r.backend, check_device(r.device), r.tensor_parallel
    overrides = parse_overrides(r.price_per_hour, r.power_watts, r.settings)
    catalog = load_hardware_config(r.hardware_config) if r.hardware_config else None
    if backend not in BACKENDS:  # before the model: a mistyped backend is the first problem
        raise unknown_backend(backend)
    is_api = backend == "openai"  # a black box: MODEL may be any name, nothing runs locally
    spec = api_spec(r.model) if is_api else resolve_spec(r.model)
    if not is_api:  # before the catalog's check, which knows dtypes that are only priced
        check_runnable(backend, r.dtype, spec.name)
    stack, on_gpu = build_stack(
        backend, "cpu" if is_api else device, r.dtype, spec.dtype, r.accelerator,
        r.num_accelerators, tp, overrides, catalog,
    )  # fmt: skip
    if not is_api:  # the model's own dtype, where no --dtype was given
        check_runnable(backend, stack.dtype, spec.name)
    sizes = (r.prompt_sizes, r.output_sizes, r.batch_sizes)
    labels = ("--prompt-sizes", "--output-sizes", "--batch-sizes")
    parsed = [parse_list(text, label) for text, label in zip(sizes, labels, strict=True)]
    grid = profile_grid(spec, on_gpu, r.trials, *parsed, r.max_context)
    validate = validation_count(on_gpu, r.warmup_s, r.validate)
    chose = is_api or r.max_context is not None or parsed[0] is not None
    notes = [] if chose else context_notes(spec, grid, on_gpu)
    gpu = device if device.startswith("cuda") else "cuda"  # cuda:N: backend, meter and pricing
    options: dict[str, Any] = {"device": gpu if on_gpu else "cpu", "dtype": stack.dtype}
    if tp > 1:
        options["tp"] = tp
    if is_api:
        options, runner, warning = openai_backend(r.api)
        if warning:
            warn(warning)
        runner.prepare(spec)  # faults that no retry fixes stop here, before a run is stored
    else:
        runner = build_backend(config_for(backend, **options))
    meter = None
    if r.energy and on_gpu:
        from infermeter.measure.meter import Meter

        meter = Meter.for_device(options["device"], tp, interval_s=r.sample_interval_s)
        notes += [meter.note] if meter.note else []
    return ProfileSetup(spec, stack, on_gpu, grid, validate, gpu, options, runner, meter, notes,
                        overrides, catalog)  # fmt: skip


def profile_prices(
    r: ProfileRequest, setup: ProfileSetup, fitted: list[Any], sustained: list[Any] | None = None
) -> Any:
    """The profiled stack's models priced on its hardware (an API's: --accelerator's, if any)
    within the profiled range (model.pricing.price_profile), with the sustained price where
    the profile has one."""
    from infermeter.model.pricing import price_profile

    api_hw = r.backend == "openai" and bool(r.accelerator)
    return price_profile(
        fitted, setup.spec.max_context, r.accelerator if r.backend == "openai" else None,
        r.num_accelerators if api_hw else None, setup.overrides, setup.catalog, sustained,
    )  # fmt: skip


def fit_profiled(
    db: Any,
    run_id: int,
    expected: int,
    is_api: bool,
    accept_poor_fit: bool,
    on_outcome: Callable[[Any], None],
) -> tuple[Any, list[Any], str | None]:
    """(outcome, models, why not fitted) of a profile just run, its models stored: an API
    run's outcome (`expected` measurements; told to `on_outcome` first, an incomplete run
    marked so) and the fit under the backend's policy (an API's constant overhead, §3.5).
    Raises UserError when a complete run cannot be fitted (model.runfit.fit_or_note)."""
    from infermeter.backends.api.outcome import run_outcome
    from infermeter.model.fit import FitPolicy
    from infermeter.model.runfit import fit_or_note

    outcome = None
    if is_api:  # how an API run ended (counts by cause)
        outcome = run_outcome(db.points(run_id), expected)
        on_outcome(outcome)
        if not outcome.complete:
            db.set_run_status(run_id, "incomplete")
    policy = FitPolicy(api=is_api, accept_poor_fit=accept_poor_fit)
    fitted, why = fit_or_note(db, run_id, outcome, policy)
    for model in fitted:
        db.record_fit(run_id, model)
    return outcome, fitted, why


def profiled_sustained(
    store: Any, run_id: int, backend: str, accept_poor_fit: bool
) -> tuple[list[Any], str | None]:
    """The sustained runtime model(s) of a profile just run (model.runfit.sustained_or_note:
    none, with why, when its fit is poor; none, silently, when it has no times back to
    back); never stored as the run's fit."""
    from infermeter.model.fit import FitPolicy
    from infermeter.model.runfit import sustained_or_note
    from infermeter.store.db import Store

    policy = FitPolicy(api=backend == "openai", accept_poor_fit=accept_poor_fit)
    with Store(store) as db:
        return sustained_or_note(db, run_id, policy)


def stored_outcome(record: Any, points: Any) -> Any:
    """How a stored run ended (backends.api.outcome.RunOutcome), as its end line said it, by
    the kind its record gives (Store.get_run's RunRecord.kind): a profile's points by status
    and cause against its grid's trials, a load's requests as load_outcome counts them; a run
    of another kind, or one that stored no grid's sizes, is counted against its stored
    points."""
    from dataclasses import MISSING, fields

    from infermeter.backends.api.outcome import run_outcome
    from infermeter.experiments.load import stored_load
    from infermeter.experiments.profile import ProfileGrid

    kind, stored = record.kind, record.grid
    if kind.startswith("load"):
        return load_outcome(stored_load(stored), points)
    names = {f.name for f in fields(ProfileGrid)}
    needed = {f.name for f in fields(ProfileGrid) if f.default is MISSING}
    if kind != "profile" or not needed <= stored.keys():
        return run_outcome(points, len(points))
    grid = ProfileGrid(**{k: tuple(v) if isinstance(v, list) else v
                          for k, v in stored.items() if k in names})  # fmt: skip
    # Trials after the grid's are a second look's (experiments.second_look): counted apart,
    # so they neither stand in for a grid measurement never taken nor pass for the grid's.
    again = points["trial"] >= grid.trials
    outcome = run_outcome(points[~again], len(grid.points()))
    ok = points["status"] == "ok"
    outcome.measured_again = int((again & ok).sum())
    outcome.again_failed = int((again & ~ok).sum())
    return outcome
