"""Efficiency-capability trade-offs: the idealized-runtime paper's §5.4, Figs. 9 and 10.

Three inputs are joined per (model, scenario):

    capabilities  a score per model and scenario (HELM accuracy, or any score, higher better)
    queries       each scenario's instances as prompt and output token counts, or mean sizes
    profiles      per model: the idealized runtime model (reference stack) with its pricing
                  and measured energy model; for an API, its raw and denoised models

Every instance is priced and the metrics are averaged over the scenario's instances (as in
Fig. 9): parameters, FLOPs per query, raw / denoised / idealized runtime, idealized cost,
idealized energy at rated power and, where the profile metered it, measured energy. Then a
Pareto frontier per metric (lower metric, higher score) and ranks under objectives written as
expressions over the columns, e.g. "accuracy / idealized_runtime_s".
"""

from __future__ import annotations

import ast
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from infermeter.errors import UserError
from infermeter.model.cost_model import CostModel, ModelSet
from infermeter.model.estimate import (
    Pricing,
    check_possible,
    energy_notes,
    range_warnings,
    read_csv_by_hand,
    table_suffix,
)
from infermeter.spec.model import ModelSpec
from infermeter.units import MS_PER_S, one_of, to_giga

# Efficiency metrics in Fig. 9's order, then the energy rows infermeter adds. Lower is better.
METRICS: dict[str, str] = {
    "params_b": "model size (billion parameters)",
    "flops_per_query": "FLOPs per query",
    "raw_runtime_s": "raw runtime (s)",
    "denoised_runtime_s": "denoised runtime (s)",
    "idealized_runtime_s": "idealized runtime (s)",
    "idealized_cost_usd": "idealized cost ($)",
    "idealized_energy_j": "idealized energy at rated power (J)",
    "measured_energy_j": "measured energy (J)",
}

# Fig. 10's objectives, higher is better. The paper's f1 is accuracy / idealized runtime, and
# its f2 = accuracy / log(idealized runtime) ("de-emphasizes the importance of inference
# efficiency compared to accuracy") with no unit. In any unit the log of a runtime below one
# unit is negative and of one unit 0: in milliseconds a 0.44 ms model of accuracy 0.9 scored
# -1.1 and ranked below a 0.95 ms model of accuracy 0.01 (-0.19). So f2 here is
# accuracy / log(1 + runtime in ms): log(1 + x) is positive and rising for every x > 0, so the
# score rises with accuracy (a score >= 0) and falls with runtime for any positive runtime, and
# above ~100 ms it is within 0.3% of the log of the runtime in ms (log(1 + x) - log(x) < 1/x).
RUNTIME_OBJECTIVE = "accuracy / runtime in s"
LOG_RUNTIME_OBJECTIVE = "accuracy / log(1 + runtime in ms)"
DEFAULT_OBJECTIVES: dict[str, str] = {
    RUNTIME_OBJECTIVE: "accuracy / idealized_runtime_s",
    LOG_RUNTIME_OBJECTIVE: f"accuracy / log1p(idealized_runtime_s * {MS_PER_S:g})",
}

CAPABILITY_HINT = (
    "a capability table needs columns model, scenario and a score (accuracy, or name one with "
    "--metric); or HELM-style JSON {scenario: {model: {metric: value}}}"
)


@dataclass
class ModelProfile:
    """What is known about one model's efficiency; everything but the name is optional."""

    name: str  # matched against the capability table's model names (spelling-proof)
    idealized: CostModel | None = None  # runtime on the reference stack
    pricing: Pricing | None = None  # of the reference stack
    spec: ModelSpec | None = None  # for parameters and FLOPs
    energy: CostModel | None = None  # measured energy on the reference stack
    raw: CostModel | None = None  # an API's runtime, mean over trials
    denoised: CostModel | None = None  # an API's runtime, minimum over trials
    source: str = ""  # where the numbers came from, for tables and captions


@dataclass
class Tradeoffs:
    """The joined table (one row per model and scenario), notes on what did not join, and the
    warnings on scenario queries a model prices by extrapolation (scenario_warnings)."""

    table: pd.DataFrame
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


