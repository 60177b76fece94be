"""Load on an API: the paper's bursts (Fig. 6) and the modes peer load testers offer.

- Bursts (`LoadGrid`, `run_load_sweep`): at a fixed prompt size p, for each output length o
  and each concurrency c, `trials` times: send c requests of (p, o) at once and keep every
  one's raw runtime. Each request is stored as its own point of a run (batch_size = c, trial
  = t·c + slot), the c requests of one step in one go, so an interrupted sweep resumes at the
  first unfinished step. Prompts differ per trial and per concurrency level.
- Timed load (`TimedLoad`, `run_timed_load`): for each level, either c requests kept in
  flight (`concurrent`: a new one as soon as one ends) or requests arriving at a rate
  (`rate`, requests/s, evenly spaced or Poisson), for `warmup_s` (stored, marked, left out
  of summaries) and then `duration_s`. A level is stored in one go as it ends.

Every attempt is kept with its cause (Measurement.extra["attempts"]); a request's latency in
the summaries is its whole time over all attempts and backoff (`total_s`), what its user
waited. `load_summary` and `timed_summary` give per level the requests, failures, attempts
and retries, p50/p90/p99 of latency, TTFT and inter-token latency (chunk gaps where tokens
per chunk are unknown, labelled `gap_kind`); the burst summary also gives the paper's curve
(the minimum over trials of the mean runtime of steps whose requests all succeeded: a step
with a failure would make its level look faster) and the slowdown against the lowest c.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any, Literal, Protocol

import numpy as np
import pandas as pd

from infermeter.backends.base import Measurement, Point
from infermeter.errors import UserError
from infermeter.experiments.run import RunIdentity, resumable_run
from infermeter.model.fit import coefficient_of_variation
from infermeter.spec.model import ModelSpec
from infermeter.store.db import RunRecord, Store, run_key
from infermeter.store.extra import extras, without_warmup


@dataclass(frozen=True)
class LoadGrid:
    """The paper's bursts (paper 1 Fig. 6): at `prompt_tokens`, for each output length and
    concurrency c, `trials` steps of c requests sent at once."""

    prompt_tokens: int
    output_sizes: tuple[int, ...]
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    trials: int = 3

    def validate(self, spec: ModelSpec) -> None:
        """Raise UserError for non-positive sizes, levels or trials, or a prompt and output that
        exceed the model's context."""
        if self.prompt_tokens < 1 or not self.output_sizes or min(self.output_sizes) < 1:
            raise UserError("prompt tokens and output sizes must be positive")
        if not self.concurrency or min(self.concurrency) < 1:
            raise UserError("concurrency levels must be positive, e.g. --concurrency 1,2,4,8")
        if self.trials < 1:
            raise UserError(f"trials must be at least 1, got {self.trials}")
        if self.prompt_tokens + max(self.output_sizes) > spec.max_context:
            raise UserError(
                f"prompt {self.prompt_tokens} + output {max(self.output_sizes)} tokens exceeds "
                f"{spec.name}'s context of {spec.max_context}"
            )

    def steps(self) -> list[tuple[int, int, int]]:
        """(output tokens, concurrency, trial), trial-major like profile grids."""
        return [
            (o, c, t)
            for t in range(self.trials)
            for c in sorted(set(self.concurrency))
            for o in sorted(set(self.output_sizes))
        ]

    def points(self, o: int, c: int, t: int) -> list[Point]:
        """The c requests of step (o, c, t) as points: batch_size = c, trial = t·c + slot."""
        return [Point(self.prompt_tokens, o, c, t * c + slot) for slot in range(c)]

    def planned_requests(self) -> int:
        """The requests the grid sends: c for each step of concurrency c."""
        return sum(c for _, c, _ in self.steps())

    def to_dict(self) -> dict[str, object]:
        """The grid as stored with the run (runs.grid_json) and keyed by: kind "load" and its
        fields."""
        return {
            "kind": "load",
            **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()},
        }


