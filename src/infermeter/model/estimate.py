"""Pricing queries: idealized runtime, dollars and joules per query and per benchmark.

    runtime_s  = t(p, o) from the fitted cost model (of the query's batch size: the batch's
                 latency); dollars and joules below are the query's 1/batch share
    cost_usd   = runtime_s × accelerators × $/s per accelerator
    energy_j   = runtime_s × accelerators × rated W per accelerator   (the paper's idealized energy)
    energy_measured_j = E(p, o) from a fitted energy model, when the profile measured energy
    (both also in watt-hours; CO2e from the measured figure when a grid intensity is given)

Everything is one numpy pass over the whole table, so a million queries take well under a second.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from infermeter.errors import UserError
from infermeter.model.cost_model import CostModel, ModelSet
from infermeter.spec.hardware import (
    ACCELERATORS,
    NUMERIC_FIELDS,
    Accelerator,
    HardwareConfig,
    get_accelerator,
)
from infermeter.store.outputs import check_output, writing
from infermeter.units import j_to_wh, per_hour_to_per_second, plural, span_text
from infermeter.workloads.queries import (
    MAX_BATCH,
    MAX_JOULES,
    MAX_SECONDS,
    MAX_TOKENS,
    numeric_column,
    whole_column,
)

QUERY_COLUMNS = ("prompt_tokens", "output_tokens")


@dataclass(frozen=True)
class Pricing:
    """What one second of the stack costs: accelerators × ($/s, W) each."""

    accelerator: str
    num_accelerators: int
    price_per_hour_usd: float  # per accelerator
    power_watts: float  # rated, per accelerator
    nominal: bool = False  # some figure is a generic part's assumption (any CPU), not a product's
    # Where the price and the power come from when not the accelerator's own entry (the
    # catalog's, or the one the profile stored): e.g. "from hardware config hw.toml",
    # "overridden"; "" for the entry's own.
    price_from: str = ""
    power_from: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.num_accelerators, bool) or int(self.num_accelerators) < 1:
            raise UserError("--num-accelerators must be at least 1")
        for name in ("price_per_hour_usd", "power_watts"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise UserError(f"{name} of {self.accelerator} must be a finite number >= 0")

    @property
    def usd_per_second(self) -> float:
        """USD per second for all accelerators: count x $/h / 3600
        (units.per_hour_to_per_second)."""
        return per_hour_to_per_second(self.num_accelerators * self.price_per_hour_usd)

    @property
    def watts(self) -> float:
        """Rated power (W) of all accelerators: the power of idealized energy."""
        return self.num_accelerators * self.power_watts

    @classmethod
    def of(
        cls, accelerator: Accelerator, count: int, price_from: str = "", power_from: str = ""
    ) -> Pricing:
        """Pricing of `count` accelerators of a catalog entry: its $/h and TDP, where they
        came from when not the entry's own (`price_from`, `power_from`), and whether any of
        them is still a nominal part's figure."""
        return cls(
            accelerator.name,
            count,
            accelerator.price_per_hour_usd,
            accelerator.tdp_watts,
            accelerator.nominal and not (price_from and power_from),
            price_from,
            power_from,
        )

    def nominal_figures(self) -> list[str]:
        """The figures that are still a nominal part's: '$4.8384/h', '350 W rated'."""
        if not self.nominal:
            return []
        figures = [] if self.price_from else [f"${self.price_per_hour_usd:g}/h"]
        return figures + ([] if self.power_from else [f"{self.power_watts:g} W rated"])

    def origins(self) -> str:
        """Where the price and power came from when not the entry's own: '$/h and W from
        hardware config hw.toml', '$/h overridden', ... ('' when both are the entry's)."""
        if self.price_from and self.price_from == self.power_from:
            return f"$/h and W {self.price_from}"
        parts = [f"$/h {self.price_from}" if self.price_from else "",
                 f"W {self.power_from}" if self.power_from else ""]  # fmt: skip
        return ", ".join(part for part in parts if part)

    def describe(self) -> str:
        """'1 × h200-sxm ($10.6/h, 700 W rated each)', for a nominal part '1 × cpu (nominal:
        $4.8384/h, 350 W rated each)', and with figures from elsewhere '1 × cpu ($1/h, 100 W
        rated each; $/h and W from hardware config hw.toml)', where only one figure is still
        the nominal part's, that one marked: '1 × cpu ($2/h, nominal 350 W rated each; $/h
        from hardware config hw.json)'. The title of an estimates table (describe_pricing's
        notes say what nominal means and how to price your own)."""
        both = self.nominal and not self.price_from and not self.power_from
        price_tag = "nominal " if self.nominal and not both and not self.price_from else ""
        power_tag = "nominal " if self.nominal and not both and not self.power_from else ""
        origins = self.origins()
        return (
            f"{self.num_accelerators} × {self.accelerator} ({'nominal: ' if both else ''}"
            f"{price_tag}${self.price_per_hour_usd:g}/h, {power_tag}{self.power_watts:g} W "
            f"rated each{'; ' + origins if origins else ''})"
        )


