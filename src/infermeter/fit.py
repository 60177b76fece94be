"""Fitting the cost model exactly as §3.4 of the idealized-runtime paper.

1. Trials of one (p, o) point are reduced to one value: the minimum by default, which is the
   paper's denoising (§4.1: noise η ≥ 0, so the minimum has the least of it).
2. For each profiled prompt size p, least squares of y on (o − 1): the intercept is PE(p),
   with an R² per p.
3. One global slope g: least squares of (y − PE(p)) on (o − 1) over all points. That is the
   paper's g (Table 3) and is always reported; by default the model also keeps each prompt
   size's own slope from step 2 and prices with g(p) interpolated between them (see
   cost_model: a decode step reads the whole context's keys and values, so it costs more after
   a long prompt). `slopes="global"` prices with the one g, exactly as the paper.

Runtime is fitted by plain least squares, as in the paper. Energy is fitted by relative least
squares (residuals divided by the value): an energy reading carries ~1% noise, so in absolute
terms the longest queries' noise outweighs the whole of a short query, and plain least squares
then sets PE_E(p) by the noise of o = 256 rather than by the o = 1 point that measures it. On
a LLaMA-7B profile on an H100 that moved PE_E(512) from 8.7 J to 5.2 J and priced prefill-heavy
queries 24% low.
4. For API profiles (§3.5) a constant overhead: PE extended linearly to p = 0 (encoding no
   prompt costs nothing, so what remains there is overhead), or a value the user measured.

Held-out error comes from k-fold cross-validation over the (p, o) points.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from infermeter.cost_model import CostModel, Quantity
from infermeter.errors import UserError

Denoise = Literal["min", "median", "mean"]
OverheadMode = Literal["none", "auto"]
Weighting = Literal["absolute", "relative"]
Slopes = Literal["per_prompt", "global"]

REQUIRED_COLUMNS = ("prompt_tokens", "output_tokens")


@dataclass(frozen=True)
class PromptFit:
    """Least squares of y on (o − 1) at one prompt size."""

    prompt_tokens: int
    intercept: float
    slope: float
    r2: float
    n_points: int


def aggregate_trials(points: pd.DataFrame, quantity: Quantity, denoise: Denoise) -> pd.DataFrame:
    """One row per (p, o): the denoised value, the number of trials and their variation."""
    usable = _usable_points(points, quantity)
    grouped = usable.groupby(["prompt_tokens", "output_tokens"])[quantity]
    agg = grouped.agg(["min", "median", "mean", "std", "count"]).reset_index()
    agg["value"] = agg[denoise]
    # Coefficient of variation across trials (the paper's Fig. 5); 0 for a single trial.
    agg["cv"] = (agg["std"].fillna(0.0) / agg["mean"]).where(agg["mean"] > 0, 0.0)
    return agg.rename(columns={"count": "trials"})[
        ["prompt_tokens", "output_tokens", "value", "trials", "cv", "min", "mean"]
    ]


def _usable_points(points: pd.DataFrame, quantity: Quantity) -> pd.DataFrame:
    missing = [c for c in (*REQUIRED_COLUMNS, quantity) if c not in points.columns]
    if missing:
        raise UserError(
            f"points lack column(s) {', '.join(missing)}; give prompt_tokens, output_tokens "
            f"and {quantity} per row"
        )
    usable = points
    if "status" in usable.columns:
        usable = usable[usable["status"] == "ok"]
    usable = usable[usable[quantity].notna()]
    if usable.empty:
        raise UserError(f"no usable {quantity} measurements to fit; profile first")
    if (usable["prompt_tokens"] <= 0).any() or (usable["output_tokens"] <= 0).any():
        raise UserError("prompt_tokens and output_tokens must be positive in every point")
    if (usable[quantity] < 0).any():
        raise UserError(f"{quantity} must not be negative")
    return usable.astype({"prompt_tokens": int, "output_tokens": int})


def default_weighting(quantity: Quantity) -> Weighting:
    """Plain least squares for runtime (the paper), relative for energy (see above)."""
    return "relative" if quantity == "energy_j" else "absolute"


def residual_weights(y: np.ndarray, weighting: Weighting) -> np.ndarray | None:
    """Per-point residual weights: None (absolute) or 1/y (relative; non-positive y get the
    weight of the smallest positive value rather than an infinite one)."""
    if weighting == "absolute":
        return None
    if weighting != "relative":
        raise UserError(f"unknown weighting {weighting!r}; use absolute or relative")
    positive = y[y > 0]
    floor = float(positive.min()) if positive.size else 1.0
    return 1.0 / np.maximum(y, floor)


def _line_fit(
    x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None
) -> tuple[float, float, float]:
    """(Weighted) least-squares intercept and slope of y = a + b·x, and its plain R²."""
    slope, intercept = np.polyfit(x, y, 1, w=w)
    residual = y - (intercept + slope * x)
    total = float(np.sum((y - y.mean()) ** 2))
    r2 = 1.0 - float(np.sum(residual**2)) / total if total > 0 else 1.0
    return float(intercept), float(slope), r2


def _r2(y: np.ndarray, predicted: np.ndarray) -> float:
    total = float(np.sum((y - y.mean()) ** 2))
    return 1.0 - float(np.sum((y - predicted) ** 2)) / total if total > 0 else 1.0


def fit_prompt_sizes(agg: pd.DataFrame, weighting: Weighting = "absolute") -> list[PromptFit]:
    """Step 2: one line per prompt size; each needs at least two distinct output lengths."""
    fits = []
    for p, group in agg.groupby("prompt_tokens"):
        x = group["output_tokens"].to_numpy(dtype=float) - 1.0
        if np.unique(x).size < 2:
            raise UserError(
                f"prompt size {p} has only output length(s) {sorted(set(x.astype(int) + 1))}; "
                "profile at least two output lengths per prompt size"
            )
        y = group["value"].to_numpy(dtype=float)
        intercept, slope, r2 = _line_fit(x, y, residual_weights(y, weighting))
        fits.append(PromptFit(int(p), intercept, slope, r2, len(group)))
    return fits


def _fit_core(
    agg: pd.DataFrame, overhead: OverheadMode | float, weighting: Weighting = "absolute"
) -> tuple[list[PromptFit], np.ndarray, np.ndarray, float, float]:
    """Per-p fits, knots, PE at the knots (overhead taken out), global g, overhead."""
    per_p = fit_prompt_sizes(agg, weighting)
    knots = np.array([f.prompt_tokens for f in per_p], dtype=float)
    pe = np.array([f.intercept for f in per_p])
    # Step 3: the global slope, through the origin since PE(p) is already taken out.
    pe_of_point = np.interp(agg["prompt_tokens"].to_numpy(dtype=float), knots, pe)
    x = agg["output_tokens"].to_numpy(dtype=float) - 1.0
    y = agg["value"].to_numpy(dtype=float)
    r = y - pe_of_point
    w = residual_weights(y, weighting)
    wx = x if w is None else x * w**2
    g = float(np.dot(wx, r) / np.dot(wx, x)) if np.dot(wx, x) > 0 else 0.0
    # Step 4: the constant overhead of an API.
    if overhead == "none":
        const = 0.0
    elif overhead == "auto":
        if knots.size < 2:
            raise UserError("overhead 'auto' needs at least two prompt sizes; give --overhead S")
        first_slope = (pe[1] - pe[0]) / (knots[1] - knots[0])
        const = max(0.0, float(pe[0] - first_slope * knots[0]))
    else:
        const = float(overhead)
        if const < 0:
            raise UserError("overhead must not be negative")
    return per_p, knots, np.maximum(pe - const, 0.0), g, const


def _cost_model(
    per_p: list[PromptFit],
    knots: np.ndarray,
    pe: np.ndarray,
    g: float,
    const: float,
    slopes: Slopes,
    **about: Any,
) -> CostModel:
    if slopes not in ("per_prompt", "global"):
        raise UserError(f"unknown slopes {slopes!r}; use per_prompt or global")
    return CostModel(
        prompt_sizes=knots.astype(int).tolist(),
        prompt_encoding=pe.tolist(),
        per_output_token=g,
        overhead=const,
        output_token_slopes=[f.slope for f in per_p] if slopes == "per_prompt" else None,
        **about,
    )


def cross_validate(
    agg: pd.DataFrame,
    overhead: OverheadMode | float,
    folds: int = 5,
    seed: int = 0,
    weighting: Weighting = "absolute",
    slopes: Slopes = "per_prompt",
) -> dict[str, float | int]:
    """k-fold over (p, o) points: fit on the rest, predict the held-out points.

    Folds are stratified by prompt size (each fold holds out about 1/k of every size's output
    lengths), so what is measured is the estimate of queries never profiled. A prompt size
    left with fewer than two output lengths in a training split is dropped from that split
    and its held-out points are priced by interpolating PE between the other sizes.
    """
    n = len(agg)
    folds = min(folds, n)
    if folds < 2:
        return {"folds": 0, "mape": float("nan"), "max_abs_pct_error": float("nan")}
    rng = np.random.default_rng(seed)
    fold_of = np.empty(n, dtype=int)
    offset = 0
    for _, rows in agg.groupby("prompt_tokens").indices.items():
        shuffled = rng.permutation(rows)
        # Rotate the start so small groups do not all land in the first folds.
        fold_of[shuffled] = (np.arange(len(shuffled)) + offset) % folds
        offset += len(shuffled)
    errors: list[np.ndarray] = []
    for k in range(folds):
        held_out = fold_of == k
        if not held_out.any():
            continue
        train = agg[~held_out]
        counts = train.groupby("prompt_tokens")["output_tokens"].transform("nunique")
        train = train[counts >= 2]
        if train.empty:
            continue
        try:
            per_p, knots, pe, g, const = _fit_core(train, overhead, weighting)
        except UserError:
            continue
        model = _cost_model(per_p, knots, pe, g, const, slopes)
        test = agg[held_out]
        predicted = model.predict(test["prompt_tokens"], test["output_tokens"])
        actual = test["value"].to_numpy(dtype=float)
        ok = actual > 0
        errors.append(np.abs(predicted[ok] - actual[ok]) / actual[ok])
    if not errors:
        return {"folds": 0, "mape": float("nan"), "max_abs_pct_error": float("nan")}
    all_errors = np.concatenate(errors)
    return {
        "folds": folds,
        "mape": float(100 * all_errors.mean()),
        "max_abs_pct_error": float(100 * all_errors.max()),
    }


def fit_cost_model(
    points: pd.DataFrame,
    quantity: Quantity = "runtime_s",
    denoise: Denoise = "min",
    overhead: OverheadMode | float = "none",
    folds: int = 5,
    model: str = "",
    stack: dict | None = None,
    provenance: dict | None = None,
    weighting: Weighting | None = None,
    slopes: Slopes = "per_prompt",
) -> CostModel:
    """Fit t(p, o) = PE(p) + (o − 1)·g(p) + overhead to measured points (runtime or energy).

    `points` has one row per trial: prompt_tokens, output_tokens, the `quantity` column
    (runtime_s or energy_j) and optionally status (only "ok" rows are used) and trial.
    `weighting` defaults to absolute for runtime and relative for energy; `slopes` chooses
    g(p) from each prompt size's slope (default) or the paper's one global g.
    """
    if denoise not in ("min", "median", "mean"):
        raise UserError(f"unknown denoising {denoise!r}; use min, median or mean")
    weighting = weighting or default_weighting(quantity)
    agg = aggregate_trials(points, quantity, denoise)
    per_p, knots, pe, g, const = _fit_core(agg, overhead, weighting)
    cost = _cost_model(
        per_p,
        knots,
        pe,
        g,
        const,
        slopes,
        quantity=quantity,
        model=model,
        stack=dict(stack or {}),
        provenance=dict(provenance or {}),
    )
    predicted = cost.predict(agg["prompt_tokens"], agg["output_tokens"])
    cost.fit = {
        "denoise": denoise,
        "weighting": weighting,
        "slopes": slopes,
        "overhead_mode": overhead if isinstance(overhead, str) else "given",
        "n_points": len(agg),
        "n_trials": int(agg["trials"].sum()),
        "r2_overall": _r2(agg["value"].to_numpy(dtype=float), predicted),
        "per_prompt": [
            {
                "prompt_tokens": f.prompt_tokens,
                "prompt_encoding": f.intercept,
                "slope": f.slope,
                "r2": f.r2,
                "n_points": f.n_points,
            }
            for f in per_p
        ],
        "max_cv": float(agg["cv"].max()),
        "cross_validation": cross_validate(
            agg, overhead, folds, weighting=weighting, slopes=slopes
        ),
    }
    return cost