class ConcurrentBackend(Protocol):
    """What the sweep needs: a backend that can send several points at once (openai)."""

    name: str

    def prepare(self, spec: ModelSpec) -> None:
        """Check the API is reachable and serves `spec`; raise UserError if not."""

    def measure_many(self, points: list[Point]) -> list[Measurement]:
        """Send `points` at once; one Measurement each, in order (runtimes in s)."""

    def describe(self) -> dict:
        """What the backend reports of itself, stored with the run."""

    def close(self) -> None:
        """Release connections; safe to call twice."""


StepCallback = Callable[[int, int, int, list[Measurement]], None]


def _identity(
    spec: ModelSpec, stack: dict, backend: str, options: dict, grid: dict, device: str
) -> RunIdentity:
    """A load run's identity: keyed by spec, stack, backend, options and grid."""
    key = run_key(
        {"spec": spec.to_dict(), "stack": stack, "backend": backend, "options": options,
         "grid": grid}
    )  # fmt: skip
    return RunIdentity(key, spec.name, spec.to_dict(), stack, backend, options, grid, device)


@dataclass(frozen=True)
class LoadSettings:
    """What a burst sweep measures (see run_load_sweep): the model, the stack and backend
    options it is keyed by, the grid, and the device in words."""

    spec: ModelSpec
    stack: dict
    backend_options: dict
    grid: LoadGrid
    device: str = ""


@dataclass(frozen=True)
class LoadProgress:
    """Told of a burst sweep: `on_start(run, steps done, steps)`, `on_step(o, c, trial,
    measurements)` as each step is stored."""

    on_start: Callable[[RunRecord, int, int], None] | None = None
    on_step: StepCallback | None = None


class LoadExperiment:
    """The paper's bursts on an API (paper 1 Fig. 6; infermeter.experiments.base.Experiment):
    see run_load_sweep and the module docstring."""

    name = "load"

    def run(
        self,
        store: Store,
        backend: ConcurrentBackend,
        config: LoadSettings,
        meter: None,
        progress: LoadProgress,
    ) -> RunRecord:
        """Run every step of the grid not already stored; each step is committed as it
        finishes. `meter` is unused (an API's load is timed, not metered). Raises UserError
        for a grid that does not fit the model or a run measured by another process; the
        backend's errors propagate (the run is then "interrupted")."""
        grid = config.grid
        grid.validate(config.spec)
        identity = _identity(
            config.spec, config.stack, backend.name, config.backend_options, grid.to_dict(),
            config.device,
        )  # fmt: skip
        steps = grid.steps()

        def missing(existing: RunRecord | None) -> list[tuple[int, int, int]]:
            done = store.finished_points(existing.id) if existing else set()
            return [s for s in steps if not set(grid.points(*s)) <= done]

        resume = resumable_run(store, identity, missing)
        todo = resume.todo

        def started(run: RunRecord) -> None:
            if progress.on_start:
                progress.on_start(run, len(steps) - len(todo), len(steps))

        # A run that measured nothing (the server refused the prompt size, say) is deleted,
        # not left "interrupted" and empty.
        with resume.open(on_start=started, cleanup=backend.close, discard_if_empty=True) as active:
            run_id = active.run.id
            if todo:
                backend.prepare(config.spec)
                store.update_run_backend(run_id, {**config.backend_options, **backend.describe()})
            for o, c, t in todo:
                points = grid.points(o, c, t)
                measurements = backend.measure_many(points)
                for point, measurement in zip(points, measurements, strict=True):
                    measurement.extra["concurrency"] = c
                    measurement.extra["step_trial"] = t
                    store.record_point(run_id, point, measurement)
                if progress.on_step:
                    progress.on_step(o, c, t, measurements)
        return store.get_run(run_id)


def run_load_sweep(
    store: Store,
    spec: ModelSpec,
    stack: dict,
    backend: ConcurrentBackend,
    backend_options: dict,
    grid: LoadGrid,
    on_start: Callable[[RunRecord, int, int], None] | None = None,
    on_step: StepCallback | None = None,
    device: str = "",
) -> RunRecord:
    """Run every step of `grid` not already stored; each step is committed as it finishes.

    `on_start` gets (run, steps done, steps), `on_step` (o, c, trial, measurements) per step.
    Returns the run's record; raises as LoadExperiment.run says."""
    settings = LoadSettings(spec, stack, backend_options, grid, device)
    progress = LoadProgress(on_start, on_step)
    return LoadExperiment().run(store, backend, settings, None, progress)