OVERRIDDEN = "overridden"  # Pricing.price_from / power_from of a figure given as an override
PRICED_FIELDS = ("price_per_hour_usd", "tdp_watts")  # the figures Pricing carries


def profiled_accelerator(
    model: CostModel, catalog: Mapping[str, Accelerator] | None = None
) -> str | None:
    """The catalog name of the accelerator `model` was profiled on (None: it names none; its
    name as stored where `catalog` lacks it, e.g. a part of a config file not given now)."""
    try:
        entry, _ = _profiled_entry(model, catalog)
    except UserError:
        return _stored_accelerator_name(model)
    return entry.name if entry is not None else None


def _stored_accelerator_name(model: CostModel) -> str | None:
    """The name of the accelerator `model`'s stack records (its entry's, or the name alone)."""
    stored = (model.stack or {}).get("accelerator")
    if isinstance(stored, Mapping):
        stored = stored.get("name")
    return stored.strip() if isinstance(stored, str) and stored.strip() else None


def _profiled_entry(
    model: CostModel, catalog: Mapping[str, Accelerator] | None
) -> tuple[Accelerator | None, dict[str, str]]:
    """The accelerator `model` was profiled on, as it is priced when none is named, and which
    of its PRICED_FIELDS are "as profiled": the stack's stored entry, with the figures it was
    profiled with (those that differ from the built-in catalog's are "as profiled") and any a
    hardware config file (`catalog`) sets for it; or, for a stack that stored a name only,
    that name's entry in `catalog` (UserError where it has none); (None, {}) where the stack
    names no accelerator."""
    stored = (model.stack or {}).get("accelerator")
    if isinstance(stored, Mapping):
        entry = Accelerator.from_dict(dict(stored))
        builtin = ACCELERATORS.get(entry.name)
        as_profiled = {  # figures overridden when it was profiled: not the catalog's
            key: "as profiled"
            for key in PRICED_FIELDS
            if builtin is not None and getattr(entry, key) != getattr(builtin, key)
        }
        return _with_config(entry, catalog), as_profiled
    name = _stored_accelerator_name(model)
    return (get_accelerator(name, catalog=catalog) if name else None), {}


def _with_config(acc: Accelerator, catalog: Mapping[str, Accelerator] | None) -> Accelerator:
    """`acc` (a profile's stored entry) with the fields a hardware config file sets for it."""
    if not isinstance(catalog, HardwareConfig):
        return acc
    configured = catalog.configured_fields(acc.name)
    if not configured:
        return acc
    entry = get_accelerator(acc.name, catalog=catalog)  # the file names it: it resolves
    for source in sorted(set(configured.values())):
        keys = [k for k, s in configured.items() if s == source and k in NUMERIC_FIELDS]
        acc = acc.with_overrides({k: getattr(entry, k) for k in keys}, source=source)
    return replace(acc, nominal=entry.nominal) if "nominal" in configured else acc


def pricing_for(
    model: CostModel,
    accelerator: str | None = None,
    num_accelerators: int | None = None,
    overrides: dict[str, float] | None = None,
    catalog: Mapping[str, Accelerator] | None = None,
) -> tuple[Pricing, str | None]:
    """Pricing from the flags, else from the stack the model was profiled on.

    The accelerator priced is `accelerator` when named, else the one the profile ran on (A100
    80GB, with a note, when the profile names none). Each of its figures ($/h, rated W, any
    other field) comes from the first of these that gives it:

    1. `overrides` (--price-per-hour, --power-watts, --set KEY=VALUE);
    2. the hardware config file's entry for that accelerator (`catalog` from
       load_hardware_config): only the fields the file sets;
    3. without `accelerator`, the profile's stored entry: the figures it was profiled with
       (those that differ from the built-in catalog's are said to be "as profiled");
    4. the catalog (`catalog`, else the built-in ACCELERATORS): for a named `accelerator`, a
       profile that names its accelerator only by name, or the A100 default.

    Returns the pricing (saying which of its $/h and W came from 1, 2 or a profile's own
    override) and a note when it had to assume the accelerator.
    """
    stack = model.stack or {}
    note = None
    as_profiled: dict[str, str] = {}
    if accelerator:
        acc = get_accelerator(accelerator, catalog=catalog)
    else:
        profiled, as_profiled = _profiled_entry(model, catalog)
        if profiled is None:
            profiled = get_accelerator("a100", catalog=catalog)
            note = (
                "the profile names no accelerator; priced as 1 × A100 80GB (the paper's "
                "reference); pass --accelerator and --num-accelerators to change it"
            )
        acc = profiled
    overrides = overrides or {}
    configured = catalog.configured_fields(acc.name) if isinstance(catalog, HardwareConfig) else {}
    origin = {
        key: OVERRIDDEN if key in overrides else f"from {configured[key]}"
        for key in PRICED_FIELDS
        if key in overrides or key in configured
    }
    origin = {**as_profiled, **origin}
    acc = acc.with_overrides(overrides)
    count = num_accelerators if num_accelerators is not None else stack.get("num_accelerators", 1)
    if isinstance(count, float) and count.is_integer():
        count = int(count)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise UserError(f"--num-accelerators must be a whole number of at least 1, not {count!r}")
    pricing = Pricing.of(
        acc, count, origin.get("price_per_hour_usd", ""), origin.get("tdp_watts", "")
    )
    return pricing, note


