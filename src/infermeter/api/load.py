"""The parallel-load sweep of the paper's Fig. 6: runtime vs the number of queries in flight.

At a fixed prompt size p, for each output length o and each concurrency c, `trials` times:
send c requests of (p, o) at once and keep every one's raw runtime. Each request is stored as
its own point of a run (batch_size = c, trial = t·c + slot), the c requests of one step in one
go, so an interrupted sweep resumes at the first unfinished step. `load_summary` gives, per
(o, c), the minimum over trials of the per-step mean runtime (the paper's curve), the median
and p90 of all requests, their coefficient of variation and the slowdown against c = 1.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Protocol

import pandas as pd

from infermeter.backends.base import Measurement, Point
from infermeter.errors import UserError
from infermeter.spec import ModelSpec
from infermeter.store import RunRecord, Store, run_key


@dataclass(frozen=True)
class LoadGrid:
    prompt_tokens: int
    output_sizes: tuple[int, ...]
    concurrency: tuple[int, ...] = (1, 2, 4, 8, 16)
    trials: int = 3

    def validate(self, spec: ModelSpec) -> None:
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
        return [Point(self.prompt_tokens, o, c, t * c + slot) for slot in range(c)]

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": "load",
            **{k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()},
        }


class ConcurrentBackend(Protocol):
    """What the sweep needs: a backend that can send several points at once (openai)."""

    name: str

    def prepare(self, spec: ModelSpec) -> None: ...

    def measure_many(self, points: list[Point]) -> list[Measurement]: ...

    def describe(self) -> dict: ...

    def close(self) -> None: ...


StepCallback = Callable[[int, int, int, list[Measurement]], None]


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
    """Run every step of `grid` not already stored; each step is committed as it finishes."""
    grid.validate(spec)
    key = run_key(
        {
            "spec": spec.to_dict(),
            "stack": stack,
            "backend": backend.name,
            "options": backend_options,
            "grid": grid.to_dict(),
        }
    )
    run, _ = store.open_run(
        key=key,
        model=spec.name,
        spec=spec.to_dict(),
        stack=stack,
        backend=backend.name,
        backend_info=backend_options,
        grid=grid.to_dict(),
        device=device,
    )
    done = store.finished_points(run.id)
    steps = grid.steps()
    todo = [s for s in steps if not set(grid.points(*s)) <= done]
    if on_start:
        on_start(run, len(steps) - len(todo), len(steps))
    status = "interrupted"
    try:
        if todo:
            backend.prepare(spec)
            store.update_run_backend(run.id, {**backend_options, **backend.describe()})
        for o, c, t in todo:
            points = grid.points(o, c, t)
            measurements = backend.measure_many(points)
            for point, measurement in zip(points, measurements, strict=True):
                measurement.extra["concurrency"] = c
                measurement.extra["step_trial"] = t
                store.record_point(run.id, point, measurement)
            if on_step:
                on_step(o, c, t, measurements)
        status = "complete"
    finally:
        backend.close()
        store.set_run_status(run.id, status)
    return store.get_run(run.id)


def load_summary(points: pd.DataFrame) -> pd.DataFrame:
    """Per (output tokens, concurrency): the Fig. 6 curve and the spread of every request."""
    if points.empty:
        return pd.DataFrame()
    frame = points.rename(columns={"batch_size": "concurrency"}).copy()
    frame["step"] = frame["trial"] // frame["concurrency"]
    usable = frame[frame["status"] == "ok"]
    keys = ["output_tokens", "concurrency"]
    counts = frame.groupby(keys).agg(requests=("trial", "count"))
    errors = frame[frame["status"] == "error"].groupby(keys).size().rename("errors")
    step_mean = usable.groupby([*keys, "step"])["runtime_s"].mean()
    stats = usable.groupby(keys)["runtime_s"].agg(
        median_s="median", p90_s=lambda s: s.quantile(0.9), mean_s="mean", std_s="std"
    )
    summary = counts.join(errors).join(step_mean.groupby(keys).min().rename("min_step_mean_s"))
    summary = summary.join(stats).fillna({"errors": 0}).reset_index()
    summary["errors"] = summary["errors"].astype(int)
    summary["cv"] = (summary["std_s"].fillna(0.0) / summary["mean_s"]).where(
        summary["mean_s"] > 0, 0.0
    )
    base = summary[summary["concurrency"] == summary["concurrency"].min()].set_index(
        "output_tokens"
    )["min_step_mean_s"]
    summary["slowdown"] = summary["min_step_mean_s"] / summary["output_tokens"].map(base)
    return summary[
        [
            "output_tokens",
            "concurrency",
            "requests",
            "errors",
            "min_step_mean_s",
            "median_s",
            "p90_s",
            "cv",
            "slowdown",
        ]
    ]
