"""Fitting a stored run or a points file for a caller (the CLI, a notebook): the fit settings
checked, the fit made or explained, saved, and described in lines of text.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from infermeter.errors import UserError, not_both
from infermeter.model.cost_model import SCHEMA, SET_SCHEMA, CostModel, save_models
from infermeter.model.estimate import POINTS_COLUMNS, read_points, require_file
from infermeter.model.fit import FitPolicy, fit_profile
from infermeter.model.fitted import fit_run, fit_sustained
from infermeter.store.db import DEFAULT_STORE, Store, require_store
from infermeter.units import plural, span_text, to_pct

if TYPE_CHECKING:
    from infermeter.requests import FitRequest


def validation_line(model: CostModel) -> str:
    """The figure a profile reports about itself: its error (%) on queries it never profiled."""
    check = model.fit.get("validation") or {}
    if not check.get("n"):
        if (model.provenance or {}).get("points_file"):
            return "not validated (a points file holds no validation queries)"
        return "not validated (no validation queries measured; profile with --validate N)"
    return (
        f"validated on {plural(check['n'], 'query')} never profiled: MAPE "
        f"{check['mape_pct']:.2f}%, max {check['max_error_pct']:.2f}%, mean error "
        f"{check['bias_pct']:+.2f}%"
    )


def sustained_lines(models: list[CostModel], note: str | None) -> list[str]:
    """What `fit` and `profile` say of the sustained runtime model(s): per batch size, the
    per-token g and its validation against the queries' own time back to back; or the note."""
    if note:
        return [note]
    return [
        f"runtime back to back (sustained, batch {m.batch_size}): g = {m.per_output_token:.6g} s; "
        + validation_line(m)
        for m in models
    ]


def fit_lines(model: CostModel, warning: str | None = None) -> list[tuple[str, str]]:
    """What a fit says about itself after its table, as (kind, text) in order: kind "" for a
    result line, "warning" (e.g. `warning`, the profile's trust warning) or "note"."""
    sizes = model.prompt_sizes
    lines = [
        (
            "",
            f"per output token g = {model.per_output_token:.6g} {model.unit}"
            + (f", overhead = {model.overhead:.6g} {model.unit}" if model.overhead else "")
            + f"; lines' R² overall = {model.fit.get('r2_overall', float('nan')):.6f}; PE at "
            f"{plural(len(sizes), 'prompt size')} ({span_text(sizes[0], sizes[-1])}); fitted with "
            f"{model.describe_fit()}",
        ),
        ("", f"{model.quantity}: {validation_line(model)}"),
    ]
    lines += [("warning", warning)] if warning else []
    lines += [("note", str(note)) for note in model.fit.get("notes") or []]
    cv = model.fit.get("cross_validation")
    if cv and cv.get("folds"):
        lines.append(
            (
                "",
                f"k-fold over the profiled points ({cv['folds']} folds; interpolation within "
                f"the grid, not new queries): MAPE {cv['mape']:.2f}%, max "
                f"{cv['max_abs_pct_error']:.2f}%",
            )
        )
    return lines


def fit_or_note(
    db: Store, run_id: int, outcome: Any, policy: FitPolicy
) -> tuple[list[CostModel], str | None]:
    """(the run's models under `policy`, None), or ([], why) when an incomplete API run
    (`outcome` from backends.api.outcome) cannot be fitted: the exit code says the rest.

    Raises UserError, saying the run is stored, when a complete run cannot be fitted.
    """
    try:
        return fit_run(db, run_id, policy), None
    except UserError as error:
        if outcome is None or outcome.complete:
            raise UserError(f"run {run_id} is stored, but {error}") from error
        return [], str(error)