def is_api_model(model: CostModel) -> bool:
    """A black-box API's fit: its hardware is unknown, so it has no price of its own."""
    return (model.stack or {}).get("backend") == "openai"


def describe_pricing(
    model: CostModel,
    accelerator: str | None = None,
    num_accelerators: int | None = None,
    overrides: dict[str, float] | None = None,
    catalog: Mapping[str, Accelerator] | None = None,
    measured_energy: bool = False,
) -> tuple[Pricing | None, list[str]]:
    """What `estimate` prices with (pricing_for: its docstring gives which figure wins), and
    the notes that say what that is.

    An API run is priced only on hardware the user names (None otherwise: no cost or energy
    columns). A nominal part's figures (the generic CPU socket's) are said to be one's, a
    local profile priced on another accelerator than the one it was measured on is said to be
    priced at that one's rates without its runtime converted, and `energy_j` is said to be
    rated power × runtime, not a measurement.
    """
    if is_api_model(model) and not accelerator:
        return None, [
            "an API run is not priced: its hardware is unknown; pass --accelerator NAME (and "
            "--num-accelerators) to price its runtime as that hardware"
        ]
    pricing, note = pricing_for(model, accelerator, num_accelerators, overrides, catalog)
    notes = [note] if note else []
    measured_on = None if is_api_model(model) else profiled_accelerator(model, catalog)
    if accelerator and measured_on and measured_on != pricing.accelerator:
        notes.append(
            f"runtime_s was measured on {measured_on} and is priced at {pricing.accelerator}'s "
            f"rates as if {pricing.accelerator} ran it that fast (the runtime is not converted); "
            f"profile on {pricing.accelerator} for its own runtime"
        )
    figures = pricing.nominal_figures()
    if figures:
        flags = (["--price-per-hour"] if not pricing.price_from else []) + (
            ["--power-watts"] if not pricing.power_from else []
        )
        notes.append(
            f"{pricing.accelerator} is priced as a nominal part ({', '.join(figures)}), not this "
            f"machine; pass {' and '.join(flags)} (or a --hardware-config entry) to price your own"
        )
    measured = (
        "; energy_measured_j is estimated by the energy model, fitted to the energy its "
        "profile metered (these queries were not metered)"
        if measured_energy
        else ""
    )
    notes.append(f"energy_j is rated power × runtime ({pricing.watts:g} W), not measured{measured}")
    return pricing, notes


def range_notes(queries: pd.DataFrame, runtime: CostModel | ModelSet) -> list[str]:
    """Warnings for queries outside what was profiled, each saying how their price is
    extrapolated (prompt_notes; outputs past the longest); a UserError for one past the
    model's context, which the model cannot run at all."""
    models = _as_set(runtime)
    p = queries["prompt_tokens"].to_numpy()
    o = queries["output_tokens"].to_numpy()
    model = models.first()
    context = model.max_context
    if context is not None and (p + o > context).any():
        row = int(np.flatnonzero(p + o > context)[0])
        raise UserError(
            f"query {row + 1}: prompt {p[row]:g} + output {o[row]:g} tokens exceeds "
            f"{model.model}'s context of {context} tokens; the model cannot run it (shorten the "
            "query)"
        )
    notes = prompt_notes(p, model)
    longest = model.profiled_output_tokens
    if longest is not None and (o > longest).any():
        more = int((o > longest).sum())
        notes.append(
            f"{_share(more, len(o))} {'asks' if more == 1 else 'ask'} for more output tokens "
            f"than the profile's longest ({plural(int(longest), 'token')}, up to "
            f"{int(o.max())} asked): {_its(more)} decoding is extrapolated"
        )
    return notes


def _share(count: int, total: int) -> str:
    """Which of `total` queries a note is about: 'the query' (the only one), 'both queries',
    'all 3 queries' or '1 of 3 queries'."""
    if total == 1:
        return "the query"
    if count == total:
        return "both queries" if total == 2 else f"all {total} queries"
    return f"{count} of {plural(total, 'query')}"


def _tokens(low: int, high: int) -> str:
    """A range of token counts for a note: '16-64 tokens', or '1 token' where both ends are
    one."""
    return plural(low, "token") if low == high else f"{span_text(low, high)} tokens"


def _its(count: int) -> str:
    """The pronoun of `count` queries: 'its' for one, 'their' for more."""
    return "its" if count == 1 else "their"


