"""Noise in black-box runtimes: per-point variation (Fig. 5) and raw vs denoised vs idealized
runtime per request (Fig. 7) from stored points and fitted models.

    raw        each request's measured runtime, as stored
    denoised   the model fitted to the minimum over trials (fit.py, denoise="min"), with the
               API's constant overhead; the paper expects raw >= denoised for most requests
    idealized  a model profiled on a reference stack (engine/hf), when one is given
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from infermeter.model.cost_model import CostModel
from infermeter.model.fit import coefficient_of_variation
from infermeter.store.extra import extra_field, measured, succeeded, without_warmup


def trial_variation(points: pd.DataFrame) -> pd.DataFrame:
    """Per (p, o) and, where they vary, batch size and a load run's concurrency (requests in
    flight, from the points' extra): trials (usable ones: not failed or flagged), taken
    (every row), min/mean/max runtime, coefficient of variation (NaN for one trial), max/min;
    a timed load's warm-up requests are not counted at all. Different loads are not trials of
    one another."""
    frame = without_warmup(points)
    if frame.empty:
        return pd.DataFrame()
    keys = ["prompt_tokens", "output_tokens"]
    concurrency = extra_field(frame, "concurrency")
    if concurrency.notna().any():
        frame = frame.assign(concurrency=concurrency.fillna(1).astype(int))
    for key in ("batch_size", "concurrency"):
        if key in frame.columns and frame[key].nunique() > 1:
            keys.append(key)
    usable = succeeded(frame)  # the warm-up is already left out
    if usable.empty:
        return pd.DataFrame()
    grouped = usable.groupby(keys)["runtime_s"]
    table = grouped.agg(trials="count", min_s="min", mean_s="mean", max_s="max", std_s="std")
    table.insert(1, "taken", frame.groupby(keys).size().reindex(table.index))
    table["cv"] = coefficient_of_variation(table["std_s"], table["mean_s"])  # NaN: one trial
    table["max_over_min"] = table["max_s"] / table["min_s"]
    return table.drop(columns="std_s").reset_index()


def raw_vs_models(
    points: pd.DataFrame, denoised: CostModel, idealized: CostModel | None = None
) -> pd.DataFrame:
    """One row per usable request: its raw runtime and the models' runtimes for its (p, o)."""
    usable = measured(points)
    columns = ["prompt_tokens", "output_tokens", "trial"]
    frame = usable[[c for c in columns if c in usable.columns]].copy()
    frame["raw_s"] = usable["runtime_s"].to_numpy(dtype=float)
    p = frame["prompt_tokens"].to_numpy(dtype=float)
    o = frame["output_tokens"].to_numpy(dtype=float)
    frame["denoised_s"] = denoised.predict(p, o)
    if idealized is not None:
        frame["idealized_s"] = idealized.predict(p, o)
    return frame.reset_index(drop=True)


def noise_summary(points: pd.DataFrame, comparison: pd.DataFrame) -> dict[str, Any]:
    """The headline numbers: mean and max CV over the points measured more than once (NaN
    where none was: `repeated` says how many were), and the shares the paper reports for
    Fig. 7."""
    variation = trial_variation(points)
    cv = variation["cv"].dropna() if not variation.empty else pd.Series(dtype=float)
    summary: dict[str, Any] = {
        "requests": len(comparison),
        "points": len(variation),
        "repeated": len(cv),
        # rows of the most-tried point, whatever their status: one, or failures left one usable
        "most_trials": int(variation["taken"].max()) if not variation.empty else 0,
        "mean_cv": float(cv.mean()) if len(cv) else float("nan"),
        "max_cv": float(cv.max()) if len(cv) else float("nan"),
        "max_over_min": (
            float(variation["max_over_min"].max()) if not variation.empty else float("nan")
        ),
    }
    if len(comparison):
        raw, denoised = comparison["raw_s"], comparison["denoised_s"]
        summary["share_raw_above_denoised"] = float(np.mean(raw >= denoised))
        if "idealized_s" in comparison:
            summary["share_idealized_above_denoised"] = float(
                np.mean(comparison["idealized_s"] > denoised)
            )
    return summary


@dataclass
class RunNoise:
    """A run's variation over trials (`variation`) and its denoised model, or `why` it has
    none (the spread needs no fit; raw vs denoised does)."""

    run_id: int
    points: pd.DataFrame
    variation: pd.DataFrame
    denoised: CostModel | None = None
    why: str | None = None
    idealized: CostModel | None = None  # the reference model to set beside them, if given

    def compared(self) -> tuple[pd.DataFrame, str]:
        """Raw vs denoised (vs `idealized`) per request, and the line that sums the noise
        up."""
        from infermeter.model.runfit import noise_line

        comparison = raw_vs_models(self.points, self.denoised, self.idealized)
        return comparison, noise_line(noise_summary(self.points, comparison))


def run_noise(db: Any, run: int | None, idealized: Path | None = None) -> RunNoise:
    """The noise of stored run `run` (None: the latest; UserError for an unknown one), beside
    the fitted model file `idealized` where given (read first: a bad file is refused before
    anything is shown). Its denoised model is fitted as every reader fits (fitted.StoredRun):
    a poor fit is kept, its note in `denoised.fit["notes"]`, since the noise is what this verb
    shows."""
    from infermeter.errors import UserError
    from infermeter.model.fitted import fit_run, reader_policy
    from infermeter.model.helm import load_profile

    reference = load_profile(idealized, what="--idealized file") if idealized else None
    run_id = run if run is not None else db.latest_run_id()
    record = db.get_run(run_id)  # refuses an unknown run with its message
    points = db.points(run_id)
    noise = RunNoise(run_id, points, trial_variation(points), idealized=reference)
    try:
        noise.denoised = fit_run(db, run_id, reader_policy(record.backend))[0]
    except UserError as error:
        noise.why = f"{error}"
    return noise
