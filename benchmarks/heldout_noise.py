"""How much of the held-out benchmark's error is the measurement's own noise? No GPU needed.

The held-out runs kept under docs/benchmarks/stores/heldout/ (one folder per commit, the newest
at the top level) measured the same 60 seeded queries per model, each on another H200 (or
another hour of one), with `benchmarks/heldout_bench.py`: the minimum of 3 wall-clock trials
back to back. This script reads their measured.csv and estimates.csv and asks, per model:

- measurement repeatability: each query's measurement against its mean over the runs, after
  each run's speed (the median over its queries, for short and long queries apart: see
  SHORT_OUTPUT) is taken out; the standard deviation of that, in %, is what one run's
  measurement of one query moves. Also for the first trial alone and for the median of 3, to
  see what the 3 trials buy, and with one speed per run for all its queries.
- an oracle: each query priced at its mean measurement over the other runs (times this run's
  speed in the query's group). Its maximum error per run is about what an estimator that knew
  every query's typical runtime would score against that run's measurements (the mean of the
  other runs is itself a little noisy): issue 15's goal (max <= 3%) asks the estimate to beat
  the measurement's own noise where that exceeds it.
- the estimates' errors split into a systematic part (a query's mean error over the runs: the
  model's shape, e.g. PE's steps between knots, plus about 1/R of the rest's variance for R
  runs) and the rest (its standard deviation).

- what the profile said: each run's record (heldout_<model>.json) gives the profile's own
  maximum error on its 16 validation queries beside the benchmark's over its 60; issue 15
  asks them within 1 point. The benchmark's own maximum over 16 of its queries (8 of each
  shape, as the validation's half short and half longer; SUBSAMPLE_DRAWS seeded draws) shows
  how far a 16-query maximum sits from a 60-query one when both come from the same errors.

Run: python benchmarks/heldout_noise.py [--stores DIR] [--name heldout_noise]
Writes docs/benchmarks/heldout_noise.json and .md.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _record import DOCS, read_record, write_result  # noqa: E402

MODELS = ("llama-7b", "llama-13b")
MAX_GOAL_PCT = 3.0
KEY = ["prompt_tokens", "output_tokens"]
# A run's speed is taken out separately for short queries (1-5 output tokens: the §5.4
# workloads' half of the queries, prefill-bound) and long ones
# (decode-bound): cards differ in the ratio (LLaMA-13B at 7f60083 ran its long queries 2.05 %
# slower than the median run and its short ones 0.18 %), and a profile made on the same card
# measures that ratio too, so it is not the noise of a query's measurement.
SHORT_OUTPUT = 5
# The profile's validation queries (experiments.profile.DEFAULT_VALIDATE_GPU), half of each
# shape, and the draws of that many of the benchmark's queries.
VALIDATION_QUERIES = 16
SUBSAMPLE_DRAWS = 4000
SAID_WITHIN_PT = 1.0


def run_folders(stores: Path, model: str) -> list[Path]:
    """Every folder under `stores` (and `stores` itself) holding both CSVs for `model`."""
    found = [stores, *sorted(p for p in stores.iterdir() if p.is_dir())]
    return [
        folder
        for folder in found
        if (folder / f"{model}.measured.csv").exists()
        and (folder / f"{model}.estimates.csv").exists()
    ]


def read_run(folder: Path, model: str) -> pd.DataFrame:
    """One run's queries: measured_s, each trial, and the estimate, indexed by (p, o)."""
    measured = pd.read_csv(folder / f"{model}.measured.csv")
    estimates = pd.read_csv(folder / f"{model}.estimates.csv")
    both = measured.merge(estimates[["id", "runtime_s"]], on="id")
    trials = both["trials_s"].map(json.loads)
    both["first_s"] = trials.map(lambda t: t[0])
    both["median_s"] = trials.map(lambda t: float(np.median(t)))
    return both.set_index(KEY)


def groups_of(index: pd.MultiIndex, split: bool) -> pd.Series:
    """Each query's speed group: "short" (at most SHORT_OUTPUT output tokens) or "long" where
    `split`, else one group for all."""
    outputs = index.get_level_values("output_tokens")
    names = np.where(outputs <= SHORT_OUTPUT, "short", "long") if split else "all"
    return pd.Series(names, index=index)