def prompt_notes(p: np.ndarray, model: CostModel) -> list[str]:
    """Warnings for prompts (`p`, tokens) outside the prompt sizes `model` was profiled at,
    each saying how many, the profiled size they pass and how their PE is priced there:
    with one profiled size, at its PE; below the smallest, down the first segment's slope
    (clipped at 0); past the largest, along the last segment's slope, or at its PE where
    that segment falls (held_note)."""
    low, high = model.profiled_prompt_tokens
    unit = model.unit
    if low == high:  # one knot: no segment to extend, its PE holds everywhere
        other = p != low
        if not other.any():
            return []
        count, asked = int(other.sum()), p[other]
        longer = "longer" if (asked > low).all() else "shorter" if (asked < low).all() else "other"
        pe = float(model.prompt_encoding[0])
        return [
            f"{_share(count, len(p))} {'has a prompt' if count == 1 else 'have prompts'} of "
            f"another size ({_tokens(int(asked.min()), int(asked.max()))} asked): PE "
            f"was measured at one prompt size only ({plural(low, 'token')}), so every prompt "
            f"is priced at its PE ({pe:.4g} {unit}); profile two or more prompt sizes "
            f"(--prompt-sizes) to price {longer} prompts"
        ]
    notes = []
    below = p < low
    extension = model.prompt_encoding_extension("below")
    if below.any() and extension is not None:
        count = int(below.sum())
        size, pe, slope = extension
        reached = int((pe + (p[below] - size) * slope <= 0).sum())
        who = "it" if count == 1 else f"{reached} of them"
        who = "both" if reached == count == 2 else "all of them" if reached == count > 2 else who
        clipped = (
            f"; {who} {'reaches' if reached == 1 else 'reach'} 0 {unit} there and "
            f"{'is' if reached == 1 else 'are'} priced at a PE of 0 (clipped)"
            if reached
            else ""
        )
        notes.append(
            f"{_share(count, len(p))} {'has a prompt' if count == 1 else 'have prompts'} "
            f"shorter than the profile's smallest ({plural(low, 'token')}, down to "
            f"{int(p.min())} asked): {_its(count)} prefill is extrapolated down the first "
            f"segment's slope, {slope:.4g} {unit} per token from the PE of "
            f"{plural(size, 'token')} ({pe:.4g} {unit}){clipped}; profile smaller prompt sizes "
            "(--prompt-sizes) to price them"
        )
    beyond = int((p > high).sum())
    extension = model.prompt_encoding_extension("past")
    if beyond and extension is not None:
        size, pe, slope = extension
        held = held_note(model, f"{_its(beyond)} prefill is priced at")
        notes.append(
            f"{_share(beyond, len(p))} {'has a prompt' if beyond == 1 else 'have prompts'} "
            f"longer than the profile's largest ({plural(high, 'token')}, up to {int(p.max())} "
            "asked): "
            + (
                held
                or f"{_its(beyond)} prefill is extrapolated along the last segment's slope, "
                f"{slope:.4g} {unit} per token from the PE of {plural(size, 'token')} "
                f"({pe:.4g} {unit}); profile larger prompt sizes (--max-context, "
                "--prompt-sizes) to price them"
            )
        )
    return notes


def held_note(model: CostModel, lead: str) -> str | None:
    """What pricing a prompt past `model`'s largest profiled size assumes where its PE is held
    there (CostModel.held_prompt_encoding): `lead` and the rest of the sentence; None where
    PE past it is extended as fitted."""
    held = model.held_prompt_encoding()
    if held is None:
        return None
    size, pe, before, pe_before = held
    return (
        f"{lead} the PE of {plural(size, 'token')} ({pe:.4g} {model.unit}), held there, not "
        f"extended down the profile's falling last segment ({pe_before:.4g} {model.unit} at "
        f"{plural(before, 'token')}); profile larger prompt sizes (--max-context, "
        "--prompt-sizes) to price them"
    )


def energy_notes(queries: pd.DataFrame, energy: CostModel | ModelSet) -> list[str]:
    """What pricing `queries` with an energy model assumes: for prompts past its largest
    profiled size where its PE is held there, a note saying so (held_note)."""
    model = _as_set(energy).first()
    beyond = int((queries["prompt_tokens"].to_numpy() > model.profiled_prompt_tokens[1]).sum())
    lead = f"{_its(beyond)} energy_measured_j prefill is priced at"
    held = held_note(model, lead) if beyond else None
    if held is None:
        return []
    have = "has a prompt" if beyond == 1 else "have prompts"
    return [
        f"{_share(beyond, len(queries))} {have} longer than the energy profile's largest "
        f"({plural(model.profiled_prompt_tokens[1], 'token')}): {held}"
    ]


