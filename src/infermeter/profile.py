"""Profiling: run a grid of (p, o, batch, trial) points on a backend, storing each as it lands."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from infermeter.backends.base import Backend, Measurement, Point
from infermeter.errors import UserError
from infermeter.meter import EnergyWindow, Meter, check_warmup_s, warm_up
from infermeter.spec import ModelSpec
from infermeter.store import RunRecord, Store, run_key

# The paper's profile for a 2,048-token context (§3.4) and a light one for CPUs.
PAPER_PROMPT_SIZES = (1, 256, 512, 1024, 1536)
PAPER_OUTPUT_SIZES = (1, 32, 64, 128, 256)
CPU_PROMPT_SIZES = (1, 64, 128, 256)
CPU_OUTPUT_SIZES = (1, 8, 16, 32)


@dataclass(frozen=True)
class ProfileGrid:
    """The points to profile: every prompt size × output length × batch size, `trials` times."""

    prompt_sizes: tuple[int, ...]
    output_sizes: tuple[int, ...]
    batch_sizes: tuple[int, ...] = (1,)
    trials: int = 3

    def validate(self, spec: ModelSpec) -> None:
        for label, sizes in (
            ("prompt size", self.prompt_sizes),
            ("output length", self.output_sizes),
            ("batch size", self.batch_sizes),
        ):
            if not sizes:
                raise UserError(f"no {label}s given")
            bad = [s for s in sizes if s <= 0]
            if bad:
                raise UserError(f"{label}s must be positive, got {bad[0]}")
        if self.trials < 1:
            raise UserError(f"trials must be at least 1, got {self.trials}")
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

    def points(self) -> list[Point]:
        """Trial-major order, so slow drift of the machine spreads over all points alike."""
        return [
            Point(p, o, b, t)
            for t in range(self.trials)
            for b in sorted(set(self.batch_sizes))
            for p in sorted(set(self.prompt_sizes))
            for o in sorted(set(self.output_sizes))
        ]

    def to_dict(self) -> dict[str, object]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }


def default_grid(spec: ModelSpec, on_gpu: bool, trials: int = 3) -> ProfileGrid:
    """The paper's grid on a GPU, a lighter one on a CPU; shrunk to fit the context."""
    prompts, outputs = (
        (PAPER_PROMPT_SIZES, PAPER_OUTPUT_SIZES) if on_gpu else (CPU_PROMPT_SIZES, CPU_OUTPUT_SIZES)
    )
    scale = 1.0
    while max(prompts) * scale + max(outputs) * scale > spec.max_context:
        scale /= 2
    sized_p = tuple(sorted({max(1, int(p * scale)) for p in prompts}))
    sized_o = tuple(sorted({max(1, int(o * scale)) for o in outputs}))
    if len(sized_o) < 2:
        sized_o = (1, 2)
    return ProfileGrid(sized_p, sized_o, (1,), trials)


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
    min_energy_window_s: float = 0.5,
    warmup_s: float = 0.0,
) -> RunRecord:
    """Measure every point of `grid` not already stored for the same profile.

    Each point is committed before the next one runs; an interrupted profile (Ctrl-C, a
    crash, SIGKILL) resumes when the same profile is asked for again. With a `meter`, each
    point is one energy window (the backend synchronises the device before returning, so the
    window's edges are the query's), and the power samples land in the store beside it; a
    metered profile first runs its largest point for `warmup_s` seconds, unrecorded, so the
    card is at working temperature (see `thermal_warmup`).
    """
    grid.validate(spec)
    check_warmup_s(warmup_s)
    run, _ = store.open_run(
        key=profile_key(
            spec, stack, backend.name, backend_options, grid, meter is not None and meter.available
        ),
        model=spec.name,
        spec=spec.to_dict(),
        stack=stack,
        backend=backend.name,
        backend_info=backend_options,
        grid=grid.to_dict(),
        device=device,
    )
    done = store.finished_points(run.id)
    todo: Sequence[Point] = [pt for pt in grid.points() if pt not in done]
    if on_start:
        on_start(run, len(grid.points()) - len(todo), len(grid.points()))
    if not todo:
        store.set_run_status(run.id, "complete")
        return store.get_run(run.id)
    status = "interrupted"
    try:
        backend.prepare(spec)
        info = {**backend_options, **backend.describe()}
        store.update_run_backend(run.id, info)
        metering = meter is not None and meter.available
        if metering:
            meter.measure_idle(1.0)
            meter.start()
            if warmup_s > 0:
                heavy = max(todo, key=lambda p: (p.batch_size, p.prompt_tokens, p.output_tokens))
                info["thermal_warmup"] = thermal_warmup(
                    backend, replace(heavy, trial=0), meter, warmup_s
                )
                store.update_run_backend(run.id, info)
            flushed = 0.0
            phases = PhaseSplit(backend, meter, min_energy_window_s)
        for point in todo:
            if metering:
                measurement, window = measure_metered(backend, point, meter, min_energy_window_s)
            else:
                measurement, window = backend.measure(point), None
            if window is not None:
                phases.split(point, measurement)
                fresh = meter.samples(start=flushed, end=window.end, unix=True)
                flushed = window.end + 1e-9
                store.record_samples(run.id, fresh)
            if (
                measurement.status == "ok"
                and measurement.output_tokens_actual is not None
                and measurement.output_tokens_actual != point.output_tokens
            ):
                # Kept for the record, left out of fits: the length was not what was asked.
                measurement.status = "flagged"
                produced = measurement.output_tokens_actual
                measurement.detail = f"produced {produced} tokens, asked {point.output_tokens}"
            store.record_point(run.id, point, measurement)
            if on_point:
                on_point(point, measurement)
        status = "complete"
    finally:
        if meter is not None:
            meter.stop()
        backend.close()
        store.set_run_status(run.id, status)
    return store.get_run(run.id)