def request_details(points: pd.DataFrame) -> pd.DataFrame:
    """Per stored request: latency over all attempts (total_s), attempts and chunk gaps."""
    rows = []
    for extra, runtime in zip(extras(points), points["runtime_s"], strict=True):
        gaps = extra.get("itl_s")
        kind = "itl"
        if gaps is None:
            gaps, kind = extra.get("chunk_gaps_s") or [], "chunk_gap"
        total = extra.get("total_s")
        rows.append(
            {
                "latency_s": total if total is not None else runtime,
                "attempts": len(extra.get("attempts") or []) or 1,
                "gaps_s": gaps,
                "gap_kind": kind if gaps else None,
                "level": extra.get("level"),
            }
        )
    return pd.DataFrame(rows, index=points.index)


PERCENTILES = (50, 90, 99)


def _spread(frame: pd.DataFrame) -> dict[str, float | int | str | None]:
    """Counts and p50/p90/p99 of latency, TTFT and gaps over one level's requests."""
    ok = frame[frame["status"] == "ok"]
    out: dict[str, float | int | str | None] = {
        "requests": len(frame),
        "failed": int((frame["status"] == "error").sum()),
        "flagged": int((frame["status"] == "flagged").sum()),
        "attempts": int(frame["attempts"].sum()),
        "retried": int((frame["attempts"] > 1).sum()),
    }
    gaps = [g for row in ok["gaps_s"] for g in row]
    kinds = {k for k in ok["gap_kind"] if k}
    out["gap_kind"] = ("itl" if kinds == {"itl"} else "chunk_gap") if kinds else None
    for name, values in (
        ("latency", ok["latency_s"].dropna().to_numpy(float)),
        ("ttft", ok["ttft_s"].dropna().to_numpy(float)),
        ("gap", np.asarray(gaps, dtype=float)),
    ):
        for q in PERCENTILES:
            out[f"{name}_p{q}_s"] = float(np.percentile(values, q)) if len(values) else np.nan
    return out


def load_summary(points: pd.DataFrame) -> pd.DataFrame:
    """Per (output tokens, concurrency) of a burst sweep: the Fig. 6 curve and the spread of
    every request, failures and retries included."""
    if points.empty:
        return pd.DataFrame()
    frame = points.rename(columns={"batch_size": "concurrency"}).copy()
    frame = frame.join(request_details(points))
    frame["step"] = frame["trial"] // frame["concurrency"]
    keys = ["output_tokens", "concurrency"]
    whole = frame.groupby([*keys, "step"])["status"].transform(lambda s: (s == "ok").all())
    step_mean = frame[whole].groupby([*keys, "step"])["runtime_s"].mean()
    usable = frame[frame["status"] == "ok"]
    stats = usable.groupby(keys)["runtime_s"].agg(mean_s="mean", std_s="std")
    spread = pd.DataFrame(
        {key: _spread(group) for key, group in frame.groupby(keys)}
    ).T.rename_axis(keys)
    summary = spread.join(step_mean.groupby(keys).min().rename("min_step_mean_s"))
    summary = summary.join(stats).reset_index()
    summary["errors"] = summary["failed"].astype(int)
    summary["cv"] = coefficient_of_variation(summary["std_s"], summary["mean_s"])
    base = summary[summary["concurrency"] == summary["concurrency"].min()].set_index(
        "output_tokens"
    )["min_step_mean_s"]
    summary["slowdown"] = summary["min_step_mean_s"] / summary["output_tokens"].map(base)
    columns = ["output_tokens", "concurrency", "requests", "errors", "attempts", "retried"]
    # Percentiles of latency count a request's whole time, retries included (the last
    # attempt alone, as median_s and p90_s were, put 0.041 s beside a p50 of 0.183 s).
    columns += ["min_step_mean_s", "cv", "slowdown"]
    columns += [f"{n}_p{q}_s" for n in ("latency", "ttft", "gap") for q in PERCENTILES]
    columns += ["gap_kind"]
    return summary[columns].infer_objects()