# ---- inputs ------------------------------------------------------------------------------
def _read_any(path: Path) -> pd.DataFrame | Any:
    """A CSV as a frame; JSON / JSONL as parsed data (records or nested objects); Parquet as
    a frame. UserError for another extension (estimate.table_suffix) or an unreadable file."""
    suffix = table_suffix(path)
    try:
        if suffix == ".csv":
            # Lines starting with "#" are notes (where the numbers come from), not rows.
            lines = [ln for ln in path.read_text().splitlines() if not ln.startswith("#")]
            return read_csv_by_hand(io.StringIO("\n".join(lines)))
        if suffix in (".jsonl", ".ndjson"):
            return pd.read_json(path, lines=True)
        if suffix == ".json":
            return json.loads(path.read_text())
        return pd.read_parquet(path)
    except FileNotFoundError as exc:
        raise UserError(f"{path} does not exist") from exc
    except Exception as exc:  # pandas/json raise many kinds for a bad file; all mean the same
        raise UserError(f"cannot read {path}: {exc}".splitlines()[0]) from exc


def _helm_run_name(name: str) -> tuple[str, str] | None:
    """'boolq:model=openai_davinci,data_augmentation=canonical' -> ('boolq', 'openai/davinci')."""
    scenario, sep, args = name.partition(":")
    if not sep:
        return None
    for part in args.split(","):
        key, _, value = part.partition("=")
        if key.strip() == "model":
            return scenario.strip(), value.strip().replace("_", "/", 1)
    return None