def repeat_std_pct(values: pd.DataFrame, groups: pd.Series, only: str | None = None) -> float:
    """Std (%) of each query's log measurement about its mean over the runs (columns), each
    run's median speed in each group taken out; corrected for the mean's own share of the
    runs (sqrt(R / (R - 1)) for R runs). `only`: that group's queries alone."""
    logs = np.log(values)
    logs = logs - logs.groupby(groups).transform("median")
    deviation = logs.sub(logs.mean(axis=1), axis=0)
    if only is not None:
        deviation = deviation[groups == only]
    runs = values.shape[1]
    return float(deviation.to_numpy().std() * np.sqrt(runs / (runs - 1)) * 100)


def oracle_max_pct(measured: pd.DataFrame, groups: pd.Series) -> dict[str, float]:
    """Per run: the largest |error| (%) of pricing each query at its mean over the other runs
    (a geometric mean), scaled by this run's speed against them in the query's group."""
    logs = np.log(measured)
    out = {}
    for run in measured.columns:
        others = logs.drop(columns=run).mean(axis=1)
        speed = (logs[run] - others).groupby(groups).transform("median")
        error = np.expm1(others + speed - logs[run]) * 100
        out[run] = float(error.abs().max())
    return out


def run_record(folder: Path, model: str) -> dict[str, Any] | None:
    """The run's record, heldout_<model>.json in `folder` (None where the folder keeps none:
    runs before the benchmark wrote one; one that is not such a record ends the script in a
    line, _record.read_record)."""
    path = folder / f"heldout_{model}.json"
    return read_record(path, "--stores", each_model=("model",)) if path.exists() else None


def provenance(record: dict[str, Any] | None) -> dict[str, Any]:
    """Device, date and commit of a run's record ({} for none)."""
    return {k: record.get(k) for k in ("device", "date", "commit")} if record else {}


def runs_over(max_error_pct: dict[str, float]) -> int:
    """How many runs' maximum error exceeds MAX_GOAL_PCT (issue 15's goal)."""
    return sum(v > MAX_GOAL_PCT for v in max_error_pct.values())


def record_rows(record: dict[str, Any], model: str) -> tuple[dict[str, Any], pd.DataFrame]:
    """A run record's entry for `model` and its per-query rows (shape, runtime and energy
    error in %)."""
    entry = next(m for m in record["models"] if m["model"] == model)
    return entry, pd.DataFrame(entry["rows"])


def subsample_max_pct(errors: pd.Series, shapes: pd.Series, rng: np.random.Generator) -> np.ndarray:
    """The largest |error| (%) of each of SUBSAMPLE_DRAWS draws of VALIDATION_QUERIES queries,
    half of each shape, without replacement."""
    half = VALIDATION_QUERIES // 2
    pools = [errors[shapes == s].abs().to_numpy() for s in sorted(shapes.unique())]
    out = np.empty(SUBSAMPLE_DRAWS)
    for i in range(SUBSAMPLE_DRAWS):
        out[i] = max(rng.choice(pool, size=min(half, len(pool)), replace=False).max()
                     for pool in pools)  # fmt: skip
    return out


def profile_said(model: str, records: dict[str, dict[str, Any] | None]) -> dict:
    """Per run with a record (`records`: by run name, None for none): the profile's validation
    maximum against the benchmark's, for runtime and energy, and the benchmark's own 16-query
    maxima (median, 10-90 %)."""
    rng = np.random.default_rng(15)
    runs: dict[str, Any] = {}
    within: dict[str, list[bool]] = {"runtime": [], "energy": []}
    draws_within: dict[str, list[float]] = {"runtime": [], "energy": []}
    for name, record in records.items():
        if record is None:
            continue
        entry, rows = record_rows(record, model)
        if "profile_said" not in entry:
            continue
        said, run = entry["profile_said"], {}
        for quantity in ("runtime", "energy"):
            told = said.get(f"{quantity}_validation_max_error_pct")
            errors = rows[f"{quantity}_error_pct"].dropna()
            if told is None or errors.empty:
                continue
            bench = float(errors.abs().max())
            sub = subsample_max_pct(errors, rows.loc[errors.index, "shape"], rng)
            within[quantity].append(abs(told - bench) <= SAID_WITHIN_PT)
            draws_within[quantity].append(float(np.mean(np.abs(sub - bench) <= SAID_WITHIN_PT)))
            run[quantity] = {
                "profile_said_max_error_pct": told,
                "benchmark_max_error_pct": bench,
                "benchmark_16_max_error_median_pct": float(np.median(sub)),
                "benchmark_16_max_error_p10_pct": float(np.percentile(sub, 10)),
                "benchmark_16_max_error_p90_pct": float(np.percentile(sub, 90)),
            }
        runs[name] = run
    return {
        "runs": runs,
        **{f"{q}_runs_within_pt": int(sum(within[q])) for q in within},
        **{f"{q}_runs_compared": len(within[q]) for q in within},
        **{
            f"{q}_benchmark_16_within_pt_share": (
                float(np.mean(draws_within[q])) if draws_within[q] else None
            )
            for q in draws_within
        },
    }


