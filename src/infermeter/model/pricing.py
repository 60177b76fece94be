"""Pricing a fitted model for a caller: hardware overrides read, queries gathered and priced
with the title their table carries (infermeter.model.estimate does the arithmetic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from infermeter.errors import UserError, not_both

if TYPE_CHECKING:
    from infermeter.requests import EstimateRequest
from infermeter.model.cost_model import CostModel, ModelSet
from infermeter.model.estimate import (
    Pricing,
    check_table_output,
    describe_pricing,
    energy_notes,
    estimate_queries,
    is_sustained,
    pairing_notes,
    profiled_sample,
    query_grid,
    range_notes,
    read_queries,
)


def parse_overrides(
    price_per_hour: float | None, power_watts: float | None, settings: list[str] | None = None
) -> dict[str, float]:
    """Accelerator overrides: KEY=VALUE `settings` (numbers), then the price ($ per
    accelerator-hour) and rated power (W) when given. Raises UserError for a malformed item."""
    overrides: dict[str, float] = {}
    for item in settings or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r} must look like KEY=VALUE, e.g. tdp_watts=500")
        try:
            overrides[key.strip()] = float(value)
        except ValueError:
            raise UserError(f"--set {item!r}: {value!r} is not a number") from None
    for flag, value, key, unit in (
        ("--price-per-hour", price_per_hour, "price_per_hour_usd", "$ an accelerator-hour"),
        ("--power-watts", power_watts, "tdp_watts", "W an accelerator"),
    ):
        if value is None:
            continue
        if not (math.isfinite(value) and value > 0):
            raise UserError(f"{flag} must be a positive number ({unit}), got {value:g}")
        overrides[key] = value
    return overrides


@dataclass
class Priced:
    """Estimates (one row per query), the pricing used (None: runtime only) and notes."""

    estimates: pd.DataFrame
    pricing: Pricing | None
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def on(self) -> str:
        """Where the estimates are priced, for a title."""
        return f"on {self.pricing.describe()}" if self.pricing else "(runtime only, not priced)"


def price_profile(
    models: list[CostModel],
    max_context: int | None,
    accelerator: str | None,
    num_accelerators: int | None,
    overrides: dict[str, float],
    catalog: Any,
    sustained: list[CostModel] | None = None,
) -> Priced:
    """A few queries within the profiled range of fitted `models` (runtime, and energy when
    measured) priced on `accelerator` (None: the stack profiled); with the `sustained`
    runtime model(s) (model.fitted.fit_sustained), their runtime_sustained_s too."""
    runtime = next(m for m in models if m.quantity == "runtime_s")
    energy = next((m for m in models if m.quantity == "energy_j"), None)
    pricing, notes = describe_pricing(
        runtime,
        accelerator,
        num_accelerators,
        overrides,
        catalog,
        measured_energy=energy is not None,
    )
    sample = profiled_sample(runtime, max_context)
    back_to_back = ModelSet(sustained) if sustained else None
    return Priced(
        estimate_queries(sample, runtime, pricing, energy, sustained=back_to_back), pricing, notes
    )


def query_frame(
    queries: Path | None, prompt_sizes: tuple[int, ...] | None, output_sizes: tuple[int, ...] | None
) -> pd.DataFrame:
    """Queries from a CSV/JSONL file, else the grid of the sizes given (UserError if neither)."""
    if queries is not None:
        return read_queries(queries, fix="check --queries")
    if prompt_sizes is None or output_sizes is None:
        raise UserError("give --queries FILE, or --prompt-tokens and --output-tokens")
    return query_grid(list(prompt_sizes), list(output_sizes))


def price_queries(
    frame: pd.DataFrame,
    runtime: ModelSet,
    energy: ModelSet | None,
    accelerator: str | None,
    num_accelerators: int | None,
    overrides: dict[str, float],
    catalog: Any,
    grid_intensity: float | None = None,
    sustained: ModelSet | None = None,
) -> Priced:
    """Queries priced with a loaded model set: idealized runtime (s), dollars, joules and, with
    `grid_intensity` (gCO2e per kWh), CO2e; with `sustained` (a runtime model of the queries
    back to back) a runtime_sustained_s column. A query past the context raises UserError."""
    warnings = range_notes(frame, runtime)
    if is_sustained(runtime):
        warnings.append(
            "the runtime profile given is the sustained one (times back to back): runtime_s, "
            "cost_usd and energy_j price queries sent back to back; pass OUTPUT.json as "
            "--profile for queries sent alone and this file as --sustained-profile"
        )
    if energy is not None:
        warnings += pairing_notes(runtime, energy) + energy_notes(frame, energy)
    pricing, notes = describe_pricing(
        runtime.first(),
        accelerator,
        num_accelerators,
        overrides,
        catalog,
        measured_energy=energy is not None,
    )
    estimates = estimate_queries(frame, runtime, pricing, energy, grid_intensity, sustained)
    return Priced(estimates, pricing, notes, warnings)


def price_request(r: EstimateRequest) -> tuple[Priced, str]:
    """`infermeter estimate`: its output file checked first, its queries (a file, else the
    grid of the sizes given) priced with the model set of r.profile, and the model's name.
    Each hardware figure comes from --price-per-hour/--power-watts/--set, else the
    --hardware-config entry of the accelerator priced, else the profile's stored entry (when
    no --accelerator is named), else the catalog (model.estimate.pricing_for). Raises
    UserError for --queries given with --prompt-tokens or --output-tokens (one or the
    other), before anything is read."""
    from infermeter.model.helm import load_model_set
    from infermeter.spec.hardware import load_hardware_config
    from infermeter.workloads.queries import parse_list

    sizes = [f for f, v in (("--prompt-tokens", r.prompt_tokens),
                            ("--output-tokens", r.output_tokens)) if v is not None]  # fmt: skip
    if r.queries is not None and sizes:
        given = " and ".join(sizes)
        raise not_both(
            f"--queries {r.queries}", given,
            "the file's queries are priced, or the grid of the sizes given",
            f"drop {given} or --queries",
        )  # fmt: skip
    check_table_output(r.output)
    runtime = load_model_set(r.profile, r.model)
    energy = load_model_set(r.energy_profile, what="--energy-profile") if r.energy_profile else None
    sustained = (
        load_model_set(r.sustained_profile, what="--sustained-profile")
        if r.sustained_profile
        else None
    )
    frame = query_frame(
        r.queries,
        parse_list(r.prompt_tokens, "--prompt-tokens"),
        parse_list(r.output_tokens, "--output-tokens"),
    )
    catalog = load_hardware_config(r.hardware_config) if r.hardware_config else None
    overrides = parse_overrides(r.price_per_hour, r.power_watts, r.settings)
    priced = price_queries(frame, runtime, energy, r.accelerator, r.num_accelerators, overrides,
                           catalog, r.grid_intensity, sustained)  # fmt: skip
    return priced, runtime.first().model