def is_model_file(path: Path) -> bool:
    """Whether `path` holds a cost model infermeter wrote (model.cost_model's schema); a file
    of anything else there is not ours to remove."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("schema") in (SCHEMA, SET_SCHEMA)


def save_fitted(
    models: list[CostModel], output: Path, sustained: list[CostModel] | None = None
) -> list[str]:
    """The runtime model(s) to `output`, the energy model(s) beside it as OUTPUT.energy.json
    and the `sustained` runtime model(s) (fitted.fit_sustained) as OUTPUT.sustained.json;
    either file left there by an earlier fit is removed where this fit has none. Returns one
    line per file written or removed. Raises UserError when a file cannot be written."""
    runtime = [m for m in models if m.quantity == "runtime_s"]
    beside = (
        ("energy model", ".energy", [m for m in models if m.quantity == "energy_j"]),
        ("runtime model back to back (sustained)", ".sustained", sustained or []),
    )
    written = []
    try:
        save_models(runtime, output)
        written.append(f"runtime model written to {output}")
        for what, suffix, fitted in beside:
            path = output.with_name(output.stem + suffix + output.suffix)
            if fitted:
                save_models(fitted, path)
                written.append(f"{what} written to {path}")
            elif is_model_file(path):  # an earlier fit's: it would be priced with this one
                path.unlink()
                written.append(f"removed {path}: an earlier fit's {what}; this fit has none")
    except OSError as exc:
        raise UserError(f"cannot write {output}: {exc.strerror or exc}; pass another path") from exc
    return written


def parse_overhead(text: str) -> str | float:
    """--overhead: "none", "auto" or a finite number of seconds >= 0 (else UserError)."""
    if text in ("none", "auto"):
        return text
    try:
        value = float(text)
    except ValueError:
        raise UserError("--overhead must be none, auto or a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise UserError("--overhead must be none, auto or a finite number of seconds >= 0")
    return value


def fit_settings(
    denoise: str | None,
    overhead: str | None,
    decode: str | None,
    slopes: str,
    folds: int,
    accept_poor_fit: bool,
) -> dict[str, Any]:
    """FitPolicy keywords from the `fit` command's options, checked (UserError if not valid)."""
    if denoise not in (None, "min", "median", "mean"):
        raise UserError("--denoise must be min, median or mean")
    if decode not in (None, "line", "curve"):
        raise UserError("--decode must be line or curve")
    if slopes not in ("per-prompt", "global"):
        raise UserError("--slopes must be per-prompt or global")
    if folds < 0 or folds == 1:
        raise UserError("--folds must be 0 (none) or at least 2")
    return {
        "denoise": denoise,
        "overhead": parse_overhead(overhead) if overhead is not None else None,
        "decode": decode,
        "slopes": slopes.replace("-", "_"),
        "folds": folds,
        "accept_poor_fit": accept_poor_fit,
    }


def read_points_file(path: Path) -> pd.DataFrame:
    """`fit --points`: the measured points of `path` (model.estimate.read_points). A file
    that is not a points file is refused in one line (UserError) saying what it is instead (a
    fitted model, or another JSON object, where rows of measurements belong) or which columns
    a points file has."""
    require_file(path, "points file", "check --points")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError):
            data = None  # read_points says what is wrong with it
        if isinstance(data, dict) and "prompt_tokens" not in data:  # not a table by columns
            raise UserError(
                f"{path} is {_json_kind(data)}, not a points file; give --points a CSV, JSONL "
                f"or JSON list of measurements with columns {POINTS_COLUMNS}"
            )
    return read_points(path, "check --points")


def _json_kind(data: dict[str, Any]) -> str:
    """What a JSON object that is not a table of points is, in words."""
    if data.get("schema") in (SCHEMA, SET_SCHEMA) or "prompt_encoding" in data:
        return "a fitted model (price queries with it: infermeter estimate --profile FILE)"
    return "a JSON object without a prompt_tokens column"


@dataclass
class Refit:
    """A fit made on request: its models and whether they were stored as the run's fit."""

    models: list[CostModel]
    stored: bool
    sustained: list[CostModel] = field(default_factory=list)
    sustained_note: str | None = None  # why there is no sustained model


def refit(
    settings: dict[str, Any],
    points: Path | None = None,
    model_name: str = "",
    store: Path | None = None,
    run: int | None = None,
    save: bool | None = None,
) -> Refit:
    """Fit a points file (`points`, named `model_name` or the file's stem), or run `run` of
    `store` (None: DEFAULT_STORE; its latest run by default). A run's fit is stored when
    `save`, or by default when every setting is the default, so an exploratory fit never
    replaces it. Raises UserError, before anything is read, for a store that does not exist
    (it is never made here), and for a points file with a run, a store or `save` (a points
    file is fitted on its own: it has no run to read or store a fit with)."""
    if points is not None:
        if run is not None:
            raise not_both(
                f"a run ({run})", f"--points {points}", "a points file is fitted on its own",
                f"drop {run} or --points",
            )  # fmt: skip
        if save:
            raise UserError(
                "--save stores a fit as a stored run's fit, and --points has no run; drop "
                "--save and keep the fit with --output FILE"
            )
        if store is not None:
            raise not_both(
                f"--store {store}", f"--points {points}",
                "a points file is fitted on its own and nothing is read from or stored in a store",
                "drop --store (keep the fit with --output FILE) or --points",
            )  # fmt: skip
        policy = FitPolicy(api=False, **{**settings, "decode": settings["decode"] or "line"})
        fitted = fit_profile(
            read_points_file(points),
            policy,
            model=model_name or points.stem,
            provenance={"points_file": str(points)},
        )
        return Refit(fitted, stored=True)
    store = Path(DEFAULT_STORE) if store is None else store
    require_store(store)
    with Store(store) as db:
        run_id = run if run is not None else db.latest_run_id()
        record = db.get_run(run_id)
        if record.kind.startswith("load"):  # its batch sizes are queries in flight
            flag = "" if store == Path(DEFAULT_STORE) else f" --store {store}"
            raise UserError(
                f"run {run_id} is a {record.kind} run (queries in flight on an API), not a "
                f"profile: fit a profile run (`infermeter runs{flag}` lists them); "
                f"`infermeter show {run_id}{flag}` prints this run's summary"
            )
        policy = FitPolicy(api=record.backend == "openai", **settings)
        fitted = fit_run(db, run_id, policy)
        sustained, note = sustained_or_note(db, run_id, policy)
        keep = policy.is_default if save is None else save
        if keep:
            for model in fitted:
                db.record_fit(run_id, model)
    return Refit(fitted, stored=keep, sustained=sustained, sustained_note=note)