def one_model(stores: Path, model: str) -> dict[str, Any]:
    folders = run_folders(stores, model)
    if len(folders) < 3:
        raise SystemExit(f"heldout_noise: {model}: {len(folders)} runs under {stores}, need 3")
    names = [f.name if f != stores else "top" for f in folders]
    records = {name: run_record(f, model) for name, f in zip(names, folders, strict=True)}
    measured_on = {name: where for name, r in records.items() if (where := provenance(r))}
    runs = {name: read_run(f, model) for name, f in zip(names, folders, strict=True)}
    common = sorted(set.intersection(*(set(r.index) for r in runs.values())))
    frame = {name: r.loc[common] for name, r in runs.items()}
    measured = pd.DataFrame({n: r["measured_s"] for n, r in frame.items()})
    errors = pd.DataFrame(
        {n: (r["runtime_s"] / r["measured_s"] - 1) * 100 for n, r in frame.items()}
    )
    systematic = errors.mean(axis=1)
    rest = errors.sub(systematic, axis=0)
    split, single = groups_of(measured.index, True), groups_of(measured.index, False)
    oracle = oracle_max_pct(measured, split)
    oracle_single = oracle_max_pct(measured, single)
    estimator = {n: float(errors[n].abs().max()) for n in errors}
    top = systematic.reindex(systematic.abs().sort_values(ascending=False).index).head(5)
    return {
        "model": model,
        "runs": names,
        "measured_on": measured_on,
        "queries": len(common),
        "short_queries": int((split == "short").sum()),
        "measurement_repeat_std_pct": repeat_std_pct(measured, split),
        "measurement_repeat_std_short_pct": repeat_std_pct(measured, split, "short"),
        "measurement_repeat_std_long_pct": repeat_std_pct(measured, split, "long"),
        "measurement_repeat_std_first_trial_pct": repeat_std_pct(
            pd.DataFrame({n: r["first_s"] for n, r in frame.items()}), split
        ),
        "measurement_repeat_std_median_trial_pct": repeat_std_pct(
            pd.DataFrame({n: r["median_s"] for n, r in frame.items()}), split
        ),
        "measurement_repeat_std_one_speed_pct": repeat_std_pct(measured, single),
        "oracle_max_error_pct": oracle,
        "oracle_runs_over_goal": runs_over(oracle),
        "oracle_one_speed_max_error_pct": oracle_single,
        "oracle_one_speed_runs_over_goal": runs_over(oracle_single),
        "estimate_max_error_pct": estimator,
        "estimate_runs_over_goal": runs_over(estimator),
        "estimate_systematic_rms_pct": float(np.sqrt((systematic**2).mean())),
        "estimate_systematic_max_pct": float(systematic.abs().max()),
        "estimate_rest_std_pct": float(
            rest.to_numpy().std() * np.sqrt(errors.shape[1] / (errors.shape[1] - 1))
        ),
        "profile_said": profile_said(model, records),
        "largest_systematic": [
            {"prompt_tokens": int(p), "output_tokens": int(o), "mean_error_pct": float(v)}
            for (p, o), v in top.items()
        ],
    }