def _score_of(value: Any, metric: str | None) -> tuple[float, str] | None:
    """A number, {metric: number} or HELM stats [{"name": {"name": m}, "mean": x}]."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value), metric or "accuracy"
    if isinstance(value, dict):
        names = [metric] if metric else ["accuracy", "exact_match", "quasi_exact_match", "score"]
        for name in names:
            if name in value and isinstance(value[name], (int, float)):
                return float(value[name]), name
        return None
    if isinstance(value, list):
        stats = {
            s["name"]["name"]: s.get("mean")
            for s in value
            if isinstance(s, dict) and isinstance(s.get("name"), dict) and "name" in s["name"]
        }
        return _score_of(stats, metric)
    return None


def _nested_records(data: dict[str, Any], metric: str | None) -> list[dict[str, Any]]:
    rows = []
    for key, value in data.items():
        run = _helm_run_name(key)
        if run is not None:  # HELM run names map straight to one score
            score = _score_of(value, metric)
            if score is not None:
                rows.append({"scenario": run[0], "model": run[1], "accuracy": score[0]})
            continue
        if not isinstance(value, dict):
            raise UserError(f"capability JSON entry {key!r} is not an object; {CAPABILITY_HINT}")
        for model, result in value.items():
            score = _score_of(result, metric)
            if score is None:
                raise UserError(
                    f"capability JSON {key!r} / {model!r} has no "
                    f"{metric or 'accuracy/exact_match'} number; {CAPABILITY_HINT}"
                )
            rows.append({"scenario": key, "model": model, "accuracy": score[0]})
    return rows


def read_capabilities(path: str | Path, metric: str | None = None) -> pd.DataFrame:
    """model, scenario, accuracy (the chosen score) and any other numeric columns."""
    path = Path(path)
    data = _read_any(path)
    if isinstance(data, list):
        data = pd.DataFrame(data)
    if isinstance(data, dict):
        data = pd.DataFrame(_nested_records(data, metric))
    frame: pd.DataFrame = data
    return validate_capabilities(frame, metric, str(path))


def validate_capabilities(
    frame: pd.DataFrame, metric: str | None = None, origin: str = "capabilities"
) -> pd.DataFrame:
    """A capability table checked and normalised: model, scenario and a float `accuracy` column
    (`metric` renamed to it, or the one numeric column). Raises UserError naming the row
    for a missing column, a non-number score or a model listed twice on a scenario."""
    if frame.empty:
        raise UserError(f"{origin} holds no scores; {CAPABILITY_HINT}")
    missing = [c for c in ("model", "scenario") if c not in frame.columns]
    if missing:
        raise UserError(f"{origin} lacks column(s) {', '.join(missing)}; {CAPABILITY_HINT}")
    frame = frame.copy()
    if metric and metric != "accuracy":
        if metric not in frame.columns:
            raise UserError(
                f"{origin} has no column {metric!r}; its columns: {one_of(frame, 'and')}"
            )
        frame = frame.drop(columns="accuracy", errors="ignore").rename(columns={metric: "accuracy"})
    if "accuracy" not in frame.columns:
        numeric = [c for c in frame.columns if c not in ("model", "scenario")]
        numeric = [c for c in numeric if pd.to_numeric(frame[c], errors="coerce").notna().all()]
        if len(numeric) != 1:
            raise UserError(f"{origin}: name the score column with --metric; {CAPABILITY_HINT}")
        frame = frame.rename(columns={numeric[0]: "accuracy"})
    scores = pd.to_numeric(frame["accuracy"], errors="coerce")
    if scores.isna().any():
        row = int(np.flatnonzero(scores.isna())[0])
        raise UserError(f"{origin}: the score must be a number in every row (row {row + 1})")
    frame["accuracy"] = scores.astype(float)
    frame["model"] = frame["model"].astype(str)
    frame["scenario"] = frame["scenario"].astype(str)
    dup = frame.duplicated(["model", "scenario"])
    if dup.any():
        row = frame[dup].iloc[0]
        raise UserError(f"{origin}: {row['model']!r} on {row['scenario']!r} is listed twice")
    return frame.reset_index(drop=True)


def read_scenario_queries(sources: Sequence[str | Path]) -> pd.DataFrame:
    """scenario, prompt_tokens, output_tokens: each instance, or one row of mean sizes.

    A source is `SCENARIO=FILE` (every row belongs to SCENARIO) or `FILE` with a scenario
    column. Mean sizes may be fractional; the runtime model is piecewise linear in both.
    """
    frames = []
    for source in sources:
        text = str(source)
        scenario, sep, file = text.partition("=")
        path = Path(file if sep else text)
        data = _read_any(path)
        frame = pd.DataFrame(data) if not isinstance(data, pd.DataFrame) else data
        if sep:
            frame = frame.assign(scenario=scenario)
        elif "scenario" not in frame.columns:
            raise UserError(
                f"{path} has no scenario column; pass it as SCENARIO={path} or add the column"
            )
        frames.append(validate_scenario_queries(frame, str(path)))
    if not frames:
        raise UserError("no scenario queries given; pass --queries SCENARIO=FILE")
    return pd.concat(frames, ignore_index=True)


def validate_scenario_queries(frame: pd.DataFrame, origin: str = "queries") -> pd.DataFrame:
    """scenario, prompt_tokens, output_tokens as floats, checked. Raises UserError for a
    missing column, no rows, or a size that is not a number >= 1 (naming the row)."""
    missing = [c for c in ("prompt_tokens", "output_tokens") if c not in frame.columns]
    if missing:
        raise UserError(
            f"{origin} lacks column(s) {', '.join(missing)}; each row needs prompt_tokens and "
            "output_tokens (per instance, or the scenario's mean sizes)"
        )
    if frame.empty:
        raise UserError(f"{origin} holds no queries")
    out = frame[["scenario", "prompt_tokens", "output_tokens"]].copy()
    out["scenario"] = out["scenario"].astype(str)
    for column in ("prompt_tokens", "output_tokens"):
        values = pd.to_numeric(out[column], errors="coerce")
        bad = values.isna() | ~(values >= 1)
        if bad.any():
            row = int(np.flatnonzero(bad)[0])
            raise UserError(f"{origin}: {column} must be a number >= 1 (row {row + 1})")
        out[column] = values.astype(float)
    return out


# ---- metrics -----------------------------------------------------------------------------
def query_flops(spec: ModelSpec, prompt_tokens: Any, output_tokens: Any) -> np.ndarray:
    """FLOPs of whole queries: one prefill of p tokens and o − 1 decode steps (vectorised).

    The paper's counting (Appendix A): matmuls only, full s×s attention, no LM head. The
    decode steps see contexts p, p+1, …, p+o−2, so their attention term sums in closed form.
    """
    p = np.asarray(prompt_tokens, dtype=float)
    n = np.asarray(output_tokens, dtype=float) - 1.0
    layers, matmul, q_dim = spec.num_layers, spec.layer_matmul_params, spec.q_dim
    prefill = layers * (2 * p * matmul + 4 * p * p * q_dim)
    contexts = n * p + n * (n - 1) / 2
    decode = layers * (2 * n * matmul + 4 * contexts * q_dim)
    return prefill + decode


def _mean_prediction(model: CostModel | None, queries: pd.DataFrame, where: str = "") -> float:
    """The mean of `model`'s price of `queries` (NaN without a model). Raises UserError, after
    `where` (the scenario and model), for a query it prices at 0 or below (check_possible)."""
    if model is None:
        return math.nan
    values = model.predict(queries["prompt_tokens"].to_numpy(), queries["output_tokens"].to_numpy())
    try:
        check_possible(values, queries, ModelSet([model]))
    except UserError as error:
        raise UserError(f"{where}{error}") from error
    return float(np.mean(values))


def _profile_index(profiles: Sequence[ModelProfile]) -> dict[str, ModelProfile]:
    from infermeter.model.fitted import model_key

    index: dict[str, ModelProfile] = {}
    for prof in profiles:
        index.setdefault(model_key(prof.name), prof)
    return index


def _priced_by(prof: ModelProfile) -> list[tuple[str, CostModel]]:
    """The runtime models a profile prices a scenario's queries with, each labelled: its
    idealized model, and an API's denoised one (its raw model has the same points)."""
    models = [(prof.name, prof.idealized), (f"{prof.name} (API)", prof.denoised)]
    return [(label, model) for label, model in models if model is not None]