NO_SUSTAINED_TIMES = (
    "no runtime model back to back (sustained): not every point of the run carries its time "
    "back to back (a metered profile stores them, from c8a495e on)"
)


def sustained_or_note(
    db: Store, run_id: int, policy: FitPolicy | None = None
) -> tuple[list[CostModel], str | None]:
    """The run's sustained runtime model(s) (fitted.fit_sustained; `policy` None: the run's
    default), or none and why (its fit
    is poor: the default one must not fail because its back-to-back twin does; or the run
    has no times back to back)."""
    try:
        models = fit_sustained(db, run_id, policy)
    except UserError as error:
        return [], f"no runtime model back to back (sustained): {error}"
    return models, None if models else NO_SUSTAINED_TIMES


def fit_request(r: FitRequest) -> Refit:
    """`infermeter fit`: its output file checked first, then its settings, then the fit made
    (refit)."""
    from infermeter.store.outputs import check_output

    if r.output:
        check_output(r.output, "model file")
    settings = fit_settings(r.denoise, r.overhead, r.decode, r.slopes, r.folds, r.accept_poor_fit)
    return refit(settings, r.points, r.model_name, r.store, r.run, r.save)


def points_summary(points: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """A run's ok points grouped by (p, o, batch) — trials, min and mean runtime (s), min
    TTFT (s) — and its points not used in fits."""
    summary = (
        points[points.status == "ok"]
        .groupby(["prompt_tokens", "output_tokens", "batch_size"])
        .agg(
            trials=("trial", "count"),
            min_s=("runtime_s", "min"),
            mean_s=("runtime_s", "mean"),
            ttft_s=("ttft_s", "min"),
        )
        .reset_index()
    )
    bad = points[points.status != "ok"]
    return summary, bad[["prompt_tokens", "output_tokens", "trial", "status", "detail"]]


def noise_line(stats: dict[str, Any]) -> str:
    """One line of model.variance.noise_summary: CVs (over the points measured more than once;
    none: the line says so and how to measure it), worst max/min and the shares (%) of
    requests whose raw runtime is above the denoised (and the idealized above it)."""
    repeated, points = stats.get("repeated"), stats.get("points")
    if repeated == 0 and stats.get("most_trials", 1) > 1:
        spread = (
            "no spread across trials: no point has two usable measurements (the others failed "
            "or were flagged)"
        )
    elif repeated == 0:
        spread = (
            "no spread across trials: each point was measured once (profile with --trials 2 "
            "or more to see it)"
        )
    else:
        spread = (
            f"mean CV {stats['mean_cv']:.3f}, max CV {stats['max_cv']:.3f}, worst max/min "
            f"{stats['max_over_min']:.2f}"
        )
        if repeated is not None and points is not None and repeated < points:
            spread += f" (over the {repeated} of {points} points measured more than once)"
    line = (
        f"{spread}; raw >= denoised for "
        f"{to_pct(stats.get('share_raw_above_denoised', float('nan'))):.1f}% of "
        f"{plural(stats['requests'], 'request')}"
    )
    if "share_idealized_above_denoised" in stats:
        line += f"; idealized > denoised for {to_pct(stats['share_idealized_above_denoised']):.1f}%"
    return line


@dataclass
class RunView:
    """What `show` prints of a stored run: its record, points and fits (fitted now, with the
    default settings and not stored, when it had none), or why it cannot be fitted yet."""

    record: Any
    points: pd.DataFrame
    fits: list[CostModel]
    fitted_now: bool = False
    not_fitted: str | None = None
    sustained: list[CostModel] = field(default_factory=list)  # fitted now, never stored
    sustained_note: str | None = None  # why none, where the run has times back to back

    def sustained_lines(self) -> list[str]:
        """What `show` says of the run's sustained price (sustained_lines): nothing for a run
        without times back to back."""
        note = None if self.sustained_note == NO_SUSTAINED_TIMES else self.sustained_note
        return sustained_lines(self.sustained, note)

    def header(self) -> str:
        """One line: run id, model, backend, device, status, creation time and commit."""
        r = self.record
        return (
            f"run {r.id}: {r.model} on {r.backend} / {r.device}, {r.status}, created "
            f"{r.created_at}, commit {r.commit_sha or '-'}"
        )


def run_view(db: Store, run: int | None = None) -> RunView:
    """Run `run` of `db` (default: the latest) as `show` prints it, a profile's fits made now
    when none is stored (a load or energy run is not fitted) and its sustained model, made
    now (it is never stored). UserError if unknown."""
    run_id = run if run is not None else db.latest_run_id()
    view = RunView(db.get_run(run_id), db.points(run_id), db.latest_fits(run_id))
    if not view.fits and not view.points.empty and view.record.kind == "profile":
        try:
            view.fits, view.fitted_now = fit_run(db, run_id), True
        except UserError as error:
            view.not_fitted = f"cannot fit it yet: {error}"
    if view.record.kind == "profile" and not view.points.empty:
        view.sustained, view.sustained_note = sustained_or_note(db, run_id)
    return view


def export_run(
    store: Path,
    run: int | None,
    output: Path | None,
    helm: Path | None,
    on_points: Callable[[str], None],
    on_fit: Callable[[str], None],
) -> None:
    """`infermeter export`: run `run`'s points (None: the latest run's) written to `output`
    (an energy run's configurations, which hold its results) and its runtime fit (the stored
    one, else one made now) to `helm` as HELM efficiency_data, each told to its callback in a
    line once written. A run with nothing to write is refused (UserError), no file made."""
    from infermeter.model.estimate import write_table
    from infermeter.model.helm import save_helm_efficiency
    from infermeter.store.outputs import check_outputs

    if output is None and helm is None:
        raise UserError("give --output FILE for points or --helm FILE for the fit")
    check_outputs(output, (helm, "HELM file"))
    with Store(store, read_only=True) as db:
        run_id = run if run is not None else db.latest_run_id()
        record = db.get_run(run_id)
        if record.kind == "energy" and helm is not None:
            raise UserError(
                f"run {run_id} is an energy run: it has no runtime fit for --helm (profile the "
                "model with `infermeter profile` for one); its configurations export with "
                "--output FILE"
            )
        if output is not None and record.kind == "energy":
            on_points(_export_energy_run(db, run_id, output))
        elif output is not None:
            points = db.points(run_id)
            if points.empty:
                raise UserError(
                    f"run {run_id} has no measurements stored yet; rerun the command that "
                    "made it to measure them, then export"
                )
            write_table(points, output)
            on_points(f"run {run_id}: {plural(len(points), 'measurement')} written to {output}")
        if helm is not None:
            model = db.latest_fit(run_id) or fit_run(db, run_id)[0]
            save_helm_efficiency({record.model: model}, helm)
            on_fit(f"run {run_id} fit written to {helm} (HELM efficiency_data; fitted with "
                   f"{model.describe_fit()}, of which the format holds PE per prompt size and "
                   "one per-token time, so the file prices decoding along one line); measured "
                   f"on {record.device}, which HELM's format cannot hold: `estimate` prices the "
                   "file as the paper's A100 unless given --accelerator")  # fmt: skip


def _export_energy_run(db: Store, run_id: int, output: Path) -> str:
    """`export --output` of energy run `run_id`: its configurations (which hold its results)
    written to `output`, and the line that says so. UserError when it stored none yet."""
    from infermeter.model.estimate import write_table
    from infermeter.store.energy import energy_configs

    configs = energy_configs(db, run_id)
    if configs.empty:
        raise UserError(
            f"run {run_id} is an energy run with no configurations stored yet; rerun its "
            "`infermeter energy` command to resume it, then export"
        )
    write_table(configs, output)
    return (
        f"run {run_id} is an energy run: its {plural(len(configs), 'configuration')} (its "
        f"results; batches in `infermeter show {run_id}`) written to {output}"
    )