def pairing_notes(runtime: CostModel | ModelSet, energy: CostModel | ModelSet) -> list[str]:
    """Warnings for an energy profile that is not the runtime profile's pair: fitted on
    another catalog model's run, or measured on another stack (backend, accelerator and count,
    dtype, TP). Said, not refused: pricing an API's runtime with a reference stack's energy
    can be meant. Points files (named by their file) are not compared by name."""
    run, joules = _as_set(runtime).first(), _as_set(energy).first()
    notes = []
    from_points = any("points_file" in m.provenance for m in (run, joules))
    if run.model and joules.model and run.model != joules.model and not from_points:
        notes.append(
            f"the energy profile is of {joules.model}, the runtime profile of {run.model}: "
            f"energy_measured_j is {joules.model}'s; pass an energy profile of {run.model}"
        )
    ran_on, metered_on = _stack_words(run.stack), _stack_words(joules.stack)
    if ran_on and metered_on and ran_on != metered_on:
        notes.append(
            f"the energy profile was measured on {metered_on}, the runtime profile on "
            f"{ran_on}: energy_measured_j is that stack's energy, not this one's"
        )
    return notes


SUSTAINED_STATE = "sustained"  # fit["state"] of a runtime model of queries back to back


def is_sustained(models: CostModel | ModelSet) -> bool:
    """Whether `models` price queries back to back (model.fitted.fit_sustained made them)."""
    return _as_set(models).first().fit.get("state") == SUSTAINED_STATE


def check_sustained_pair(runtime: CostModel | ModelSet, sustained: CostModel | ModelSet) -> None:
    """Refuse (UserError) a sustained profile that is not the runtime profile's twin: an
    energy model, a model of queries sent alone, or a fit of another model or another profile
    run (a stale OUTPUT.sustained.json beside a newer OUTPUT.json prices another run)."""
    run, twin = _as_set(runtime).first(), _as_set(sustained).first()
    fix = "pass the OUTPUT.sustained.json that `fit --output OUTPUT.json` wrote with --profile"
    if twin.quantity != "runtime_s":
        raise UserError(f"the sustained profile given is an energy model; {fix}")
    if is_sustained(run):
        raise UserError(
            "the runtime profile given is the sustained one too; pass the OUTPUT.json of "
            "queries sent alone as --profile"
        )
    if not is_sustained(twin):
        raise UserError(
            "the sustained profile given prices queries sent alone (it is a runtime model "
            f"like --profile, not one of times back to back); {fix}"
        )
    if run.model and twin.model and run.model != twin.model:
        raise UserError(
            f"the sustained profile given is of {twin.model}, the runtime profile of "
            f"{run.model}; {fix}"
        )
    ours, theirs = _run_key(run), _run_key(twin)
    if ours and theirs and ours != theirs:
        raise UserError(
            f"the sustained profile given was fitted on another profile run ({theirs}) than "
            f"the runtime profile ({ours}); {fix}"
        )


def _run_key(model: CostModel) -> str:
    """'run N, profiled AT on DEVICE' from a fit's provenance ('' where it names none): what
    names a profile run wherever its store lies (a copied or moved store is the same run)."""
    where = model.provenance
    if "run_id" not in where or "profiled_at" not in where:
        return ""
    return f"run {where['run_id']}, profiled {where['profiled_at']} on {where.get('device')}"


def _stack_words(stack: Mapping[str, Any]) -> str:
    """'BACKEND, COUNT × ACCELERATOR, DTYPE[, tp N]' of a model's stored stack; '' for none."""
    if not stack:
        return ""
    accelerator = stack.get("accelerator")
    name = accelerator.get("name") if isinstance(accelerator, Mapping) else accelerator
    tp = stack.get("tensor_parallel", 1)
    parts = [
        stack.get("backend"),
        f"{stack.get('num_accelerators', 1)} × {name}" if name else None,
        stack.get("dtype"),
        f"tp {tp}" if tp != 1 else None,
    ]
    return ", ".join(str(part) for part in parts if part)


def range_warnings(
    models: Sequence[tuple[str, CostModel | ModelSet]], queries: pd.DataFrame
) -> list[str]:
    """`estimate`'s checks (range_notes) of `queries` against every labelled model: a
    UserError for a query past a model's context; otherwise its warnings for queries outside
    a model's profile, each given once, after the labels of the models it holds for unless it
    holds for all of them. What `compare` (per stack) and `tradeoffs` (per model and
    scenario) check the queries they price with."""
    labels_of: dict[str, list[str]] = {}
    for label, model in models:
        for note in range_notes(queries, model):
            labels_of.setdefault(note, []).append(label)
    return [
        note if len(labels) == len(models) else f"{'; '.join(labels)}: {note}"
        for note, labels in labels_of.items()
    ]


QUERY_HINT = "each query needs prompt_tokens and output_tokens (and optionally id)"
# What `fit --points` reads: one row per measurement (read_points).
POINTS_COLUMNS = "prompt_tokens, output_tokens, runtime_s [, trial, batch_size, energy_j]"
POINTS_REQUIRED = (*QUERY_COLUMNS, "runtime_s")


