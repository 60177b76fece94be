"""Fitting the cost model of §3.4 of the idealized-runtime paper, and checking it.

1. Trials of one (p, o) point are reduced to one value: the minimum by default, which is the
   paper's denoising (§4.1: noise η ≥ 0, so the minimum has the least of it).
2. For each profiled prompt size p with two or more output lengths, least squares of y on
   (o − 1): the intercept and slope, with an R² per p (the paper's fit, always reported).
3. One global slope g: least squares of (y − PE(p)) on (o − 1) over all points. That is the
   paper's g (Table 3) and is always reported.
4. What prices queries (`decode`):
   - "line" (the paper, and the default for black-box APIs, whose noise a line smooths): PE(p)
     from the intercepts, interpolated piecewise linearly, and g(p) from each prompt size's slope
     (`slopes="per_prompt"`: a decode step also reads the whole context's keys and values) or the
     one g (`slopes="global"`).
   - "curve" (the default for a local stack): PE(p) is the measured o = 1 time at every prompt
     size profiled at o = 1, and the decode time D(p, o) = t(p, o) − PE(p) follows the measured
     points along o (cost_model.decode_curves); past the longest, it grows by the least-squares
     slope of the curve's last points (_tail_slope). On an H200 the first decode step after a long
     prompt costs 25% more than later ones, which no line through o = 1 .. 256 can follow
     (docs/benchmarks/bias_diagnosis.md): short outputs were priced 2-4% low.
5. For API profiles (§3.5) a constant overhead: PE extended linearly to p = 0 (encoding no
   prompt costs nothing, so what remains there is overhead), or a value the user measured:
   one above the fastest measured query is refused (no query takes less than the overhead).

Runtime lines are fitted by plain least squares, as in the paper. Energy lines are fitted by
relative least squares (residuals divided by the value): an energy reading carries ~1% noise, so
in absolute terms the longest queries' noise outweighs a whole short query, and plain least
squares then sets PE_E(p) by the noise of o = 256 rather than by the o = 1 point that measures
it (on a LLaMA-7B profile on an H100 that moved PE_E(512) from 8.7 J to 5.2 J).

A fit whose one slope g is negative beyond twice its standard error (and material: its decode
time over the profiled outputs at least UNRESOLVED_DECODE_SHARE of a mean measurement) is
refused with the points behind it and the fix; one within the noise is priced as 0, and a
negative slope of one prompt size alone with g, and the fit's notes say so; a fit whose lines
price the points worse than their mean (R² below MIN_R2) is refused unless the caller accepts
it, and one below ROUGH_R2 carries a note. `fit_profile` is the one entry point that holds the
per-quantity policy (runtime: minimum, overhead for APIs; energy: median, no overhead) and fits
one model per batch size; `validation_errors` measures a model against queries it never saw.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from infermeter.errors import UserError
from infermeter.model.cost_model import CostModel, Quantity
from infermeter.store.extra import measured
from infermeter.units import plural, to_pct

Denoise = Literal["min", "median", "mean"]
OverheadMode = Literal["none", "auto"]
Weighting = Literal["absolute", "relative"]
Slopes = Literal["per_prompt", "global"]
Decode = Literal["line", "curve"]

REQUIRED_COLUMNS = ("prompt_tokens", "output_tokens")
# Below this, a fit's lines explain less than the mean of the measurements would: refused.
MIN_R2 = 0.0
# Below this, a fit is kept with a note that its estimates are rough.
ROUGH_R2 = 0.9
# A negative g whose decode time over the profiled outputs is below this share of the mean
# measurement is noise, not a finding: priced as 0 with a note.
UNRESOLVED_DECODE_SHARE = 0.05
# The fewest of a decode curve's last points whose least-squares slope prices outputs past
# the longest profiled (_tail_slope).
TAIL_POINTS = 3
# Energy counters move in steps and windows differ in length, so the median of a point's
# readings, not their minimum, is its energy.
ENERGY_DENOISE: Denoise = "median"


@dataclass(frozen=True)
class PromptFit:
    """Least squares of y on (o − 1) at one prompt size."""

    prompt_tokens: int
    intercept: float
    slope: float
    r2: float
    n_points: int


def coefficient_of_variation(std: pd.Series, mean: pd.Series) -> pd.Series:
    """Standard deviation over mean, per row (the paper's Fig. 5): NaN where `std` is (a single
    trial has no spread to measure, not a spread of 0), 0 where the mean is not positive."""
    return (std / mean).where(mean > 0, 0.0).where(std.notna())


def aggregate_trials(points: pd.DataFrame, quantity: Quantity, denoise: Denoise) -> pd.DataFrame:
    """One row per (p, o): the denoised value, the number of trials and their variation."""
    usable = _usable_points(points, quantity)
    grouped = usable.groupby(["prompt_tokens", "output_tokens"])[quantity]
    agg = grouped.agg(["min", "median", "mean", "std", "count"]).reset_index()
    agg["value"] = agg[denoise]
    agg["cv"] = coefficient_of_variation(agg["std"], agg["mean"])  # NaN for a single trial
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
    usable = measured(points, quantity)
    if usable.empty:
        raise UserError(f"no usable {quantity} measurements to fit; profile first")
    values = usable[[*REQUIRED_COLUMNS, quantity]].apply(pd.to_numeric, errors="coerce")
    if not np.isfinite(values.to_numpy(dtype=float)).all():
        raise UserError(f"prompt_tokens, output_tokens and {quantity} must be finite numbers")
    if (values["prompt_tokens"] <= 0).any() or (values["output_tokens"] <= 0).any():
        raise UserError("prompt_tokens and output_tokens must be positive in every point")
    if (values[quantity] < 0).any():
        raise UserError(f"{quantity} must not be negative")
    usable = usable.assign(**{c: values[c] for c in values.columns})
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
    """Step 2: one line per prompt size with at least two distinct output lengths (sizes
    profiled at one length only are PE knots, not lines)."""
    fits = []
    for p, group in agg.groupby("prompt_tokens"):
        x = group["output_tokens"].to_numpy(dtype=float) - 1.0
        if np.unique(x).size < 2:
            if x[0] != 0.0:
                raise UserError(
                    f"prompt size {p} has only output length(s) "
                    f"{', '.join(str(int(v) + 1) for v in sorted(set(x)))}; "
                    "profile at least two output lengths per prompt size (or o = 1 alone, which "
                    "measures PE there)"
                )
            continue
        y = group["value"].to_numpy(dtype=float)
        intercept, slope, r2 = _line_fit(x, y, residual_weights(y, weighting))
        fits.append(PromptFit(int(p), intercept, slope, r2, len(group)))
    if not fits:
        lengths = sorted(set(agg["output_tokens"].astype(int)))
        raise UserError(
            f"no prompt size has two output lengths (lengths measured: {lengths}); profile "
            "at least two output lengths per prompt size, e.g. --output-sizes 1,16,32"
        )
    return fits


@dataclass
class _Core:
    per_p: list[PromptFit]
    knots: np.ndarray  # PE knots (prompt sizes)
    pe: np.ndarray  # PE at the knots, overhead taken out
    slopes: np.ndarray  # g(p) at the knots
    g: float  # the paper's one slope
    g_se: float  # its standard error
    overhead: float
    curves: list[dict[str, Any]] | None
    clipped: list[int]  # knots whose PE the overhead took below 0 (priced as 0 there)


def _fit_core(
    agg: pd.DataFrame,
    overhead: OverheadMode | float,
    weighting: Weighting = "absolute",
    decode: Decode = "line",
) -> _Core:
    """Lines, PE knots, slopes, the global g, the overhead and (decode="curve") the curves."""
    per_p = fit_prompt_sizes(agg, weighting)
    line_p = np.array([f.prompt_tokens for f in per_p], dtype=float)
    intercepts = {f.prompt_tokens: f.intercept for f in per_p}
    single = agg[agg["output_tokens"] == 1].set_index("prompt_tokens")["value"]
    pe_at: dict[int, float] = {}
    for p in sorted(set(agg["prompt_tokens"].astype(int))):
        measured = float(single[p]) if p in single.index else None
        if decode == "curve" and measured is not None:
            pe_at[p] = measured
        elif p in intercepts:
            pe_at[p] = intercepts[p]
        elif measured is not None:  # a PE knot profiled at o = 1 only
            pe_at[p] = measured
    knots = np.array(sorted(pe_at), dtype=float)
    pe = np.array([pe_at[int(k)] for k in knots])
    slopes = np.interp(knots, line_p, [f.slope for f in per_p])
    # Step 3: the global slope, through the origin since PE(p) is already taken out.
    pe_of_point = np.interp(agg["prompt_tokens"].to_numpy(dtype=float), knots, pe)
    x = agg["output_tokens"].to_numpy(dtype=float) - 1.0
    y = agg["value"].to_numpy(dtype=float)
    r = y - pe_of_point
    w = residual_weights(y, weighting)
    wx = x if w is None else x * w**2
    g = float(np.dot(wx, r) / np.dot(wx, x)) if np.dot(wx, x) > 0 else 0.0
    spread = float(np.sum((r - g * x) ** 2)) / max(1, len(x) - 1)
    g_se = float(np.sqrt(spread / np.dot(x, x))) if np.dot(x, x) > 0 else 0.0
    const = _overhead(overhead, knots, pe)
    curves = _decode_curves(agg, pe_at) if decode == "curve" else None
    clipped = [int(k) for k, v in zip(knots, pe, strict=True) if v < const]
    return _Core(per_p, knots, np.maximum(pe - const, 0.0), slopes, g, g_se, const, curves, clipped)


def _overhead(overhead: OverheadMode | float, knots: np.ndarray, pe: np.ndarray) -> float:
    """Step 5: the constant overhead of an API."""
    if overhead == "none":
        return 0.0
    if overhead == "auto":
        if knots.size < 2:
            raise UserError("overhead 'auto' needs at least two prompt sizes; give --overhead S")
        first_slope = (pe[1] - pe[0]) / (knots[1] - knots[0])
        # Never more than the smallest PE: with a flat or noisy PE the line to p = 0 can
        # overshoot, and no prompt encodes in less than nothing.
        return float(np.clip(pe[0] - first_slope * knots[0], 0.0, max(0.0, pe.min())))
    const = float(overhead)
    if not np.isfinite(const) or const < 0:
        raise UserError("overhead must be a finite number of seconds, not negative")
    return const


def _check_given_overhead(
    overhead: OverheadMode | float, agg: pd.DataFrame, unit: str = "s", batch_size: int = 1
) -> None:
    """Refuse an overhead given in seconds that exceeds the fastest measured query (its
    fastest trial): no query can take less than the overhead, so such a value would price
    that query (and every short one) above what was measured, with PE set to 0."""
    if isinstance(overhead, str) or agg.empty:
        return
    fastest = agg.loc[agg["min"].idxmin()]
    if float(overhead) > float(fastest["min"]):
        batch = f", batch {batch_size}" if batch_size != 1 else ""
        raise UserError(
            f"--overhead {float(overhead):g} {unit} exceeds the fastest measured query "
            f"({float(fastest['min']):.4g} {unit} at p={int(fastest['prompt_tokens'])}, "
            f"o={int(fastest['output_tokens'])}{batch}); use a smaller overhead or "
            "--overhead auto"
        )


def _decode_curves(agg: pd.DataFrame, pe_at: dict[int, float]) -> list[dict[str, Any]]:
    """D(p, o) = t(p, o) − PE(p) at every profiled o > 1, per prompt size with a line, and
    the slope that prices D past the longest profiled output (_tail_slope)."""
    curves = []
    for p, group in agg.groupby("prompt_tokens"):
        longer = group[group["output_tokens"] > 1].sort_values("output_tokens")
        if longer.empty or int(p) not in pe_at:
            continue
        o = longer["output_tokens"].to_numpy(dtype=float)
        d = longer["value"].to_numpy(dtype=float) - pe_at[int(p)]
        curves.append(
            {
                "prompt_tokens": int(p),
                "output_tokens": o.tolist(),
                "decode": d.tolist(),
                "tail_slope": _tail_slope(o, d),
            }
        )
    return curves


def _tail_slope(output_tokens: np.ndarray, decode: np.ndarray) -> float:
    """The slope of one decode curve past its longest profiled output (unit per token).

    Least squares of D on o over the curve's last half of points, at least TAIL_POINTS of
    them (all where it has fewer), its start D(p, 1) = 0 counted as a point: one noisy last
    step no longer sets the slope of every longer output (on a CPU the last step of a grid
    of 2-token segments could be off by half). A curve of one profiled o > 1 has the slope
    from its start to it, D(o) / (o − 1), as before.
    """
    o = np.concatenate([[1.0], output_tokens])
    d = np.concatenate([[0.0], decode])
    last = min(o.size, max(TAIL_POINTS, math.ceil(o.size / 2)))
    slope, _ = np.polyfit(o[-last:], d[-last:], 1)
    return float(slope)


def _check_possible(
    core: _Core, agg: pd.DataFrame, quantity: Quantity, unit: str, accept_poor_fit: bool = False
) -> tuple[list[str], bool]:
    """Refuse a fit whose one slope g is negative beyond its noise (two standard errors), or
    with `accept_poor_fit` set it to 0 with a note; set one within the noise to 0, and a
    negative slope of one prompt size (its line, or its curve past the longest output) to g,
    each with a note saying so. Returns the notes and whether a refused slope was kept."""
    what = "time" if quantity == "runtime_s" else "energy"
    notes = []
    kept_poor = False
    decode_share = (
        abs(core.g)
        * float((agg["output_tokens"] - 1).max())
        / float(max(agg["value"].mean(), 1e-300))
    )
    if core.g < 0 and (core.g + 2 * core.g_se >= 0 or decode_share < UNRESOLVED_DECODE_SHARE):
        notes.append(
            f"the {what} per output token is not resolved above the noise (g = {core.g:.3g} "
            f"± {core.g_se:.2g} {unit}); priced as 0: measure longer outputs or more trials "
            "to price decoding"
        )
        core.g = 0.0
    if core.g < 0 and accept_poor_fit:
        notes.append(
            f"the fit gives a negative {what} per output token (g = {core.g:.3g} ± "
            f"{core.g_se:.2g} {unit}), kept as a poor fit with decoding priced as 0: measure "
            "more trials or a longer range of output lengths to price it"
        )
        core.g = 0.0
        kept_poor = True
    if core.g == 0.0 and core.curves:
        _hold_curves(core.curves)  # decoding unresolved: a longer output never prices less
    if core.g < 0:
        shown = ", ".join(
            f"(p={int(r.prompt_tokens)}, o={int(r.output_tokens)}: {r.value:.6g} {unit})"
            for r in agg.sort_values(["prompt_tokens", "output_tokens"]).head(8).itertuples()
        )
        raise UserError(
            f"the fit gives a negative {what} per output token (g = {core.g:.6g} {unit}) from "
            f"the points {shown}; the measurements are too noisy for their range of output "
            "lengths: measure more trials (--trials 5) or a longer range of output lengths "
            "(e.g. --output-sizes 1,64,256)"
        )
    line_p = [f.prompt_tokens for f in core.per_p]
    if any(f.slope < 0 for f in core.per_p):
        mended = [f.slope if f.slope >= 0 else core.g for f in core.per_p]
        for f in core.per_p:
            if f.slope < 0:
                notes.append(
                    f"the line at prompt size {f.prompt_tokens} fell with o ({f.slope:.6g} "
                    f"{unit}/token, noisy points); priced with g = {core.g:.6g} there"
                )
        core.slopes = np.interp(core.knots, line_p, mended)
    for curve in core.curves or []:
        if curve["tail_slope"] < 0:
            notes.append(
                f"past o = {int(curve['output_tokens'][-1])} at prompt size "
                f"{curve['prompt_tokens']} the curve fell ({curve['tail_slope']:.6g} {unit}/"
                f"token, noisy points); continued with g = {core.g:.6g} instead"
            )
            curve["tail_slope"] = core.g
    return notes, kept_poor


def _hold_curves(curves: list[dict[str, Any]]) -> None:
    """Each decode curve held from falling: D at each profiled o is the most it reached at
    any o up to it (and at least 0, its start at o = 1), in place; a tail that falls is
    mended to g by the caller. For a fit whose decoding is not resolved (g set to 0), so
    that a falling noisy segment does not price a longer output below a shorter one."""
    for curve in curves:
        held = np.maximum.accumulate(np.maximum(np.asarray(curve["decode"], dtype=float), 0.0))
        curve["decode"] = held.tolist()


def _check_finite(core: _Core, quantity: Quantity) -> None:
    """A fit whose PE, slopes or overhead came out infinite or NaN is refused in one line:
    relative weighting (1/value²) of a vanishingly small value (say 1e-300 J) overflows."""
    values = np.concatenate([core.pe, core.slopes, [core.g, core.overhead]])
    if not np.all(np.isfinite(values)):
        raise UserError(
            f"the {quantity} fit is not a finite number: the values span more than floating "
            "point can weigh (a value of zero or near it, say 1e-300, beside ordinary ones); "
            f"check the points' {quantity} column"
        )


def _check_meaningful(
    core: _Core, agg: pd.DataFrame, quantity: Quantity, accept_poor_fit: bool, notes: list[str]
) -> float:
    """R² of the paper's lines over all points; refuse one below MIN_R2 unless accepted (then
    a note says so)."""
    line = CostModel(
        core.knots.astype(int).tolist(), core.pe.tolist(), core.g, core.overhead,
        output_token_slopes=core.slopes.tolist(),
    )  # fmt: skip
    r2 = _r2(
        agg["value"].to_numpy(dtype=float),
        line.predict(agg["prompt_tokens"].to_numpy(), agg["output_tokens"].to_numpy()),
    )
    if r2 < MIN_R2 and not accept_poor_fit:
        raise UserError(
            f"the {quantity} fit prices the measured points worse than their mean would "
            f"(R² = {r2:.3f} over {plural(len(agg), 'point')}); the machine or server was too "
            "noisy for the range measured: measure more trials (--trials 5), longer outputs or "
            "larger prompts on a quieter machine, or pass --accept-poor-fit to keep it anyway"
        )
    if r2 < ROUGH_R2:
        notes.append(
            f"the {quantity} fit explains little of the measurements (R² = {r2:.3f}): its "
            "estimates are rough; a quieter machine or more trials would sharpen them"
        )
    return r2


def cross_validate(
    agg: pd.DataFrame,
    overhead: OverheadMode | float,
    folds: int = 5,
    seed: int = 0,
    weighting: Weighting = "absolute",
    slopes: Slopes = "per_prompt",
    decode: Decode = "line",
) -> dict[str, float | int]:
    """k-fold over the profiled (p, o) points: fit on the rest, price the held-out points.

    It measures how well the model interpolates its own grid, not new queries (those are the
    profile's validation queries); folds are stratified by prompt size. With fewer points
    than `folds` it makes one fold per point; a fold whose remaining points cannot be fitted
    is skipped. Returns "folds" (those fitted and priced: 0 for none, and then NaN errors),
    "asked" (`folds`), "points" and the errors in percent (folds_note says what a shortfall
    means).
    """
    n = len(agg)
    asked = folds
    folds = min(folds, n)
    empty = {
        "folds": 0, "asked": asked, "points": n,
        "mape": float("nan"), "max_abs_pct_error": float("nan"),
    }  # fmt: skip
    if folds < 2:
        return empty
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
        try:
            core = _fit_core(agg[~held_out], overhead, weighting, decode)
        except UserError:
            continue
        model = _cost_model(core, slopes)
        test = agg[held_out]
        predicted = model.predict(test["prompt_tokens"], test["output_tokens"])
        actual = test["value"].to_numpy(dtype=float)
        ok = actual > 0
        errors.append(np.abs(predicted[ok] - actual[ok]) / actual[ok])
    if not errors:
        return empty
    all_errors = np.concatenate(errors)
    return {
        "folds": len(errors),
        "asked": asked,
        "points": n,
        "mape": float(to_pct(all_errors.mean())),
        "max_abs_pct_error": float(to_pct(all_errors.max())),
    }


def folds_note(cv: dict[str, Any]) -> str | None:
    """What a k-fold (cross_validate's result) did instead of what was asked, in one line:
    k folds need at least k (p, o) points, and each fold's remaining points must still fit
    (a prompt size with two output lengths); None where every fold asked was fitted."""
    asked, fitted, n = int(cv["asked"]), int(cv["folds"]), int(cv["points"])
    if fitted >= asked:
        return None
    made = min(asked, n)
    need = (
        f"k-fold needs at least {asked} (p, o) points for {asked} folds and the fit has {n}"
        if n < asked
        else f"k-fold over {plural(n, '(p, o) point')}"
    )
    unfit = "left points that could be fitted (a fit needs a prompt size with two output lengths)"
    if fitted == 0:
        done = (
            f"no fold {unfit}, so no k-fold error is reported; profile more points (prompt "
            "sizes or output lengths) or drop --folds"
        )
    elif fitted < made:
        done = f"only {fitted} of {made} folds {unfit}; the k-fold error is over those"
    else:
        done = f"ran {plural(fitted, 'fold')} (one per point) instead"
    return f"{need}: {done}"


def _cost_model(core: _Core, slopes: Slopes, **about: Any) -> CostModel:
    if slopes not in ("per_prompt", "global"):
        raise UserError(f"unknown slopes {slopes!r}; use per_prompt or global")
    return CostModel(
        prompt_sizes=core.knots.astype(int).tolist(),
        prompt_encoding=core.pe.tolist(),
        per_output_token=core.g,
        overhead=core.overhead,
        output_token_slopes=core.slopes.tolist() if slopes == "per_prompt" else None,
        decode_curves=core.curves,
        **about,
    )


def fit_cost_model(
    points: pd.DataFrame,
    quantity: Quantity = "runtime_s",
    denoise: Denoise = "min",
    overhead: OverheadMode | float = "none",
    folds: int = 0,
    model: str = "",
    stack: dict | None = None,
    provenance: dict | None = None,
    weighting: Weighting | None = None,
    slopes: Slopes = "per_prompt",
    decode: Decode = "line",
    batch_size: int = 1,
    accept_poor_fit: bool = False,
) -> CostModel:
    """Fit t(p, o) = PE(p) + D(p, o) + overhead to measured points of one batch size.

    `points` has one row per trial: prompt_tokens, output_tokens, the `quantity` column
    (runtime_s or energy_j) and optionally status, extra_json and trial: only the rows
    store.extra.measured keeps are used (ok, not a timed load's warm-up).
    `weighting` defaults to absolute for runtime and relative for energy; `slopes` chooses
    g(p) from each prompt size's slope (default) or the paper's one global g; `decode` the
    paper's lines or measured curves (see the module docstring). Raises UserError for points
    that cannot be fitted, an overhead above the fastest measured query, or (unless
    `accept_poor_fit`, which prices such a slope as 0 with a note) a negative slope beyond
    its noise or R² < MIN_R2.
    """
    if denoise not in ("min", "median", "mean"):
        raise UserError(f"unknown denoising {denoise!r}; use min, median or mean")
    if decode not in ("line", "curve"):
        raise UserError(f"unknown decode form {decode!r}; use line or curve")
    if folds < 0:
        raise UserError("folds must be 0 (none) or at least 2")
    weighting = weighting or default_weighting(quantity)
    agg = aggregate_trials(points, quantity, denoise)
    unit = "s" if quantity == "runtime_s" else "J"
    _check_given_overhead(overhead, agg, unit, batch_size)
    core = _fit_core(agg, overhead, weighting, decode)
    _check_finite(core, quantity)
    notes, kept_poor = _check_possible(core, agg, quantity, unit, accept_poor_fit)
    if core.clipped:
        notes.append(
            f"the overhead {core.overhead:.6g} {unit} exceeds the fitted prompt encoding at "
            f"prompt size(s) {', '.join(map(str, core.clipped))}; PE is priced as 0 there "
            "(a smaller overhead, or --overhead auto, keeps it)"
        )
    r2_lines = _check_meaningful(core, agg, quantity, accept_poor_fit, notes)
    cost = _cost_model(
        core,
        slopes,
        quantity=quantity,
        model=model,
        stack=dict(stack or {}),
        provenance=dict(provenance or {}),
        batch_size=batch_size,
    )
    cost.fit = {
        "denoise": denoise,
        "weighting": weighting,
        "slopes": slopes,
        "decode": decode,
        "overhead_mode": overhead if isinstance(overhead, str) else "given",
        "n_points": len(agg),
        "n_trials": int(agg["trials"].sum()),
        "max_output_tokens": int(agg["output_tokens"].max()),
        "r2_overall": r2_lines,
        "per_prompt": [
            {
                "prompt_tokens": f.prompt_tokens,
                "prompt_encoding": f.intercept,
                "slope": f.slope,
                "r2": f.r2,
                "n_points": f.n_points,
            }
            for f in core.per_p
        ],
        # None where no point had two trials: no spread was measured (JSON has no NaN)
        "max_cv": None if agg["cv"].isna().all() else float(agg["cv"].max()),
        "notes": notes,
        # What only accept_poor_fit keeps (a slope below zero beyond its noise, R² below
        # MIN_R2): readers prefer a sound run to such a one (fitted.StoredRun.standing).
        "poor_fit": kept_poor or r2_lines < MIN_R2,
    }
    if folds:
        cv = cross_validate(agg, overhead, folds, weighting=weighting, slopes=slopes, decode=decode)
        cost.fit["cross_validation"] = cv
        note = folds_note(cv)
        if note:
            notes.append(note)  # cost.fit["notes"]: printed with the fit
    return cost


@dataclass(frozen=True)
class FitPolicy:
    """How a profile's points become models: what the user may change, the rest by quantity.

    Runtime: minimum over trials (§4.1), the API's constant overhead (§3.5) for black boxes,
    lines for APIs and curves for local stacks. Energy: median over trials, no overhead,
    relative weighting, the same decode form as runtime.
    """

    api: bool = False
    denoise: Denoise | None = None  # runtime only; None: min
    overhead: OverheadMode | float | None = None  # runtime only; None: auto for APIs
    slopes: Slopes = "per_prompt"
    decode: Decode | None = None  # None: line for APIs, curve for local stacks
    folds: int = 0
    accept_poor_fit: bool = False

    def settings(self, quantity: Quantity, prompt_sizes: int) -> dict[str, Any]:
        """The fit's settings for `quantity` with `prompt_sizes` profiled sizes: denoising,
        overhead and decode shape. Energy is always denoised by ENERGY_DENOISE
        without overhead; an API's runtime fits an overhead where it has 2 or more
        prompt sizes."""
        decode = self.decode or ("line" if self.api else "curve")
        if quantity == "energy_j":
            return {"denoise": ENERGY_DENOISE, "overhead": "none", "decode": decode}
        overhead = self.overhead
        if overhead is None:
            overhead = "auto" if self.api and prompt_sizes >= 2 else "none"
        return {"denoise": self.denoise or "min", "overhead": overhead, "decode": decode}

    @property
    def is_default(self) -> bool:
        """True where nothing was chosen beyond whether the run is an API's."""
        return self == FitPolicy(api=self.api)


def fit_profile(
    points: pd.DataFrame,
    policy: FitPolicy,
    model: str = "",
    stack: dict | None = None,
    provenance: dict | None = None,
    quantities: tuple[Quantity, ...] = ("runtime_s", "energy_j"),
) -> list[CostModel]:
    """Every model a profile's points give: per quantity present, per batch size.

    The one place that turns points into models (profile, fit RUN, fit --points and the
    report all call it). Returns runtime models first, each quantity ordered by batch size.
    """
    frame = points
    if "batch_size" not in frame.columns:
        frame = frame.assign(batch_size=1)
    models: list[CostModel] = []
    for quantity in quantities:
        if quantity not in frame.columns or frame[quantity].notna().sum() == 0:
            continue
        for batch, rows in sorted(frame.groupby("batch_size"), key=lambda item: item[0]):
            usable = measured(rows, quantity)
            if usable.empty:
                continue
            settings = policy.settings(quantity, int(usable["prompt_tokens"].nunique()))
            models.append(
                fit_cost_model(
                    rows,
                    quantity,
                    settings["denoise"],
                    settings["overhead"],
                    policy.folds,
                    model=model,
                    stack=stack,
                    provenance=provenance,
                    slopes=policy.slopes,
                    decode=settings["decode"],
                    batch_size=int(batch),
                    accept_poor_fit=policy.accept_poor_fit,
                )
            )
    if not models:
        raise UserError("no usable runtime_s measurements to fit; profile first")
    return models


def validation_errors(
    model: CostModel, queries: pd.DataFrame, quantity: Quantity | None = None
) -> dict[str, Any]:
    """The model's error on measured queries it never saw (one row per trial, as points).

    Trials are reduced as the model's own points were (its fit's denoising); errors are
    (estimate − measured) / measured in percent. Returns n, MAPE, max |error| and the mean
    error (bias: negative means the estimates are low), with each query's row.
    """
    quantity = quantity or model.quantity
    frame = queries
    if "batch_size" in frame.columns:
        frame = frame[frame["batch_size"] == model.batch_size]
    if quantity not in frame.columns or frame[quantity].notna().sum() == 0:
        return {"n": 0}
    denoise = (model.fit or {}).get("denoise", "min")
    try:
        agg = aggregate_trials(frame, quantity, denoise)
    except UserError:
        return {"n": 0}
    measured = agg["value"].to_numpy(dtype=float)
    estimate = model.predict(agg["prompt_tokens"].to_numpy(), agg["output_tokens"].to_numpy())
    ok = measured > 0
    error = to_pct((estimate[ok] - measured[ok]) / measured[ok])
    rows = agg[ok].assign(measured=measured[ok], estimate=estimate[ok], error_pct=error)
    return {
        "n": int(ok.sum()),
        "mape_pct": float(np.abs(error).mean()) if error.size else None,
        "max_error_pct": float(np.abs(error).max()) if error.size else None,
        "bias_pct": float(error.mean()) if error.size else None,
        "queries": rows[
            ["prompt_tokens", "output_tokens", "trials", "measured", "estimate", "error_pct"]
        ].to_dict("records"),
    }
