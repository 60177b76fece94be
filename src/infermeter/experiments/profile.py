"""Profiling: run a grid of (p, o, batch) points on a backend, storing each as it lands, then
check the fit on queries the grid never held.

Where energy is metered, a point gets an energy window of runs of the point back to back
that spans at least `min_energy_window_s` (default 1 s), and each trial gets the window's joules
over its runs: energy as a user measures it, over a second or more of the query repeated back
to back. The window spans whole calls, host work included, on every GPU the run uses (so tensor
parallelism is metered too); the runtime is the backend's wall clock of each whole call. A short
point's trials (at most ISOLATED_MAX_OUTPUT output tokens) are each timed alone, after a short
idle, before its window: at its power limit a card runs a prefill faster right after a pause
than in a stream, and the stream's time wanders with the clock controller, so the runtime price
is that of a query sent alone (reproducible to 0.5% on an H200), and the window's last runs give
the same point's time back to back (`sustained_runtime_s`, the sustained price). A longer
point's trials run at the window's start: its own calls are the stream. Measured on an H200
(docs/benchmarks/bias_diagnosis.md, idle_gap_llama-7b.md), an isolated energy window read 4%
below a window of a second, and a runtime of the device work alone 0.5-1 ms below the call a
user times. Unmetered profiles (a CPU, an API) go trial by trial over all points instead, so
that a burst of load spoils one trial of many points rather than all trials of one.

Validation: after the grid, `validate` queries drawn to look like what users price (half with
1-16 output tokens, p across the whole context; half longer), never on a profiled prompt size
nor a multiple of 64, are measured the same way and stored beside the points; their error is
the figure the profile reports about itself (fit.validation_errors). Before them, a metered
profile measures again the points its neighbours contradict (experiments.second_look).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from infermeter.backends.base import Backend, Measurement, Point
from infermeter.errors import ResumeRefused, UserError, is_oom
from infermeter.experiments.run import RunIdentity, path_changed, resumable_run
from infermeter.experiments.second_look import suspects
from infermeter.measure.meter import Meter, check_warmup_s, warm_up
from infermeter.model.cost_model import CostModel
from infermeter.model.decode import head_length
from infermeter.spec.model import ModelSpec
from infermeter.store.db import RunRecord, Store, run_key
from infermeter.store.extra import SUSTAINED_KEY
from infermeter.units import plural

# The paper's profile for a 2,048-token context (§3.4), and the default grid that replaced it
# (see default_grid): short outputs along o, and PE across the whole context.
PAPER_PROMPT_SIZES = (1, 256, 512, 1024, 1536)
PAPER_OUTPUT_SIZES = (1, 32, 64, 128, 256)
GPU_OUTPUT_SIZES = (1, 2, 4, 8, 32, 128, 512)
CPU_OUTPUT_SIZES = (1, 2, 4, 8, 16, 32)
# Trials per point by default, on a GPU and a CPU alike. Measured for `profile gpt2` on a
# 2-core VM: 2 trials took 29-37 s quiet but missed the validation queries by 9-15% (the first
# call of each prompt length is slow on a CPU, so one trial of two is cold); 3 trials took
# 36-37 s quiet and 97 s beside two busy processes, and missed them by 4-8%.
DEFAULT_TRIALS = 3
# Energy over at least this much of a query back to back (what a user's meter reads).
MIN_ENERGY_WINDOW_S = 1.0
# Metered points of at most this many output tokens are timed alone: each trial after
# ISOLATION_S of idle, before the point's energy window (see measure_point). At its power limit
# an H200 runs a prefill 9-17% faster right after a pause than a second into a stream of such
# queries, and the stream's time wanders by 3-5% with the controller (idle_gap_llama-7b.md);
# after a pause it is the same to 0.5% whether the pause was 0.15 s or 8 s.
ISOLATED_MAX_OUTPUT = 32
ISOLATION_S = 0.05
# A window's time back to back: the fastest of its last this many runs (a sustained price).
SUSTAINED_RUNS = 3
# Validation outputs stop here: longer ones cost seconds each and price like shorter ones.
LONGEST_VALIDATION_OUTPUT = 256
# Validation queries by default: many where a GPU makes them cheap, a few on a CPU.
DEFAULT_VALIDATE_GPU = 16
DEFAULT_VALIDATE_CPU = 4
# The default grid profiles prompts up to this many tokens. Its PE knots and decode curves
# scale with the context, so a 131k model's whole context costs ~10 min of an H200 where
# 32k costs a few; longer prompts are priced by extrapolation, with a warning.
DEFAULT_MAX_CONTEXT = 32_768
# Below this prompt size a GPU's prefill turns from reading the weights to computing, and PE
# bends: on an H200 (docs/benchmarks/pe_low_llama-7b.md, pe_low_llama-13b.md) lines between
# knots 128 tokens apart ran 2.2% (LLaMA-7B) and 0.8% (13B) above PE measured every 4 tokens
# in 1..642, and knots 64 apart cut that to 1.6% and 0.4% (MAPE 3.2 -> 2.4%, 2.1 -> 1.5%: the
# same sweeps, pe_low_llama-7b_knots64.md, pe_low_llama-13b_knots64.md). So a
# GPU grid has a knot every LOW_KNOT_STEP tokens from 33 to here, whatever its context (none
# within half a step of a knot it already has, e.g. a MoE's expert knots): a 32k
# model's regular knots are 2,048 apart, and a line from p = 1 to 2,017 runs tens of percent
# above a 300-token prompt's PE.
LOW_KNOTS_BELOW = 512
LOW_KNOT_STEP = 64
# Past these errors on the validation queries a fit is not to be trusted: a quiet machine's
# profile misses them by a few percent (gpt2 on a 2-core CPU: 2.3%; llama-7b on an H200: 1.0%
# runtime, 7.5% energy), a machine busy with other work by tens of percent.
NOISY_MAPE_PCT = 10.0
NOISY_MAX_PCT = 25.0


@dataclass(frozen=True)
class ProfileGrid:
    """The points to profile: every prompt size × output length × batch size, prompt sizes
    measured at o = 1 only (`pe_sizes`: PE knots between the others) and prompt sizes measured
    at the head's output lengths only (`head_sizes`: o up to where decode steps are read off
    the curves, see head_outputs), `trials` times each."""

    prompt_sizes: tuple[int, ...]
    output_sizes: tuple[int, ...]
    batch_sizes: tuple[int, ...] = (1,)
    trials: int = 3
    pe_sizes: tuple[int, ...] = ()
    head_sizes: tuple[int, ...] = ()

    @property
    def profiled_sizes(self) -> set[int]:
        """Every prompt size the grid measures at, at any output length."""
        return set(self.prompt_sizes) | set(self.pe_sizes) | set(self.head_sizes)

    def head_outputs(self) -> tuple[int, ...]:
        """The output lengths of a head curve: the grid's, up to o₁ as model.decode reads it off
        the lengths past o = 1 (1, 2, 4, 8 on a GPU's default grid; 1, 20 for 1, 20, 40); all
        of them where no segment is long enough to end a head."""
        outputs = sorted(set(self.output_sizes))
        end = head_length([o for o in outputs if o > 1])
        return tuple(o for o in outputs if end is None or o <= end)

    def validate(self, spec: ModelSpec) -> None:
        """Raise UserError for an empty or non-positive size or trial count, or a point whose prompt
        and output exceed the model's context."""
        for label, sizes in (
            ("prompt sizes (--prompt-sizes)", self.prompt_sizes),
            ("output lengths (--output-sizes)", self.output_sizes),
            ("batch sizes (--batch-sizes)", self.batch_sizes),
            ("PE prompt sizes", self.pe_sizes or (1,)),
            ("head prompt sizes", self.head_sizes or (1,)),
        ):
            if not sizes:
                raise UserError(f"no {label} given")
            bad = [s for s in sizes if s <= 0]
            if bad:
                raise UserError(f"{label} must be positive, got {bad[0]}")
        if self.trials < 1:
            raise UserError(f"trials (--trials) must be at least 1, got {self.trials}")
        if len(set(self.output_sizes)) < 2:
            raise UserError(
                "the grid needs at least two distinct output lengths per prompt size to fit a "
                "line; pass e.g. --output-sizes 1,16,32"
            )
        longest = max(self.prompt_sizes) + max(self.output_sizes)
        if longest > spec.max_context:
            raise UserError(
                f"prompt {max(self.prompt_sizes)} + output {max(self.output_sizes)} = {longest} "
                f"tokens exceeds {spec.name}'s context of {spec.max_context}; use smaller sizes"
            )
        head_longest = max(self.head_outputs())
        if self.head_sizes and max(self.head_sizes) + head_longest > spec.max_context:
            raise UserError(
                f"head prompt size {max(self.head_sizes)} + output {head_longest} "
                f"exceeds {spec.name}'s context of {spec.max_context}; use smaller sizes"
            )
        if self.pe_sizes and max(self.pe_sizes) + 1 > spec.max_context:
            raise UserError(
                f"PE prompt size {max(self.pe_sizes)} leaves no room for an output token in "
                f"{spec.name}'s context of {spec.max_context}"
            )

    def shapes(self) -> list[Point]:
        """Every (p, o, batch) once (trial 0), in the order they are measured: by batch, then
        prompt size, then output length (o = 1 first, so prefill energy is known early)."""
        outputs = sorted(set(self.output_sizes))
        curve, head = set(self.prompt_sizes), set(self.head_sizes) - set(self.prompt_sizes)
        head_outputs = list(self.head_outputs())
        return [
            Point(p, o, b, 0)
            for b in sorted(set(self.batch_sizes))
            for p in sorted(self.profiled_sizes)
            for o in (outputs if p in curve else head_outputs if p in head else [1])
        ]

    def points(self) -> list[Point]:
        """Every trial of every shape."""
        return [replace(s, trial=t) for s in self.shapes() for t in range(self.trials)]

    def to_dict(self) -> dict[str, object]:
        """The grid as stored with the run (runs.grid_json) and part of its key."""
        out = {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }
        for key in ("pe_sizes", "head_sizes"):  # grids without them keep earlier versions' keys
            if not out[key]:
                out.pop(key)
        return out


def _off64(p: int) -> int:
    """Move a prompt size off a multiple of 64 (measured on an H200, such sizes are 1.5% slower
    than their neighbours: a knot there would price typical prompts high)."""
    return p - 31 if p % 64 == 0 and p > 64 else p


def default_context(spec: ModelSpec, max_context: int | None = None) -> int:
    """The context (tokens) the default grid covers: `max_context` if given, else the
    model's own up to DEFAULT_MAX_CONTEXT. Raises UserError for a value past the model's
    context or below 2."""
    if max_context is None:
        return min(spec.max_context, DEFAULT_MAX_CONTEXT)
    if not 2 <= max_context <= spec.max_context:
        raise UserError(
            f"--max-context must be 2..{spec.max_context} ({spec.name}'s context), "
            f"not {max_context}"
        )
    return max_context


def default_grid(
    spec: ModelSpec, on_gpu: bool, trials: int = DEFAULT_TRIALS, max_context: int | None = None
) -> ProfileGrid:
    """The default grid for `spec`'s context, up to `default_context(spec, max_context)`.

    Decode curves at three prompt sizes from 1 to the largest that leaves room for the longest
    output (GPU: o = 1 .. 512, a quarter of a 2,048 context; CPU: o = 1 .. 32), and PE knots
    every sixteenth of the context up to its end (every eighth up to half of it on a CPU, where
    long prefills are slow, unless `max_context` is given: then up to its end), all off
    multiples of 64. A GPU grid also has PE knots every LOW_KNOT_STEP tokens from 33 below
    LOW_KNOTS_BELOW, where prefill bends from memory- to compute-bound, and a MoE grid knots
    where its prompts' expert reads saturate (expert_knots), and a head curve (head_curve). On
    an H200 a LLaMA-7B profile of this grid takes about 146 s with its energy windows and
    validation (3b91f5a).
    """
    context = default_context(spec, max_context)
    wanted = GPU_OUTPUT_SIZES if on_gpu else CPU_OUTPUT_SIZES
    outputs = tuple(o for o in wanted if o == 1 or o <= context // 4)
    if len(outputs) < 2:
        outputs = (1, 2)
    last = context - max(outputs)  # the largest prompt size every output length fits after
    if on_gpu:
        curve = sorted({1, _off64(last // 2), _off64(last)})
        pe_end, pe_step = context - 1, max(1, context // 16)
    else:  # half the context unless --max-context asked for more: long prefills are slow here
        curve = sorted({1, _off64(max(2, context // 8)), _off64(max(3, context // 4))})
        pe_end = _off64(context // 2) if max_context is None else context - 1
        pe_step = max(1, context // 8)  # one knot at the end
    curve = [p for p in curve if 1 <= p <= last] or [1]
    pe = sorted(
        {_off64(p) for p in range(pe_step, pe_end + 1, pe_step) if p + 1 <= context} | {pe_end}
    )
    pe = sorted(set(pe) | set(expert_knots(spec, pe[0] if pe else context - 1)))
    if on_gpu and pe_step > LOW_KNOT_STEP:  # not where regular knots are as close already
        pe = sorted(set(pe) | set(low_knots(context, set(pe) | set(curve))))
    pe = [p for p in pe if p not in curve and 1 <= p <= context - 1]
    head = head_curve(curve, pe) if on_gpu else []
    pe = [p for p in pe if p not in head]
    return ProfileGrid(tuple(curve), outputs, (1,), trials, tuple(pe), tuple(head))


def head_curve(curve: list[int], pe: list[int]) -> list[int]:
    """Where a GPU grid measures the head (o up to o₁) between its first two curves: at the PE
    knot nearest their midpoint, capped at LOW_KNOTS_BELOW (none with fewer than two curves or
    no knot between them).

    The head of a query between curves is otherwise a blend of the curves' heads, each the
    difference of two prefill-heavy points at the card's power limit: D(p, 2) = t(p, 2) −
    t(p, 1) moved 0.3-0.75 ms between LLaMA-13B profiles on an H200 (7.19 / 7.23 ms at the
    curves' p = 1 and 737 at 7254be0, where the benchmark's query at p = 336, o = 2 was priced
    5.1% high). A head curve between them is one more such measurement where the blend is
    weakest. At 3b91f5a (docs/benchmarks/heldout.md) it took LLaMA-7B's held-out runtime
    maximum from 3.57 to 3.20% and its validation's from 5.42 to 4.74% (the same run priced
    without the curve's points), and changed nothing for 13B (2.85% either way). Three points
    (o = 2, 4, 8) at a knot measured anyway; a head more than FIRST_STEP_SHARE below the later
    steps is priced at their cost, as any curve's (model.decode).
    """
    if len(curve) < 2:
        return []
    target = min((curve[0] + curve[1]) // 2, LOW_KNOTS_BELOW)
    between = [p for p in pe if curve[0] < p < curve[1]]
    if not between:
        return []
    return [min(between, key=lambda p: (abs(p - target), p))]


def low_knots(context: int, taken: set[int]) -> list[int]:
    """PE knots every LOW_KNOT_STEP tokens from 33 below LOW_KNOTS_BELOW (and the context's
    last token), none within half a step of a prompt size in `taken` (the grid's other knots
    and curves), where a GPU's prefill bends from reading the weights to computing."""
    return [
        p
        for p in range(33, min(LOW_KNOTS_BELOW, context - 1), LOW_KNOT_STEP)
        if all(abs(p - q) >= LOW_KNOT_STEP // 2 for q in taken)
    ]


def expert_knots(spec: ModelSpec, below: int) -> list[int]:
    """PE knots where a mixture of experts' prefill stops growing fast (token counts < `below`).

    A prompt of p tokens reads the experts its tokens route to, E·(1 − (1 − k/E)^p) of E per
    layer (spec.moe.expected_distinct), which rises steeply over the first few dozen tokens and
    then saturates: a straight line from p = 1 to the first regular knot runs below it (on an
    H200 the estimate of a 68-token prompt of Qwen3-30B-A3B was 14% low). Knots at the
    smallest p touching a quarter, half, three quarters, 90% and 99% of the experts follow
    the bend (lines through them stay within 3% of it where reading every expert costs up to
    twice a one-token prefill); short prompts cost little to profile. None for a dense model.
    """
    if spec.moe is None:
        return []
    moe, knots = spec.moe, []
    for share in (0.25, 0.5, 0.75, 0.9, 0.99):
        p = next(
            (n for n in range(2, below) if moe.expected_distinct(n) >= share * moe.num_experts),
            None,
        )
        if p is not None:
            knots.append(p)
    return sorted(set(knots))


def validation_queries(spec: ModelSpec, grid: ProfileGrid, count: int) -> list[Point]:
    """`count` queries never profiled, shaped like what users price, the same on every rerun.

    Half have 1-16 output tokens and p anywhere in the profiled range (classification and QA,
    the paper's §5.4 workloads, where PE decides the price); half have longer outputs, up to the
    grid's longest or 256. None is on a profiled prompt size or a multiple of 64, and none lies past
    the grid's largest prompt size (the default grid reaches the end of the context; an API's
    context is unknown). Fewer come back where the range holds fewer such queries.
    """
    if count < 0:
        raise UserError(f"--validate must be 0 or more queries, not {count}")
    context = spec.max_context
    longest = max(grid.output_sizes)
    seed = int(hashlib.sha256(f"{spec.name}:{context}:{longest}".encode()).hexdigest()[:8], 16)
    rng = np.random.default_rng(seed)
    profiled = grid.profiled_sizes
    largest = max(profiled)
    batch = min(grid.batch_sizes)
    queries: list[Point] = []
    seen: set[tuple[int, int]] = set()
    attempts = 0
    while len(queries) < count and attempts < 10_000:
        attempts += 1
        short = len(queries) < (count + 1) // 2
        long_high = min(longest, LONGEST_VALIDATION_OUTPUT)
        o_low, o_high = (1, min(16, longest)) if short else (min(17, long_high), long_high)
        o = int(rng.integers(o_low, o_high + 1))
        high = min(context - o, largest)
        if high < 2:
            continue
        p = int(rng.integers(2, high + 1))
        if p % 64 == 0 or p in profiled or (p, o) in seen:
            continue
        seen.add((p, o))
        queries.append(Point(p, o, batch, 0))
    return queries


ProgressCallback = Callable[[Point, Measurement], None]


def profile_key(
    spec: ModelSpec,
    stack: dict,
    backend: str,
    options: dict,
    grid: ProfileGrid,
    metered: bool = False,
) -> str:
    """Same inputs, same key. A metered profile is keyed apart from an unmetered one (the
    energy windows are part of what it measures), so metering never resumes into a run whose
    points have no joules; unmetered keys are those of earlier versions."""
    parts = {
        "spec": spec.to_dict(),
        "stack": stack,
        "backend": backend,
        "options": options,
        "grid": grid.to_dict(),
    }
    return run_key({**parts, "metered": True} if metered else parts)


@dataclass(frozen=True)
class ProfileSettings:
    """What a profile measures (see run_profile): the model, the stack and backend options it
    is keyed by, the grid, the device in words, the energy window's least length (s), the
    thermal warm-up (s), the number of validation queries, and whether a metered profile takes
    a second look at points their neighbours contradict (experiments.second_look)."""

    spec: ModelSpec
    stack: dict
    backend_options: dict
    grid: ProfileGrid
    device: str = ""
    min_energy_window_s: float = MIN_ENERGY_WINDOW_S
    warmup_s: float = 0.0
    validate: int = 0
    second_look: bool = False


@dataclass(frozen=True)
class ProfileProgress:
    """Told of a profile: `on_start(run, done, total)` in trials, validation included,
    `on_point(point, measurement)` for each trial as it is stored, and `on_more(trials)` when
    the profile adds trials to the total it said (a second look at suspect points)."""

    on_start: Callable[[RunRecord, int, int], None] | None = None
    on_point: ProgressCallback | None = None
    on_more: Callable[[int], None] | None = None


@dataclass(frozen=True)
class _ProfileTodo:
    """What a profile has left: grid shapes and validation queries with a trial missing, the
    trials stored of each, and the trials left over those of the whole profile."""

    grid: list[Point]
    checks: list[Point]
    done: set[Point]
    checked: set[Point]
    remaining: int
    total: int


class ProfileExperiment:
    """The (prompt size, output length) grid of paper 1 §3.3, then the validation queries
    (infermeter.experiments.base.Experiment; see run_profile and the module docstring)."""

    name = "profile"

    def run(
        self,
        store: Store,
        backend: Backend,
        config: ProfileSettings,
        meter: Meter | None,
        progress: ProfileProgress,
    ) -> RunRecord:
        """Measure every point and validation query of `config` not already stored; see
        run_profile. Raises UserError for a grid that does not fit the model, a bad warm-up,
        or a run measured by another process; the backend's errors propagate (the run is
        then "interrupted", or deleted if new and empty)."""
        spec, grid = config.spec, config.grid
        grid.validate(spec)
        check_warmup_s(config.warmup_s)
        queries = validation_queries(spec, grid, config.validate)
        # A GPU that gives no joules (no counter, no power reading) profiles runtime only; the
        # run's record says so (backend_info["meter"]: energy_method "none" and the note).
        metering = meter is not None and meter.measures_energy
        identity = RunIdentity(
            key=profile_key(
                spec, config.stack, backend.name, config.backend_options, grid, metering
            ),
            model=spec.name,
            spec=spec.to_dict(),
            stack=config.stack,
            backend=backend.name,
            backend_info=config.backend_options,
            grid=grid.to_dict(),
            device=config.device,
        )

        def missing(existing: RunRecord | None) -> _ProfileTodo:
            done = store.finished_points(existing.id) if existing else set()
            checked = store.finished_validation(existing.id) if existing else set()
            grid_todo = [s for s in grid.shapes() if _missing(s, grid.trials, done)]
            check_todo = [q for q in queries if _missing(q, grid.trials, checked)]
            remaining = sum(len(_missing(s, grid.trials, done)) for s in grid_todo) + sum(
                len(_missing(q, grid.trials, checked)) for q in check_todo
            )
            total = (len(grid.shapes()) + len(queries)) * grid.trials
            return _ProfileTodo(grid_todo, check_todo, done, checked, remaining, total)

        # one process per run: a second identical command stops here
        resume = resumable_run(store, identity, missing)
        todo = resume.todo
        if resume.existing is not None and not todo.grid and not todo.checks:
            if progress.on_start:
                progress.on_start(resume.existing, todo.total, todo.total)
            return resume.mark_complete()

        # The start-up checks (memory, the model itself; an API's port, key and calibration)
        # run before the run is recorded: one that fails leaves no empty run behind, and a run
        # that has points keeps its status, to be resumed by the same command.
        def prepare() -> None:
            try:
                backend.prepare(spec)
                if resume.existing is not None and (todo.done or todo.checked):
                    problem = path_changed(resume.existing.backend_info, backend.describe())
                    if problem:
                        raise ResumeRefused(problem)
            except BaseException:
                backend.close()
                raise

        def started(run: RunRecord) -> None:
            if progress.on_start:
                progress.on_start(run, todo.total - todo.remaining, todo.total)

        def cleanup() -> None:
            if meter is not None:
                meter.stop()
            backend.close()

        with resume.open(
            before=prepare, on_start=started, cleanup=cleanup, discard_if_empty=True
        ) as active:
            self._measure(store, active.run.id, backend, config, meter, progress, todo)
        return store.get_run(active.run.id)

    @staticmethod
    def _measure(
        store: Store,
        run_id: int,
        backend: Backend,
        config: ProfileSettings,
        meter: Meter | None,
        progress: ProfileProgress,
        todo: _ProfileTodo,
    ) -> None:
        """Measure what is left into run `run_id`: metered point by point, else trial-major."""
        grid, min_window_s = config.grid, config.min_energy_window_s
        metering = meter is not None and meter.measures_energy
        info = {**config.backend_options, **backend.describe()}
        if meter is not None and meter.available:
            info["meter"] = meter.describe()
        if metering:
            info["energy_window"] = (
                f"whole calls back to back, at least {min_window_s:g} s per point"
            )
        store.update_run_backend(run_id, info)
        recorder = _Recorder(store, run_id, meter if metering else None, progress.on_point)
        if metering:
            assert meter is not None
            meter.measure_idle(1.0)
            meter.start()
            if config.warmup_s > 0:
                # The longest generation after the longest prompt that allows it: decode
                # and prefill, the work the profile is made of (not a prefill-only PE knot).
                heavy = max(
                    todo.grid or todo.checks,
                    key=lambda p: (p.batch_size, p.output_tokens, p.prompt_tokens),
                )
                info["thermal_warmup"] = thermal_warmup(backend, heavy, meter, config.warmup_s)
                store.update_run_backend(run_id, info)
            phases = PhaseSplit(backend, meter, min_window_s)
            again = list(range(grid.trials, 2 * grid.trials))
            for shape in todo.grid:
                trials = _missing(shape, grid.trials, todo.done)
                measured = measure_point(backend, shape, trials, meter, min_window_s)
                for point, measurement in measured:
                    phases.split(point, measurement)
                recorder.record(measured, validation=False)
            # A second look at points their neighbours contradict (experiments.second_look).
            looked = (
                suspects(store.points(run_id), (*grid.prompt_sizes, *grid.head_sizes), grid.trials)
                if config.second_look
                else []
            )
            if looked and progress.on_more is not None:
                progress.on_more(len(looked) * len(again))
            for shape in looked:
                measured = measure_point(backend, shape, again, meter, min_window_s)
                for point, measurement in measured:
                    phases.split(point, measurement)
                recorder.record(measured, validation=False)
            if looked:
                info["second_look"] = [f"p={s.prompt_tokens} o={s.output_tokens}" for s in looked]
                store.update_run_backend(run_id, info)
            for query in todo.checks:
                trials = _missing(query, grid.trials, todo.checked)
                measured = measure_point(backend, query, trials, meter, min_window_s)
                recorder.record(measured, validation=True)
            _describe_again(store, run_id, info, backend)
            return
        # Unmetered (a CPU, an API): trial-major, so that a burst of load on a shared
        # machine or server spoils one trial of many points, not every trial of one.
        for shapes, stored, validation in (
            (todo.grid, todo.done, False),
            (todo.checks, todo.checked, True),
        ):
            for trial in range(grid.trials):
                for shape in shapes:
                    if trial in _missing(shape, grid.trials, stored):
                        point = replace(shape, trial=trial)
                        recorder.record([(point, backend.measure(point))], validation)
        _describe_again(store, run_id, info, backend)


def _describe_again(store: Store, run_id: int, info: dict, backend: Backend) -> None:
    """The run's backend record as the backend describes itself after measuring (notes of
    what it learnt meanwhile, e.g. output lengths it could not verify)."""
    info.update(backend.describe())
    store.update_run_backend(run_id, info)


def run_profile(
    store: Store,
    spec: ModelSpec,
    stack: dict,
    backend: Backend,
    backend_options: dict,
    grid: ProfileGrid,
    on_start: Callable[[RunRecord, int, int], None] | None = None,
    on_point: ProgressCallback | None = None,
    device: str = "",
    meter: Meter | None = None,
    min_energy_window_s: float = MIN_ENERGY_WINDOW_S,
    warmup_s: float = 0.0,
    validate: int = 0,
    second_look: bool = False,
    on_more: Callable[[int], None] | None = None,
) -> RunRecord:
    """Measure every point of `grid` and every validation query not already stored.

    Each point's trials are committed together before the next point runs; an interrupted
    profile (Ctrl-C, a crash, SIGKILL) resumes at the point it was measuring when the same
    profile is asked for again. With a `meter`, each point's trials and their energy window
    are measured as the module docstring says, and the power samples land in the store beside
    them; a metered profile first runs its largest point for `warmup_s` seconds, unrecorded, so
    the card is at working temperature. `on_start` gets (run, done, total) counted in trials,
    validation included; `on_point` each trial as it is stored. With `second_look` (what
    `infermeter profile` does on a GPU), a metered profile measures again, before its
    validation, the points experiments.second_look suspects, telling `on_more` the trials
    that adds to the total. Returns the run's record; raises
    UserError as ProfileExperiment.run says.
    """
    settings = ProfileSettings(
        spec, stack, backend_options, grid, device, min_energy_window_s, warmup_s, validate,
        second_look,
    )  # fmt: skip
    progress = ProfileProgress(on_start, on_point, on_more)
    return ProfileExperiment().run(store, backend, settings, meter, progress)


def trust_warning(model: CostModel) -> str | None:
    """A plain warning when the profile's own evidence (its error on the validation queries,
    `model.fit["validation"]`) says the machine was too noisy for a trustworthy fit."""
    check = (model.fit or {}).get("validation") or {}
    mape, worst = check.get("mape_pct"), check.get("max_error_pct")
    if not check.get("n") or mape is None or worst is None:
        return None
    if mape <= NOISY_MAPE_PCT and worst <= NOISY_MAX_PCT:
        return None
    what = "time" if model.quantity == "runtime_s" else "energy"
    return (
        f"the machine was too noisy for a trustworthy {what} fit: on "
        f"{plural(check['n'], 'query')} never profiled its estimates are off by {mape:.1f}% on "
        f"average and up to {worst:.1f}% "
        f"(a quiet machine: a few percent); rerun with other work stopped, or with more "
        "--trials"
    )


def _missing(shape: Point, trials: int, done: set[Point]) -> list[int]:
    """The trial indices of `shape` not yet stored."""
    return [t for t in range(trials) if replace(shape, trial=t) not in done]


class _Recorder:
    """Stores a point's trials in one transaction, with the power samples taken meanwhile."""

    def __init__(
        self, store: Store, run_id: int, meter: Meter | None, on_point: ProgressCallback | None
    ) -> None:
        self.store, self.run_id, self.meter, self.on_point = store, run_id, meter, on_point

    def record(self, measured: list[tuple[Point, Measurement]], validation: bool) -> None:
        """Store one point's trials (validation queries or grid points) with the samples taken since
        the last point, then tell `on_point` of each."""
        for point, measurement in measured:
            _flag_wrong_length(point, measurement)
        self.store.record_points(self.run_id, measured, validation=validation)
        if self.meter is not None:  # the samples since the last point leave the meter
            self.store.record_samples(self.run_id, self.meter.drain(unix=True))
        if self.on_point:
            for point, measurement in measured:
                self.on_point(point, measurement)


def _flag_wrong_length(point: Point, measurement: Measurement) -> None:
    """Kept for the record, left out of fits: the length was not what was asked."""
    produced = measurement.output_tokens_actual
    if measurement.status == "ok" and produced is not None and produced != point.output_tokens:
        measurement.status = "flagged"
        measurement.detail = f"produced {plural(produced, 'token')}, asked {point.output_tokens}"


def thermal_warmup(
    backend: Backend, point: Point, meter: Meter, seconds: float
) -> dict[str, float | int | None]:
    """Run `point` back to back for `seconds` before a metered profile; nothing is recorded
    (see infermeter.measure.meter.warm_up). Its first call sets the shape up (kernel compilation,
    graph capture: 17 s on an H200 for LLaMA-7B, at idle power) and is not counted."""
    setup_started = meter.clock.now()
    backend.measure(replace(point, trial=0))
    setup_s = meter.clock.now() - setup_started
    return {
        **warm_up(lambda: backend.measure(replace(point, trial=0)), meter, seconds),
        "setup_s": setup_s,
        "prompt_tokens": point.prompt_tokens,
        "output_tokens": point.output_tokens,
    }


def _warm(backend: Backend, warm: Callable[[Point], None], point: Point) -> bool:
    """warm(point), and once more after the backend has freed its KV cache and graphs
    (`release()`) if memory ran out; False when the second ran out too. The shape's runs
    then get no energy window (their set-up would be in it), and a shortage of their own is
    an error Measurement: a shortage at one shape must not end a profile with a traceback
    and leave the points after it unmeasured."""
    release = getattr(backend, "release", None)
    for _ in range(2):
        try:
            warm(point)
            return True
        except Exception as error:
            if not is_oom(error):
                raise
            if release is not None:
                release()
    return False


def measure_point(
    backend: Backend,
    shape: Point,
    trials: list[int],
    meter: Meter | None = None,
    min_window_s: float = MIN_ENERGY_WINDOW_S,
) -> list[tuple[Point, Measurement]]:
    """The given trials of one (p, o, batch) shape; with a meter, and an energy window of
    runs of the shape back to back for at least `min_window_s`.

    Every trial's runtime is its own whole call. With a meter, a shape of at most
    ISOLATED_MAX_OUTPUT output tokens is timed alone: each trial after ISOLATION_S of idle (on
    the meter's clock), then the window; a longer one's trials run back to back at the window's
    start (its own calls are the stream). Each ok trial's energy_j is the window's joules over
    the number of runs in it (a mean: the window is one reading), and its extra holds the
    window's figures (energy_window_runs, energy_window_s, method, per-GPU joules), its time
    back to back (`sustained_runtime_s`: the fastest of the window's last SUSTAINED_RUNS runs)
    and, if timed alone, the idle before it (`idle_before_s`). Trials that fail leave the
    window of an isolated shape unrun (no energy); a shape whose untimed set-up ran out of
    memory twice (_warm) gets no window either (its trials' extra say so: energy_skipped).
    """
    metered = meter is not None and meter.measures_energy
    warmed, warm = True, getattr(backend, "warm", None)
    if metered and warm is not None:
        # A shape's first visit sets it up untimed (warm-up run, graph capture); in the window
        # that work's joules would be charged to the runs (on an H200, 10-20% of a new prompt
        # size's energy). Runtimes never held it: the backends time only the generation.
        warmed = _warm(backend, warm, replace(shape, trial=0))
    window = meter.window("point") if metered and warmed and meter is not None else None
    measured: list[tuple[Point, Measurement]] = []
    in_window: list[Measurement] = []  # every run inside the window, trials included
    alone = window is not None and shape.output_tokens <= ISOLATED_MAX_OUTPUT
    try:
        if alone:
            assert meter is not None
            for trial in trials:
                meter.clock.sleep(ISOLATION_S)  # the work is synchronised: the GPU rests
                point = replace(shape, trial=trial)
                measured.append((point, backend.measure(point)))
        if window is not None and all(m.status == "ok" for _, m in measured):
            window.begin()
            if not alone:
                for trial in trials:
                    point = replace(shape, trial=trial)
                    measured.append((point, backend.measure(point)))
                    in_window.append(measured[-1][1])
            while all(m.status == "ok" for m in in_window) and (
                not in_window or window.elapsed() < min_window_s
            ):
                in_window.append(backend.measure(replace(shape, trial=0)))
        elif window is None:
            for trial in trials:
                point = replace(shape, trial=trial)
                measured.append((point, backend.measure(point)))
    finally:
        result = window.close() if window is not None else None
    if result is None:
        for _, measurement in measured if not warmed else ():
            measurement.extra["energy_skipped"] = "its set-up ran out of memory twice"
        return measured
    runs = len(in_window)
    last = [m.runtime_s for m in in_window[-SUSTAINED_RUNS:] if m.status == "ok"]
    for _, measurement in measured:
        if measurement.status != "ok":
            continue
        measurement.energy_j = None if result.total_j is None else result.total_j / runs
        measurement.extra["energy_window_runs"] = runs
        measurement.extra.update(result.as_extra())
        if last and all(t is not None for t in last):
            measurement.extra[SUSTAINED_KEY] = min(last)
        if alone:
            measurement.extra["idle_before_s"] = ISOLATION_S
    return measured


class PhaseSplit:
    """Energy by phase: prefill (prompt encoding and the first token) vs decode.

    A prefill lasts milliseconds, far below the energy counter's update period, so it is not
    read off a mark inside the query: it is the energy of its own query, (p, o = 1), measured
    back to back in one window (the grid's o = 1 points serve, measured first for each prompt
    size; otherwise one extra window per prompt size). A query's decode energy is then its
    energy less its prompt size's prefill energy.
    """

    def __init__(self, backend: Backend, meter: Meter | None, min_window_s: float) -> None:
        self.backend = backend
        self.meter = meter
        self.min_window_s = min_window_s
        self._prefill: dict[tuple[int, int], list[float]] = {}

    def split(self, point: Point, measurement: Measurement) -> None:
        """Put energy_prefill_j and energy_decode_j on an ok, metered measurement."""
        if measurement.status != "ok" or measurement.energy_j is None:
            return
        key = (point.prompt_tokens, point.batch_size)
        if point.output_tokens == 1:
            self._prefill.setdefault(key, []).append(measurement.energy_j)
        elif key not in self._prefill:
            prefill = Point(point.prompt_tokens, 1, point.batch_size, 0)
            (_, first), *_ = measure_point(
                self.backend, prefill, [0], self.meter, self.min_window_s
            )
            if first.status != "ok" or first.energy_j is None:
                return
            self._prefill[key] = [first.energy_j]
        prefill_j = float(np.mean(self._prefill[key]))
        measurement.extra["energy_prefill_j"] = prefill_j
        measurement.extra["energy_decode_j"] = measurement.energy_j - prefill_j
        if point.output_tokens > 1:
            per_token = measurement.extra["energy_decode_j"] / (point.output_tokens - 1)
            measurement.extra["energy_per_decode_token_j"] = per_token