# ---- timed load: c in flight, or a request rate --------------------------------------------

Mode = Literal["concurrent", "rate"]
Arrival = Literal["constant", "poisson"]


@dataclass(frozen=True)
class TimedLoad:
    """Load for a time at each level: `concurrent` (c in flight) or `rate` (requests/s).

    Levels are queries in flight or requests per second; times are seconds.
    """

    prompt_tokens: int
    output_tokens: int
    mode: Mode
    levels: tuple[float, ...]
    duration_s: float = 30.0
    warmup_s: float = 5.0
    arrival: Arrival = "poisson"
    seed: int = 0

    def validate(self, spec: ModelSpec) -> None:
        """Raise UserError for an unknown mode or arrival, non-positive levels, durations or sizes,
        fractional concurrency, or a prompt and output that exceed the model's context."""
        if self.mode not in ("concurrent", "rate"):
            raise UserError(f"--mode must be burst, concurrent or rate, got {self.mode!r}")
        if self.arrival not in ("constant", "poisson"):
            raise UserError(f"--arrival must be constant or poisson, got {self.arrival!r}")
        if not self.levels or min(self.levels) <= 0:
            what = "--rate" if self.mode == "rate" else "--concurrency"
            raise UserError(f"{what} levels must be positive, e.g. {what} 1,2,4")
        if self.mode == "concurrent" and any(int(c) != c for c in self.levels):
            raise UserError("--concurrency levels must be whole numbers, e.g. 1,2,4")
        if self.duration_s <= 0 or self.warmup_s < 0:
            raise UserError("--duration-s must be positive and --warmup-s at least 0")
        if self.prompt_tokens < 1 or self.output_tokens < 1:
            raise UserError("prompt tokens and output sizes must be positive")
        if self.prompt_tokens + self.output_tokens > spec.max_context:
            raise UserError(
                f"prompt {self.prompt_tokens} + output {self.output_tokens} tokens exceeds "
                f"{spec.name}'s context of {spec.max_context}"
            )

    def arrivals(self, level: float) -> list[float]:
        """Send times (s from the start) of a `rate` level over warm-up and duration."""
        span = self.warmup_s + self.duration_s
        rng = random.Random(self.seed * 1_000_003 + int(level * 1000))
        times, t = [], 0.0
        while True:
            t += rng.expovariate(level) if self.arrival == "poisson" else 1.0 / level
            if t >= span:
                return times
            times.append(t)

    def warmup_requests(self, level: float) -> int:
        """A `rate` level's requests in its warm-up: its first ones, those whose planned
        arrival is before `warmup_s`."""
        return sum(t < self.warmup_s for t in self.arrivals(level))

    def planned_requests(self) -> int | None:
        """The requests a `rate` load sends after its levels' warm-ups, all levels together;
        None for `concurrent`, which plans a time, not a count."""
        if self.mode != "rate":
            return None
        return sum(len(self.arrivals(v)) - self.warmup_requests(v) for v in self.levels)

    def to_dict(self) -> dict[str, object]:
        """The load as stored with the run and keyed by: kind "load-<mode>" and its fields."""
        data = asdict(self)
        data["levels"] = list(self.levels)
        return {"kind": f"load-{self.mode}", **data}


class TimedBackend(Protocol):
    """What timed load needs: the openai backend's measure_timed."""

    name: str

    def prepare(self, spec: ModelSpec) -> None:
        """Check the API is reachable and serves `spec`; raise UserError if not."""

    def measure_timed(
        self,
        point_at: Callable[[int], Point],
        concurrency: int | None,
        arrivals: list[float] | None,
        span_s: float,
    ) -> list[tuple[Point, Measurement, float]]:
        """Keep `concurrency` requests in flight, or send one at each of `arrivals` (s from the
        start), for `span_s` seconds; (point, measurement, send time in s) per request."""

    def describe(self) -> dict:
        """What the backend reports of itself, stored with the run."""

    def close(self) -> None:
        """Release connections; safe to call twice."""