def scenario_warnings(
    scenario: str, profiles: Sequence[ModelProfile], queries: pd.DataFrame
) -> list[str]:
    """`estimate`'s checks (estimate.range_warnings) of one scenario's `queries` against the
    runtime models of the `profiles` priced on it, each warning after the scenario's name.
    Raises UserError, naming the scenario, for a query past a model's context."""
    models = [labelled for prof in profiles for labelled in _priced_by(prof)]
    if not models:
        return []
    try:
        notes = range_warnings(models, queries)
    except UserError as error:
        raise UserError(f"scenario {scenario}, {error}") from error
    notes += [
        f"{prof.name}: {note}"
        for prof in profiles
        if prof.energy is not None
        for note in energy_notes(queries, prof.energy)
    ]
    return [f"scenario {scenario}: {note}" for note in notes]


def tradeoff_table(
    profiles: Sequence[ModelProfile], capabilities: pd.DataFrame, queries: pd.DataFrame
) -> Tradeoffs:
    """One row per (model, scenario) that has a profile and queries: metrics averaged. Each
    scenario's queries are checked against the models that price them as `estimate` checks
    its queries (scenario_warnings): a query past a model's context raises UserError, and the
    warnings on extrapolated ones come back in the result's `warnings`."""
    from infermeter.model.fitted import model_key

    index = _profile_index(profiles)
    by_scenario = {name: group for name, group in queries.groupby("scenario")}
    rows, notes = [], []
    unprofiled = sorted({m for m in capabilities["model"] if model_key(m) not in index})
    if unprofiled:
        notes.append(f"no profile for {len(unprofiled)} model(s): {', '.join(unprofiled[:8])}")
    no_queries = sorted(set(capabilities["scenario"]) - set(by_scenario))
    if no_queries:
        notes.append(f"no queries for scenario(s): {', '.join(no_queries)}")
    extra = [
        c
        for c in capabilities.columns
        if c not in ("model", "scenario", "accuracy") and capabilities[c].dtype.kind in "fiu"
    ]
    priced: dict[str, list[ModelProfile]] = {}
    for cap in capabilities.to_dict("records"):
        prof = index.get(model_key(cap["model"]))
        group = by_scenario.get(cap["scenario"])
        if prof is None or group is None:
            continue
        priced.setdefault(cap["scenario"], []).append(prof)
        p = group["prompt_tokens"].to_numpy(dtype=float)
        o = group["output_tokens"].to_numpy(dtype=float)
        where = f"scenario {cap['scenario']}, {prof.name}: "
        idealized = _mean_prediction(prof.idealized, group, where)
        pricing = prof.pricing
        row: dict[str, Any] = {
            "model": cap["model"],
            "scenario": cap["scenario"],
            "accuracy": cap["accuracy"],
            "instances": len(group),
            "mean_prompt_tokens": float(p.mean()),
            "mean_output_tokens": float(o.mean()),
            "params_b": to_giga(prof.spec.num_params) if prof.spec else math.nan,
            "flops_per_query": (
                float(np.mean(query_flops(prof.spec, p, o))) if prof.spec else math.nan
            ),
            "raw_runtime_s": _mean_prediction(prof.raw, group, where),
            "denoised_runtime_s": _mean_prediction(prof.denoised, group, where),
            "idealized_runtime_s": idealized,
            "idealized_cost_usd": idealized * pricing.usd_per_second if pricing else math.nan,
            "idealized_energy_j": idealized * pricing.watts if pricing else math.nan,
            "measured_energy_j": _mean_prediction(prof.energy, group, where),
            "stack": (f"{pricing.num_accelerators} × {pricing.accelerator}" if pricing else "-"),
            "source": prof.source,
        }
        for column in extra:
            row[column] = cap[column]
        rows.append(row)
    negative = sorted({str(r["model"]) for r in rows if r["accuracy"] < 0})
    if negative:
        notes.append(
            f"a score below 0 ({', '.join(negative[:8])}): the default objectives divide the "
            "score by a cost, which would rank a negative score higher the costlier its model, "
            "so they leave it unranked; rank such scores with your own --objective"
        )
    if not rows:
        raise UserError(
            "no (model, scenario) pair has both a profile and queries: check that the model "
            "names of the capability table match the profiled models and that every scenario "
            "has --queries"
        )
    warnings = [
        warning
        for scenario, profs in priced.items()
        for warning in scenario_warnings(scenario, profs, by_scenario[scenario])
    ]
    return Tradeoffs(add_pareto(pd.DataFrame(rows)), notes, warnings)