def require_file(path: Path, what: str, fix: str) -> None:
    """Refuse, in one line naming `what` and ending with `fix`, a `path` that is missing or a
    folder: the check every verb that reads a file of queries or points makes first."""
    if not path.is_file():
        problem = "is a folder" if path.is_dir() else "does not exist"
        raise UserError(f"{what} {path} {problem}; {fix}")


def read_queries(
    path: str | Path,
    what: str = "queries file",
    hint: str = QUERY_HINT,
    required: tuple[str, ...] = QUERY_COLUMNS,
    fix: str = "check the path",
) -> pd.DataFrame:
    """Queries from CSV, JSONL, JSON (a list of objects) or Parquet, by extension. `what`
    names the file, `hint` says what it needs and `required` are the columns it must have
    (validate_queries), in the one-line errors (UserError); `fix` ends the one for a path
    that is missing or a folder (require_file)."""
    path = Path(path)
    suffix = table_suffix(path)
    require_file(path, what, fix)
    try:
        if suffix == ".csv":  # the blanks are taken off below, for every format
            frame = pd.read_csv(path, skipinitialspace=True)
        elif suffix in (".jsonl", ".ndjson"):
            frame = pd.read_json(path, lines=True)
        elif suffix == ".json":
            frame = pd.read_json(path)
        else:
            frame = pd.read_parquet(path)
    except FileNotFoundError as exc:  # removed since require_file looked
        raise UserError(f"{what} {path} does not exist; {fix}") from exc
    except Exception as exc:  # pandas raises many kinds for a bad file; all mean the same
        raise UserError(f"cannot read {what} {path}: {exc}".splitlines()[0]) from exc
    return validate_queries(strip_blanks(frame), str(path), hint, required)


def read_csv_by_hand(source: Any) -> pd.DataFrame:
    """A CSV (path or text buffer) as people write one by hand: "a, b" (the space after a comma
    is no part of the value) and blanks around names and text values taken off (strip_blanks).
    Raises what pandas raises for an unreadable file."""
    return strip_blanks(pd.read_csv(source, skipinitialspace=True))