def run_timed_load(
    store: Store,
    spec: ModelSpec,
    stack: dict,
    backend: TimedBackend,
    backend_options: dict,
    load: TimedLoad,
    on_level: Callable[[float, list[Measurement]], None] | None = None,
    device: str = "",
    on_start: Callable[[RunRecord, int, int], None] | None = None,
) -> RunRecord:
    """Run every level of `load` not already stored; each level is stored as it ends;
    `on_start(run, levels done, levels)` once the run is claimed.

    A level's requests are points (p, o, batch_size = level number from 1, trial = request
    number); extra holds the level, the send time from the level's start (`start_s`) and
    `warmup` for requests sent during the warm-up.
    """
    load.validate(spec)
    identity = _identity(spec, stack, backend.name, backend_options, load.to_dict(), device)

    def missing(existing: RunRecord | None) -> list[tuple[int, float]]:
        """The (level number from 1, level) not stored (a level is stored whole)."""
        done = store.finished_points(existing.id) if existing else set()
        stored = {pt.batch_size for pt in done}
        return [(n, level) for n, level in enumerate(load.levels, start=1) if n not in stored]

    resume = resumable_run(store, identity, missing)

    def started(run: RunRecord) -> None:
        if on_start:
            on_start(run, len(load.levels) - len(resume.todo), len(load.levels))

    with resume.open(on_start=started, cleanup=backend.close, discard_if_empty=True) as active:
        run_id = active.run.id
        for number, level in resume.todo:
            backend.prepare(spec)
            store.update_run_backend(run_id, {**backend_options, **backend.describe()})

            def point_at(i: int, number: int = number) -> Point:
                return Point(load.prompt_tokens, load.output_tokens, number, i)

            concurrent = load.mode == "concurrent"
            # A rate level's request is in the warm-up by its planned arrival, as
            # planned_requests counts it: sent, it may start a hair either side of warmup_s.
            warm = None if concurrent else load.warmup_requests(level)
            results = backend.measure_timed(
                point_at,
                int(level) if concurrent else None,
                None if concurrent else load.arrivals(level),
                load.warmup_s + load.duration_s,
            )
            for point, measurement, start in results:
                in_warmup = start < load.warmup_s if warm is None else point.trial < warm
                measurement.extra.update(
                    level=level, mode=load.mode, start_s=start, warmup=in_warmup
                )
                store.record_point(run_id, point, measurement)
            if on_level:
                on_level(level, [m for _, m, _ in results])
    return store.get_run(run_id)


def stored_load(grid: dict[str, Any]) -> LoadGrid | TimedLoad:
    """The load that a load run's stored grid records (runs.grid_json: LoadGrid.to_dict's kind
    "load", else TimedLoad.to_dict's "load-<mode>"); fields it does not know are left out."""
    cls: type[LoadGrid] | type[TimedLoad] = LoadGrid if grid.get("kind") == "load" else TimedLoad
    names = {f.name for f in fields(cls)}
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in grid.items() if k in names}
    return cls(**values)


def timed_summary(points: pd.DataFrame, duration_s: float) -> pd.DataFrame:
    """Per level of a timed load (warm-up left out): counts, achieved rate and percentiles."""
    points = without_warmup(points)
    if points.empty:
        return pd.DataFrame()
    frame = points.join(request_details(points))
    rows = []
    for level, group in frame.groupby("level"):
        row = {"level": level, **_spread(group)}
        row["achieved_rps"] = int((group["status"] == "ok").sum()) / duration_s
        rows.append(row)
    columns = ["level", "requests", "failed", "flagged", "attempts", "retried", "achieved_rps"]
    columns += [f"{n}_p{q}_s" for n in ("latency", "ttft", "gap") for q in PERCENTILES]
    columns += ["gap_kind"]
    return pd.DataFrame(rows)[columns].infer_objects()