# ---- Pareto frontiers (Fig. 9) -----------------------------------------------------------
def pareto_front(cost: Sequence[float], score: Sequence[float]) -> np.ndarray:
    """Mask of points no other point beats: lower-or-equal cost and higher-or-equal score,
    one of them strictly. NaN in either never lies on the frontier."""
    x = np.asarray(cost, dtype=float)
    y = np.asarray(score, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    front = np.zeros(x.size, dtype=bool)
    idx = np.flatnonzero(ok)
    # Cheapest first, and at equal cost the best score first: a point is on the frontier
    # exactly when its score beats every cheaper (or equally cheap, earlier) point's.
    order = idx[np.lexsort((-y[idx], x[idx]))]
    best = -np.inf
    for i in order:
        if y[i] > best:
            front[i] = True
            best = y[i]
    return front


def add_pareto(table: pd.DataFrame) -> pd.DataFrame:
    """A boolean column pareto_<metric> per metric, computed within each scenario."""
    table = table.copy()
    for metric in METRICS:
        if metric not in table:
            continue
        column = np.zeros(len(table), dtype=bool)
        for _, group in table.groupby("scenario"):
            mask = pareto_front(group[metric], group["accuracy"])
            column[table.index.get_indexer(group.index)] = mask
        table[f"pareto_{metric}"] = column
    return table


# ---- objectives and ranks (Fig. 10) ------------------------------------------------------
_FUNCTIONS = frozenset(
    {"log", "log10", "log1p", "exp", "expm1", "sqrt", "abs", "sin", "cos", "tanh", "arctan"}
)
_NODES = (
    ast.Expression,
    ast.BinOp,
    ast.UnaryOp,
    ast.Name,
    ast.Load,
    ast.Constant,
    ast.Call,
    ast.Add,
    ast.Sub,
    ast.Mult,
    ast.Div,
    ast.Pow,
    ast.USub,
    ast.UAdd,
)


def check_objective(expression: str, columns: Sequence[str]) -> None:
    """Allow arithmetic on column names, numbers and a few math functions, nothing else.

    pandas.eval alone would also evaluate attribute access (`accuracy.__class__`), so the
    expression is vetted on its syntax tree first.
    """
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise UserError(f"objective {expression!r} is not an expression ({exc.msg})") from None
    known = set(columns)
    for node in ast.walk(tree):
        if not isinstance(node, _NODES):
            raise UserError(
                f"objective {expression!r} uses {type(node).__name__}; write arithmetic "
                "(+ - * / **) on columns and numbers, and functions like log(...)"
            )
        if isinstance(node, ast.Call) and (
            not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS or node.keywords
        ):
            raise UserError(
                f"objective {expression!r}: only {', '.join(sorted(_FUNCTIONS))} may be called"
            )
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float)):
            raise UserError(f"objective {expression!r}: only numbers may appear as constants")
        if isinstance(node, ast.Name) and node.id not in known | _FUNCTIONS:
            numeric = sorted(c for c in known if not c.startswith("pareto_"))
            raise UserError(
                f"objective {expression!r} names unknown column {node.id!r}; columns: "
                + ", ".join(numeric)
            )


