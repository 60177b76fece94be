"""An experiment's plan from a caller's choices (the CLI's options, a notebook's arguments):
the profile grid and its validation queries, the load grid, the energy sweep and its defaults.
Each refuses a plan that cannot run with a UserError, before anything is measured.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from infermeter.errors import UserError
from infermeter.spec.model import ModelSpec

PAPER_TEMPERATURE, PAPER_TOP_P = 0.8, 0.95  # the paper's decoding settings (§III-A)
# The paper's sweep (4,096 prompts, batch 64-256, up to 1,024 tokens) and the one a CPU runs
# by default: the paper's would keep a 2-core CPU busy for hours with its first batch taking
# minutes, so a bare `infermeter energy gpt2` there shows nothing for that long.
GPU_DEFAULTS = {"prompts": 4096, "batch_sizes": "64,128,256", "max_lengths": "256,512,1024"}
CPU_DEFAULTS = {"prompts": 16, "batch_sizes": "4,8", "max_lengths": "16,32"}


def profile_grid(
    spec: ModelSpec,
    on_gpu: bool,
    trials: int,
    prompt_sizes: tuple[int, ...] | None,
    output_sizes: tuple[int, ...] | None,
    batch_sizes: tuple[int, ...] | None,
) -> Any:
    """The ProfileGrid of the sizes chosen (token counts), the defaults for the rest; the
    default grid's PE knots only with the default prompt sizes. Checked against `spec`."""
    from infermeter.experiments.profile import ProfileGrid, default_grid

    defaults = default_grid(spec, on_gpu, trials)
    grid = ProfileGrid(
        prompt_sizes or defaults.prompt_sizes,
        output_sizes or defaults.output_sizes,
        batch_sizes or (1,),
        trials,
        () if prompt_sizes else defaults.pe_sizes,  # PE knots go with the default prompt sizes
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
    ("concurrent": levels kept in flight; "rate": requests per second) for `duration_s` a
    level after `warmup_s`. Checked against `spec`; UserError for a bad mode or no levels."""
    from infermeter.experiments.load import LoadGrid, TimedLoad

    if mode == "burst":
        grid: Any = LoadGrid(prompt_tokens, output_sizes, concurrency or (1,), trials)
    elif mode in ("concurrent", "rate"):
        levels = rates if mode == "rate" else concurrency
        if not levels:
            raise UserError("--mode rate needs --rate, e.g. --rate 1,2,5 (requests per second)")
        grid = TimedLoad(
            prompt_tokens, output_sizes[0], mode, tuple(float(v) for v in levels), duration_s,
            warmup_s, arrival,  # type: ignore[arg-type]
        )  # fmt: skip
    else:
        raise UserError(f"--mode must be burst, concurrent or rate, got {mode!r}")
    grid.validate(spec)
    return grid


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
    requests that failed is marked incomplete. `on_step(label, measurements, total)` is
    called after each burst or timed level (`total`: the levels, given with the first)."""
    from infermeter.backends.api.outcome import run_outcome
    from infermeter.experiments.load import (
        LoadGrid,
        load_summary,
        run_load_sweep,
        run_timed_load,
        timed_summary,
    )

    step = on_step or (lambda label, ms, total=None: None)
    device = f"api: {options['base_url']}"
    stack = {"backend": "openai"}
    if isinstance(grid, LoadGrid):

        def burst(o: int, c: int, t: int, ms: list[Any]) -> None:
            step(f"o={o} c={c} max {max(m.runtime_s for m in ms):.3f}s", ms)

        run = run_load_sweep(db, spec, stack, runner, options, grid, on_start, burst, device)
        points = db.points(run.id)
        summary = load_summary(points)
        expected = sum(c for _, c, _ in grid.steps())
    else:
        step("", [], len(grid.levels))

        def level(value: float, ms: list[Any]) -> None:
            step(f"level {value:g}: {len(ms)} requests", ms)

        run = run_timed_load(db, spec, stack, runner, options, grid, level, device)
        points = db.points(run.id)
        summary = timed_summary(points, grid.duration_s)
        expected = len(points)  # a timed level has no fixed count: its failures count
    outcome = run_outcome(points, expected)
    if not outcome.complete:
        db.set_run_status(run.id, "incomplete")
    return LoadResult(run, summary, outcome)