def table_rows(results: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    rows = []
    for r in results:
        m, n = r["model"], len(r["runs"])
        rows.append(
            (
                f"{m}: runs, queries in all of them",
                f"{n} ({', '.join(r['runs'])}), {r['queries']}",
                "-",
            )
        )
        rows.append(
            (
                f"{m}: one run's measurement of a query, std about its mean over the runs "
                f"(the run's speed taken out for short and long queries apart)",
                f"{r['measurement_repeat_std_pct']:.2f} %: {r['short_queries']} queries of "
                f"<= {SHORT_OUTPUT} output tokens {r['measurement_repeat_std_short_pct']:.2f} %, "
                f"the rest {r['measurement_repeat_std_long_pct']:.2f} % (first trial alone "
                f"{r['measurement_repeat_std_first_trial_pct']:.2f} %, median of 3 "
                f"{r['measurement_repeat_std_median_trial_pct']:.2f} %; one speed per run "
                f"{r['measurement_repeat_std_one_speed_pct']:.2f} %)",
                "-",
            )
        )
        oracle = ", ".join(f"{v:.2f}" for v in r["oracle_max_error_pct"].values())
        single = r["oracle_one_speed_runs_over_goal"]
        rows.append(
            (
                f"{m}: oracle (each query at its mean over the other runs, scaled by the run's "
                f"speed): max error per run (%)",
                f"{oracle}; over {MAX_GOAL_PCT:g} % in {r['oracle_runs_over_goal']} of {n} "
                f"(with one speed per run: in {single} of {n})",
                f"max <= {MAX_GOAL_PCT:g} %",
            )
        )
        estimate = ", ".join(f"{v:.2f}" for v in r["estimate_max_error_pct"].values())
        rows.append(
            (
                f"{m}: the profile's estimates: max error per run (%)",
                f"{estimate}; over {MAX_GOAL_PCT:g} % in {r['estimate_runs_over_goal']} of {n}",
                f"max <= {MAX_GOAL_PCT:g} %",
            )
        )
        worst = "; ".join(
            f"p = {q['prompt_tokens']}, o = {q['output_tokens']}: {q['mean_error_pct']:+.2f} %"
            for q in r["largest_systematic"][:3]
        )
        rows.append(
            (
                f"{m}: estimates' error, systematic (a query's mean over the runs) and the rest",
                f"systematic rms {r['estimate_systematic_rms_pct']:.2f} %, max "
                f"{r['estimate_systematic_max_pct']:.2f} % ({worst}); the rest: std "
                f"{r['estimate_rest_std_pct']:.2f} %",
                "-",
            )
        )
        rows.extend(said_rows(m, r["profile_said"]))
    return rows


def said_rows(model: str, said: dict[str, Any]) -> list[tuple[str, str, str]]:
    """Rows for what the profiles said about their maxima against the benchmark's."""
    rows = []
    for quantity in ("runtime", "energy"):
        n = said[f"{quantity}_runs_compared"]
        if not n:
            continue
        pairs = ", ".join(
            f"{name} {run[quantity]['profile_said_max_error_pct']:.2f}/"
            f"{run[quantity]['benchmark_max_error_pct']:.2f}"
            for name, run in said["runs"].items()
            if quantity in run
        )
        sixteen = ", ".join(
            f"{run[quantity]['benchmark_16_max_error_median_pct']:.2f}"
            for run in said["runs"].values()
            if quantity in run
        )
        share = said[f"{quantity}_benchmark_16_within_pt_share"]
        rows.append(
            (
                f"{model}: {quantity} max error, the profile's 16 validation queries / the "
                f"benchmark's 60 (%), per run",
                f"{pairs}; within {SAID_WITHIN_PT:g} point in "
                f"{said[f'{quantity}_runs_within_pt']} of {n} runs",
                f"within {SAID_WITHIN_PT:g} point",
            )
        )
        rows.append(
            (
                f"{model}: {quantity}: the benchmark's own max over {VALIDATION_QUERIES} of its "
                f"queries (half of each shape; median of {SUBSAMPLE_DRAWS} draws, per run)",
                f"{sixteen}; within {SAID_WITHIN_PT:g} point of its max over all "
                f"in {share * 100:.0f} % of draws",
                "-",
            )
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--stores", type=Path, default=DOCS / "stores" / "heldout")
    parser.add_argument("--name", default="heldout_noise")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    results = [one_model(args.stores, m) for m in MODELS]
    path = write_result(args.name, {"models": results}, table_rows(results), args.out)
    print(f"written {path}")


if __name__ == "__main__":
    main()