def strip_blanks(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with the spaces around its column names and text values taken off: a file
    written "prompt_tokens , output_tokens" by hand means prompt_tokens and output_tokens."""
    if not isinstance(frame, pd.DataFrame):
        return frame  # validate_queries says what it is instead
    frame = frame.rename(columns=lambda name: name.strip() if isinstance(name, str) else name)
    for column in frame.columns:
        if frame[column].dtype == object or pd.api.types.is_string_dtype(frame[column]):
            frame[column] = frame[column].map(lambda v: v.strip() if isinstance(v, str) else v)
    return frame


def validate_queries(
    frame: pd.DataFrame,
    origin: str = "queries",
    hint: str = QUERY_HINT,
    required: tuple[str, ...] = QUERY_COLUMNS,
) -> pd.DataFrame:
    """The queries of `frame` checked: every column of `required` present (one line naming
    all that are missing, ended by `hint`), prompt_tokens, output_tokens (and batch_size where
    given) whole numbers of at least 1 and of a sane size; one line naming row and field
    otherwise. The checked columns are replaced by int64 ones."""
    if not isinstance(frame, pd.DataFrame):
        raise UserError(f"{origin} is not a table of queries; give one query per row")
    missing = [c for c in dict.fromkeys((*QUERY_COLUMNS, *required)) if c not in frame.columns]
    if missing:
        raise UserError(f"{origin} lacks column(s) {', '.join(missing)}; {hint}")
    if frame.empty:
        raise UserError(f"{origin} holds no queries")
    limits = {"prompt_tokens": MAX_TOKENS, "output_tokens": MAX_TOKENS, "batch_size": MAX_BATCH}
    columns = [*QUERY_COLUMNS, *(["batch_size"] if "batch_size" in frame.columns else [])]
    for column in columns:
        frame[column] = whole_column(frame, column, origin, minimum=1, maximum=limits[column])
    return frame


def read_points(path: str | Path, fix: str = "check the path") -> pd.DataFrame:
    """Points measured by another tool: a queries file with runtime_s (seconds per query,
    end to end, > 0) in every row (every "ok" row where a status column says), and optionally
    trial (whole, >= 0) and energy_j (joules >= 0, empty where not measured). Checked like
    queries: one line naming every required column missing (POINTS_REQUIRED), or row and
    field; `fix` ends the line for a path that is missing or a folder."""
    frame = read_queries(
        path,
        "points file",
        f"a points file has columns {POINTS_COLUMNS}",
        POINTS_REQUIRED,
        fix,
    )
    origin = str(path)
    runtime = numeric_column(
        frame,
        "runtime_s",
        origin,
        minimum=0.0,
        strict_minimum=True,
        maximum=MAX_SECONDS,
        allow_missing=True,
    )
    # Rows another verb stored as not ok (an export keeps them, with the cause) may lack one.
    used = frame["status"].eq("ok").to_numpy() if "status" in frame.columns else True
    if (np.isnan(runtime) & used).any():
        row = int(np.flatnonzero(np.isnan(runtime) & used)[0])
        raise UserError(f"{origin}: row {row + 1}, runtime_s is missing; give every row one")
    frame["runtime_s"] = runtime
    if "trial" in frame.columns:
        frame["trial"] = whole_column(frame, "trial", origin, minimum=0, maximum=MAX_TOKENS)
    if "energy_j" in frame.columns:
        frame["energy_j"] = numeric_column(
            frame, "energy_j", origin, maximum=MAX_JOULES, allow_missing=True
        )
    return frame


def _as_set(model: CostModel | ModelSet) -> ModelSet:
    return model if isinstance(model, ModelSet) else ModelSet([model])


def estimate_queries(
    queries: pd.DataFrame,
    runtime: CostModel | ModelSet,
    pricing: Pricing | None,
    energy: CostModel | ModelSet | None = None,
    grid_gco2_per_kwh: float | None = None,
    sustained: CostModel | ModelSet | None = None,
) -> pd.DataFrame:
    """One row per query: tokens, runtime, cost and energy (rated, and measured if fitted).

    `sustained` (a runtime model fitted to the profile's times back to back,
    model.fitted.fit_sustained) adds `runtime_sustained_s`: the query's time a second into a
    stream of such queries, where `runtime_s` is its time sent alone after a pause.

    A `batch_size` column picks each query's model from a set fitted per batch size (and is
    refused, with the sizes there are, for a size the profile lacks); without it every query
    is priced at the smallest batch size the profile has. Without `pricing` (an API run on no
    named hardware) there are no cost and rated-energy columns. Raises UserError for a query
    a model prices at 0 s or 0 J or below (check_possible) or beyond a number (_check_finite).
    """
    runtime = _as_set(runtime)
    if runtime.quantity != "runtime_s":
        raise UserError("the profile given is an energy model; pass the runtime model")
    p = queries["prompt_tokens"].to_numpy()
    o = queries["output_tokens"].to_numpy()
    if "batch_size" in queries.columns:
        batch = queries["batch_size"].to_numpy()
    else:
        batch = np.full(p.shape, runtime.batch_sizes[0])
    out: dict[str, Any] = {}
    if "id" in queries.columns:
        out["id"] = queries["id"].to_numpy()
    out["prompt_tokens"] = p
    out["output_tokens"] = o
    if "batch_size" in queries.columns or len(runtime.batch_sizes) > 1:
        out["batch_size"] = batch
    seconds = runtime.predict(p, o, batch)
    check_possible(seconds, queries, runtime, batch)
    share = 1.0 / batch  # a query's share of its batch's accelerator time and energy
    out["runtime_s"] = seconds
    if sustained is not None:
        sustained = _as_set(sustained)
        check_sustained_pair(runtime, sustained)
        back_to_back = sustained.predict(p, o, batch)
        check_possible(back_to_back, queries, sustained, batch)
        out["runtime_sustained_s"] = back_to_back
    if pricing is not None:
        out["cost_usd"] = seconds * pricing.usd_per_second * share
        out["energy_j"] = seconds * pricing.watts * share
        out["energy_wh"] = j_to_wh(out["energy_j"])
    if energy is not None:
        energy = _as_set(energy)
        if energy.quantity != "energy_j":
            raise UserError("the energy profile given is a runtime model; pass the energy model")
        joules = energy.predict(p, o, batch)
        check_possible(joules, queries, energy, batch)
        out["energy_measured_j"] = joules * share
        out["energy_measured_wh"] = j_to_wh(out["energy_measured_j"])
    if grid_gco2_per_kwh is not None:
        if not (math.isfinite(grid_gco2_per_kwh) and grid_gco2_per_kwh >= 0):
            raise UserError("--grid-intensity must be a finite number of gCO2e/kWh >= 0")
        joules = out.get("energy_measured_j", out.get("energy_j"))
        if joules is not None:
            out["co2e_g"] = joules / 3.6e6 * grid_gco2_per_kwh
    frame = pd.DataFrame(out)
    _check_finite(frame)
    return frame


def check_possible(
    values: np.ndarray, queries: pd.DataFrame, models: ModelSet, batch: np.ndarray | None = None
) -> None:
    """Refuse a price of 0 or below (runtime in s, energy in J), which no query can take, in one
    line (UserError) naming the first such query, the column it prices (runtime_s, or
    energy_measured_j for an energy model), the value the fitted lines give it before the
    clip at 0 (CostModel.unclipped), the sizes its model was profiled at and the fix: a model
    whose PE extrapolates to nothing outside its profile prices no query there. `batch` gives
    each query's batch size (default: the set's smallest)."""
    bad = np.asarray(values) <= 0
    if not bad.any():
        return
    row = int(np.flatnonzero(bad)[0])
    size = models.batch_sizes[0] if batch is None else int(np.asarray(batch)[row])
    model = models.for_batch(size)
    p = float(queries["prompt_tokens"].to_numpy()[row])
    o = float(queries["output_tokens"].to_numpy()[row])
    low, high = model.profiled_prompt_tokens
    longest = model.profiled_output_tokens
    outputs = f" and outputs up to {plural(longest, 'token')}" if longest else ""
    prompts = _tokens(low, high)
    column = "runtime_s" if model.quantity == "runtime_s" else "energy_measured_j"
    value = model.unclipped(p, o)
    raise UserError(
        f"query {row + 1} (prompt_tokens {p:g}, output_tokens {o:g}) extrapolates to "
        f"{_article(column)} {column} of {value:.4g} {model.unit}, which no query takes: the "
        f"profile covers prompts of {prompts}{outputs}; profile sizes that cover it "
        "(--prompt-sizes, --max-context) or leave the query out"
    )


def _article(word: str) -> str:
    """'an' before a word that starts with a vowel sound (as these column names do: an
    energy_measured_j), else 'a'."""
    return "an" if word[:1].lower() in tuple("aeiou") else "a"


def _check_finite(estimates: pd.DataFrame) -> None:
    """The last guard: an estimate that overflowed is an error, never a printed 'inf'."""
    numeric = estimates.drop(columns=["id"], errors="ignore").select_dtypes("number")
    bad = ~np.isfinite(numeric.to_numpy(dtype=float))
    if bad.any():
        row, col = (int(i[0]) for i in np.nonzero(bad))
        raise UserError(
            f"the estimate of query {row + 1} ({numeric.columns[col]}) is too large to be a "
            "number; check the query's sizes and the price and power given"
        )


def summarize(estimates: pd.DataFrame) -> pd.DataFrame:
    """Totals and means per numeric column: the benchmark-level figure."""
    numeric = estimates.drop(columns=["id"], errors="ignore").select_dtypes("number")
    return pd.DataFrame({"total": numeric.sum(), "mean": numeric.mean()}).T


def query_grid(prompt_sizes: list[int], output_sizes: list[int]) -> pd.DataFrame:
    """Every (prompt, output) size pair of the two lists as a query table (prompt_tokens,
    output_tokens), checked like a query file. Raises UserError for a size below 1."""
    p, o = np.meshgrid(prompt_sizes, output_sizes, indexing="ij")
    return validate_queries(
        pd.DataFrame({"prompt_tokens": p.ravel(), "output_tokens": o.ravel()}), "grid"
    )


def profiled_sample(model: CostModel, max_context: int | None = None) -> pd.DataFrame:
    """A few queries across what `model` was profiled on (short, middle and the largest
    prompt; one, a quarter of and the longest output), within the context: what a profile
    prints, and nothing it would have to extrapolate."""
    low, high = model.profiled_prompt_tokens
    longest = model.profiled_output_tokens or 1
    sample = query_grid(
        sorted({low, max(low, high // 4), high}), sorted({1, max(1, longest // 4), longest})
    )
    if max_context is not None:
        sample = sample[sample.prompt_tokens + sample.output_tokens <= max_context]
    return sample.reset_index(drop=True)


def _write_csv(frame: pd.DataFrame, path: Path) -> None:
    """pyarrow's writer where installed: ten times pandas' speed on a million rows."""
    try:
        import pyarrow as pa
        import pyarrow.csv as pa_csv
    except ImportError:
        frame.to_csv(path, index=False)
        return
    pa_csv.write_csv(pa.Table.from_pandas(frame, preserve_index=False), str(path))


def table_suffix(path: str | Path) -> str:
    """The table format of `path` by its extension (lower case): .csv, .jsonl (.ndjson),
    .json or .parquet; UserError for another, so that a verb can say so before its work."""
    suffix = Path(path).suffix.lower()
    if suffix not in (".csv", ".jsonl", ".ndjson", ".json", ".parquet"):
        raise UserError(f"cannot tell the format of {path}: use .csv, .jsonl, .json or .parquet")
    return suffix


def check_table_output(path: str | Path | None) -> None:
    """A table output asked for (None: none) can be written, in a format write_table knows:
    said in one line before any work (store.outputs.check_output, table_suffix)."""
    if path is not None:
        check_output(path)
        table_suffix(path)


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write by extension: .csv, .jsonl, .json or .parquet; one line if it cannot be."""
    path = Path(path)
    suffix = table_suffix(path)
    with writing(path):
        if suffix == ".csv":
            _write_csv(frame, path)
        elif suffix in (".jsonl", ".ndjson"):
            frame.to_json(path, orient="records", lines=True)
        elif suffix == ".json":
            frame.to_json(path, orient="records", indent=1)
        else:
            try:
                frame.to_parquet(path, index=False)
            except ImportError as exc:
                raise UserError("Parquet needs pyarrow: pip install 'infermeter[parquet]'") from exc
    return path