def thermal_warmup(
    backend: Backend, point: Point, meter: Meter, seconds: float
) -> dict[str, float | int | None]:
    """Run `point` back to back for `seconds` before a metered profile; nothing is recorded
    (see infermeter.meter.warm_up)."""
    return {
        **warm_up(lambda: backend.measure(point), meter, seconds),
        "prompt_tokens": point.prompt_tokens,
        "output_tokens": point.output_tokens,
    }


class PhaseSplit:
    """Energy by phase: prefill (prompt encoding and the first token) vs decode.

    A prefill lasts milliseconds, far below the energy counter's update period, so it is not
    read off a mark inside the query: it is measured as its own query, (p, o = 1), repeated
    back to back in one window of at least `min_window_s` (the o = 1 points of the grid serve
    when they come first, as in trial-major order; otherwise one extra window per prompt size).
    A query's decode energy is then its energy less its prompt size's prefill energy.
    """

    def __init__(self, backend: Backend, meter: Meter, min_window_s: float) -> None:
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
            prefill = Point(point.prompt_tokens, 1, point.batch_size, point.trial)
            first, window, runs = _windowed(self.backend, prefill, self.meter, self.min_window_s)
            if first.status != "ok" or window is None or window.total_j is None:
                return
            self._prefill[key] = [window.total_j / runs]
        prefill_j = float(np.mean(self._prefill[key]))
        measurement.extra["energy_prefill_j"] = prefill_j
        measurement.extra["energy_decode_j"] = measurement.energy_j - prefill_j
        if point.output_tokens > 1:
            per_token = measurement.extra["energy_decode_j"] / (point.output_tokens - 1)
            measurement.extra["energy_per_decode_token_j"] = per_token


class _PointWindow:
    """The energy window of one point, opened and closed by the backend where it can.

    With `hold` it stays open across back-to-back runs (begin() after the first and every
    end() are no-ops) until close(): a short query is metered over a window the counter
    resolves.
    """

    def __init__(self, meter: Meter, hold: bool = False) -> None:
        self.meter = meter
        self.hold = hold
        self.opened_at: float | None = None
        self.result: EnergyWindow | None = None
        self.is_open = False

    def begin(self) -> None:
        if self.is_open:
            return  # inside a run of repetitions
        self.meter.begin("point")
        self.opened_at = self.meter.clock.now()
        self.is_open = True

    def end(self) -> None:
        if not self.hold:
            self.close()

    def close(self) -> None:
        """End the window if it is open (held, or the backend failed mid-run)."""
        if self.is_open:
            self.result = self.meter.end("point")
            self.is_open = False


def measure_metered(
    backend: Backend, point: Point, meter: Meter, min_window_s: float = 0.0
) -> tuple[Measurement, EnergyWindow | None]:
    """Measure one point inside an energy window and put the joules on the measurement.

    Backends with an `energy_window` slot open and close the window around exactly their
    timed region (warm-up and graph capture stay outside); others are windowed whole. The
    meter aligns window edges to the energy counter's steps, but a query of a few ms is still
    mostly edge: one shorter than `min_window_s` then runs again, back to back inside one
    window, until the window is that long, and its energy is that window's over the number of
    runs (the runtime stays the single run's).
    """
    measurement, window, runs = _windowed(backend, point, meter, 0.0)
    if (
        window is not None
        and measurement.status == "ok"
        and min_window_s > 0
        and window.seconds < min_window_s
    ):
        single = window.total_j
        _, window, runs = _windowed(backend, point, meter, min_window_s)
        measurement.extra["energy_single_run_j"] = single
    if window is not None:
        measurement.energy_j = None if window.total_j is None else window.total_j / runs
        measurement.extra["energy_window"] = "timed" if _has_slot(backend) else "whole call"
        measurement.extra["energy_repeats"] = runs
        measurement.extra.update(window.as_extra())
    return measurement, window


def _has_slot(backend: Backend) -> bool:
    return hasattr(backend, "energy_window")


def _windowed(
    backend: Backend, point: Point, meter: Meter, min_window_s: float
) -> tuple[Measurement, EnergyWindow | None, int]:
    """Runs of `point` in one energy window until it spans `min_window_s` (at least one).

    Returns the first run's measurement, the window and the number of runs in it.
    """
    recorder = _PointWindow(meter, hold=min_window_s > 0)
    exact = _has_slot(backend)
    if exact:
        backend.energy_window = recorder  # type: ignore[attr-defined]
    else:
        recorder.begin()
    runs = 0
    try:
        first = backend.measure(point)
        runs = 1
        while (
            min_window_s > 0
            and recorder.opened_at is not None
            and meter.clock.now() - recorder.opened_at < min_window_s
        ):
            backend.measure(point)
            runs += 1
    finally:
        recorder.close()
        if exact:
            backend.energy_window = None  # type: ignore[attr-defined]
    return first, recorder.result, runs
