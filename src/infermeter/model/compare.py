"""One model on two or more stacks: per-query speedup, cost and energy ratios (§5.3, Fig. 8).

Each stack is a fitted runtime model with the pricing of its hardware (and optionally a
measured energy model). Over a benchmark's queries:

    speedup       baseline runtime / this stack's runtime   (> 1: this stack is faster)
    cost_ratio    this stack's idealized cost / baseline's  (< 1: this stack is cheaper)
    energy_ratio  this stack's idealized energy / baseline's

Totals decide the verdict, because a benchmark is paid for whole: a stack can be slower per
query and still cheaper per benchmark when its accelerators cost less per second (or fewer of
them are needed), which is the "slower but cheaper" question the paper asks of V100s vs A100s.

The queries are checked on every stack as `estimate` checks them (estimate.range_warnings): one
past a model's context is refused, and queries beyond a stack's largest profiled prompt size or
longest output are priced with a warning, since their figures are extrapolated.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from infermeter.errors import UserError
from infermeter.model.cost_model import CostModel
from infermeter.model.estimate import Pricing, estimate_queries, range_warnings
from infermeter.units import per_second_to_per_hour


@dataclass(frozen=True)
class StackProfile:
    """A model's fitted runtime on one stack, priced on that stack's hardware."""

    label: str
    runtime: CostModel
    pricing: Pricing
    energy: CostModel | None = None
    device: str = ""
    date: str = ""


@dataclass
class StackComparison:
    """compare_stacks' result: per-query runtime, cost and energy on every stack, a per-stack
    summary (totals, speedup and cost ratio against the baseline), the baseline's name, the
    warnings on queries some stack prices by extrapolation (query_warnings), and notes on what
    was chosen to compare (e.g. a run left out for a newer one of its stack)."""

    per_query: pd.DataFrame  # one row per (query, stack)
    summary: pd.DataFrame  # one row per stack
    baseline: str
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def verdict(speedup: float, cost_ratio: float) -> str:
    """Words for a stack against the baseline: faster or slower (speedup >= 1) and cheaper or
    dearer (cost ratio < 1); 'n/a' where a total was 0."""
    if not (np.isfinite(speedup) and np.isfinite(cost_ratio)):
        return "n/a (a total of 0)"
    faster = speedup >= 1.0
    cheaper = cost_ratio < 1.0
    if faster:
        return "faster and cheaper" if cheaper else "faster but dearer"
    return "slower but cheaper" if cheaper else "slower and dearer"


def _ratio(a: pd.Series, b: pd.Series) -> np.ndarray:
    """a / b, NaN where b is 0 (a fit can price a one-token query at 0 s)."""
    a, b = a.to_numpy(dtype=float), b.to_numpy(dtype=float)
    out = np.full(a.shape, np.nan)
    np.divide(a, b, out=out, where=b > 0)
    return out


def _models(stacks: Sequence[StackProfile]) -> list[str]:
    """The distinct models the stacks ran (spelling-proof), in order; '' where unnamed."""
    from infermeter.model.fitted import model_key

    keys = [model_key(s.runtime.model) if s.runtime.model else "" for s in stacks]
    return list(dict.fromkeys(keys))


def query_warnings(stacks: Sequence[StackProfile], queries: pd.DataFrame) -> list[str]:
    """`estimate`'s checks of `queries` against every stack's model (estimate.range_warnings,
    each stack by its label): a UserError for a query past a model's context; otherwise its
    warnings for queries outside a stack's profile, each given once, after the labels of the
    stacks it holds for unless it holds for all of them."""
    return range_warnings([(stack.label, stack.runtime) for stack in stacks], queries)


def compare_stacks(
    stacks: Sequence[StackProfile],
    queries: pd.DataFrame,
    baseline: int | str = 0,
    allow_different_models: bool = False,
) -> StackComparison:
    """Price `queries` on every stack and relate each to the baseline stack.

    The stacks must run one model: a speedup between two models is the models' difference,
    not the stacks'. With `allow_different_models` they may differ; their ratios are then
    given without a faster/cheaper verdict. The queries are checked as `estimate` checks
    them (query_warnings): one past a model's context raises UserError, and the warnings on
    extrapolated ones come back in the result's `warnings`.
    """
    if len(stacks) < 2:
        raise UserError("a comparison needs at least two stacks (profiles of one model)")
    models = [m for m in _models(stacks) if m]
    mixed = len(models) > 1
    if mixed and not allow_different_models:
        raise UserError(
            f"the stacks run different models ({', '.join(models)}): their ratios would be the "
            "models' difference, not the stacks'; compare one model's runs, or pass "
            "--allow-different-models"
        )
    labels = [s.label for s in stacks]
    if len(set(labels)) != len(labels):
        raise UserError(f"stack labels must differ, got {labels}")
    if isinstance(baseline, str):
        if baseline not in labels:
            raise UserError(f"baseline {baseline!r} is none of the stacks: {', '.join(labels)}")
        base_index = labels.index(baseline)
    else:
        if not 0 <= baseline < len(stacks):
            raise UserError(f"baseline index {baseline} is out of range")
        base_index = baseline
    warnings = query_warnings(stacks, queries)
    priced = []
    for stack in stacks:
        est = estimate_queries(queries, stack.runtime, stack.pricing, stack.energy)
        est.insert(0, "query", np.arange(len(est)))
        est.insert(0, "stack", stack.label)
        priced.append(est)
    base = priced[base_index]
    per_query = []
    for est in priced:
        est = est.copy()
        est["speedup"] = _ratio(base["runtime_s"], est["runtime_s"])
        est["cost_ratio"] = _ratio(est["cost_usd"], base["cost_usd"])
        est["energy_ratio"] = _ratio(est["energy_j"], base["energy_j"])
        per_query.append(est)
    table = pd.concat(per_query, ignore_index=True)
    rows = []
    for stack, est in zip(stacks, per_query, strict=True):
        speedup = base["runtime_s"].sum() / est["runtime_s"].sum()
        cost_ratio = est["cost_usd"].sum() / base["cost_usd"].sum()
        rows.append(
            {
                "stack": stack.label,
                "device": stack.device,
                "date": stack.date,
                "accelerators": f"{stack.pricing.num_accelerators} × {stack.pricing.accelerator}",
                "usd_per_hour": per_second_to_per_hour(stack.pricing.usd_per_second),
                "total_runtime_s": est["runtime_s"].sum(),
                "total_cost_usd": est["cost_usd"].sum(),
                "total_energy_j": est["energy_j"].sum(),
                "measured_energy_j": (
                    est["energy_measured_j"].sum() if "energy_measured_j" in est else np.nan
                ),
                "speedup": speedup,
                "cost_ratio": cost_ratio,
                "energy_ratio": est["energy_j"].sum() / base["energy_j"].sum(),
                "median_query_speedup": float(np.nanmedian(est["speedup"])),
                "share_queries_cheaper": float((est["cost_ratio"] < 1).mean()),
                "verdict": "baseline"
                if est is per_query[base_index]
                else ("different model" if mixed else verdict(speedup, cost_ratio)),
            }
        )
    return StackComparison(table, pd.DataFrame(rows), labels[base_index], warnings)


DEFAULT_OUTPUTS = (1, 8, 32, 128)  # output lengths of the default grid, where profiled


def default_queries(models: Sequence[CostModel], max_context: int | None = None) -> pd.DataFrame:
    """Without a benchmark: a grid every model prices within its profile, so that nothing in
    it is extrapolated. Its prompt sizes are the first model's profiled ones that lie within
    every model's profiled prompt range (all of the first model's where the ranges share none);
    its output lengths those of DEFAULT_OUTPUTS that every model profiled up to, with the
    shortest of the models' longest profiled lengths in place of those beyond it (a CPU
    profile that stopped at o = 8 gets 1 and 8); and every query fits `max_context` and each
    model's own context."""
    from infermeter.model.estimate import query_grid

    first = models[0]
    low = max(m.profiled_prompt_tokens[0] for m in models)
    high = min(m.profiled_prompt_tokens[1] for m in models)
    prompts = sorted({p for p in first.prompt_sizes if low <= p <= high} or set(first.prompt_sizes))
    longest = [m.profiled_output_tokens for m in models if m.profiled_output_tokens is not None]
    outputs = list(DEFAULT_OUTPUTS)
    if longest and min(longest) < outputs[-1]:
        reach = min(longest)
        outputs = sorted({o for o in outputs if o <= reach} | {reach})
    grid = query_grid(prompts, outputs)
    contexts = [c for c in (max_context, *(m.max_context for m in models)) if c]
    if contexts:
        grid = grid[grid.prompt_tokens + grid.output_tokens <= min(contexts)]
    return grid.reset_index(drop=True)