def evaluate_objective(table: pd.DataFrame, expression: str) -> pd.Series:
    """An objective (arithmetic on the table's numeric columns, see check_objective) per row,
    as floats. Raises UserError for an expression that is not allowed or does not
    evaluate."""
    numeric = [c for c in table.columns if table[c].dtype.kind in "fiub"]
    check_objective(expression, numeric)
    try:
        with np.errstate(all="ignore"):
            values = table[numeric].astype(float).eval(expression.strip(), engine="python")
    except Exception as exc:  # pandas' own parser may still refuse: say so in one line
        raise UserError(f"cannot evaluate objective {expression!r}: {exc}".splitlines()[0]) from exc
    if np.isscalar(values):
        values = pd.Series(float(values), index=table.index)
    return pd.Series(np.asarray(values, dtype=float), index=table.index)


def parse_objectives(items: Sequence[str]) -> dict[str, str]:
    """`NAME=EXPR` or a bare `EXPR` (named by itself)."""
    objectives: dict[str, str] = {}
    for item in items:
        name, sep, expr = item.partition("=")
        # "a == b" is no objective; a bare expression may hold no "=" at all
        if sep and name.strip() and not expr.startswith("="):
            objectives[name.strip()] = expr.strip()
        else:
            objectives[item.strip()] = item.strip()
    return objectives


def rank_models(table: pd.DataFrame, objectives: Mapping[str, str] | None = None) -> pd.DataFrame:
    """Long table: objective, scenario, model, value, rank (1 = best, highest value).

    The default objectives (DEFAULT_OBJECTIVES: accuracy / runtime and accuracy / log(1 +
    runtime in ms)) never rank a model below one it matches or beats on both accuracy (a
    score >= 0) and runtime; they leave a score below 0 unranked (dividing it by a cost would
    rank it higher the costlier its model). A value of +inf (a score over a cost that rounds
    to 0) ranks first and -inf last; NaN (no runtime, say) is not ranked."""
    objectives = dict(objectives or DEFAULT_OBJECTIVES)
    frames = []
    for name, expression in objectives.items():
        values = evaluate_objective(table, expression)
        if expression in DEFAULT_OBJECTIVES.values() and "accuracy" in table:
            values = values.where(table["accuracy"] >= 0)  # score / cost inverts below 0
        frame = table[["scenario", "model"]].assign(objective=name, value=values.to_numpy())
        frame["rank"] = frame.groupby("scenario")["value"].rank(ascending=False, method="min")
        frames.append(frame[["objective", "scenario", "model", "value", "rank"]])
    return pd.concat(frames, ignore_index=True)
