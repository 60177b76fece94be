"""Stored runs as fitted models: what the trade-offs, the stack comparison and the report read.

A run is a *reference* run when a local stack ran it (engine, hf: its fit is an idealized
runtime when that stack is the reference) and an *API* run when its backend is `openai` (a
black box, §3.5). For an API run two models are fitted:

    raw        mean over trials, with the constant overhead: the runtime a user should expect
    denoised   minimum over trials, with the constant overhead (§4.1)

Fits are made in memory and never written back: reading a store for a report must not change
it. Several stores can be read at once; `StoredRun.label` says which file a run came from.
`fit_run` is what every verb that fits a stored run calls: the fit policy of infermeter.model.fit,
one model per quantity and batch size, each with its validation error attached.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd

from infermeter.errors import UserError
from infermeter.model.cost_model import CostModel
from infermeter.model.estimate import SUSTAINED_STATE, Pricing, pricing_for
from infermeter.model.fit import ROUGH_R2, FitPolicy, fit_profile, validation_errors
from infermeter.spec.hardware import detect_accelerator
from infermeter.spec.model import ModelSpec
from infermeter.store.db import RunRecord, Store
from infermeter.store.extra import SUSTAINED_KEY, measured, named_field

API_BACKENDS = frozenset({"openai"})


def run_provenance(run: RunRecord, store: Path | str | None = None) -> dict[str, Any]:
    """Where a fit's points came from, for its `provenance`."""
    out: dict[str, Any] = {
        "run_id": run.id,
        "device": run.device,
        "profiled_at": run.created_at,
        "commit": run.commit_sha,
        "backend": run.backend_info,
    }
    if store is not None:
        out["store"] = str(store)
    context = run.spec.get("max_context")
    if run.spec.get("family") != "black-box" and isinstance(context, int):
        out["max_context"] = context  # the model's own limit (an API's is unknown)
    return out


def attach_validation(models: list[CostModel], validation: pd.DataFrame) -> None:
    """Put each model's error on the validation queries into its fit record (in place)."""
    if validation.empty:
        return
    for model in models:
        errors = validation_errors(model, validation)
        if errors.get("n"):
            model.fit["validation"] = errors


def reader_policy(backend: str, denoise: str | None = None) -> FitPolicy:
    """How the verbs that read a store fit a run of `backend`: a reader shows every run it
    can price, a poor fit with its note instead of vanishing from the figures (saving one is
    what --accept-poor-fit guards). `denoise`: the runtime's, None for the default (min)."""
    return FitPolicy(
        api=backend in API_BACKENDS,
        denoise=denoise,  # type: ignore[arg-type]
        accept_poor_fit=True,
    )


def fit_run(store: Store, run_id: int, policy: FitPolicy | None = None) -> list[CostModel]:
    """The models of a stored run (runtime first, then energy; one per batch size), each
    with its validation error; nothing is written to the store."""
    run = store.get_run(run_id)
    policy = policy or FitPolicy(api=run.backend in API_BACKENDS)
    models = fit_profile(
        store.points(run_id),
        policy,
        model=run.model,
        stack=run.stack,
        provenance=run_provenance(run, store.path),
    )
    attach_validation(models, store.validation(run_id))
    return models


def sustained_points(points: pd.DataFrame) -> pd.DataFrame | None:
    """`points` (a store's points or validation rows) with runtime_s replaced by each trial's
    time back to back (SUSTAINED_KEY of its extra) and no energy; None when a measured row
    lacks that time (a run before c8a495e, unmetered, or an API run)."""
    ok = measured(points)
    times = named_field(points, SUSTAINED_KEY)
    if ok.empty or times.loc[ok.index].isna().any():
        return None
    return points.assign(runtime_s=pd.to_numeric(times, errors="coerce"), energy_j=float("nan"))


def fit_sustained(store: Store, run_id: int, policy: FitPolicy | None = None) -> list[CostModel]:
    """The runtime model(s) of a stored run at the time its queries take back to back, a
    second into a stream of each (the sustained price; fit["state"] = "sustained"), with their
    validation error against the validation queries' own time back to back; [] when the run
    has no such times. The default runtime model (fit_run) prices a query sent alone after a
    pause where the profile timed it so (experiments.profile.measure_point). Raises UserError
    as fit_profile does."""
    frame = sustained_points(store.points(run_id))
    if frame is None:
        return []
    run = store.get_run(run_id)
    policy = policy or FitPolicy(api=run.backend in API_BACKENDS)
    models = fit_profile(
        frame,
        policy,
        model=run.model,
        stack=run.stack,
        provenance=run_provenance(run, store.path),
        quantities=("runtime_s",),
    )
    for model in models:
        model.fit["state"] = SUSTAINED_STATE
    validation = sustained_points(store.validation(run_id))
    if validation is not None:
        attach_validation(models, validation)
    return models


@dataclass
class StoredRun:
    """One run with its points, read from one store."""

    store: Path
    record: RunRecord
    points: pd.DataFrame
    samples: pd.DataFrame = field(default_factory=pd.DataFrame)
    validation: pd.DataFrame = field(default_factory=pd.DataFrame)
    _fits: dict[tuple[str, str], CostModel | None] = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        """'STORE#ID': the store's file name and the run id."""
        return f"{self.store.name}#{self.record.id}"

    @property
    def model(self) -> str:
        """The model name the run recorded."""
        return self.record.model

    @property
    def is_api(self) -> bool:
        """True for a run of an API backend (openai): its runtime is the raw, noisy kind."""
        return self.record.backend in API_BACKENDS

    @property
    def ok_points(self) -> pd.DataFrame:
        """The run's measurements of runtime (store.extra.measured: ok, timed, not a timed
        load's warm-up)."""
        return measured(self.points)

    @property
    def fit_quality(self) -> str:
        """'poor' where the run's runtime fit is one only --accept-poor-fit keeps (a slope
        below zero beyond its noise, or R² below zero: fit.fit_cost_model's `poor_fit`),
        'rough' where its R² is below fit.ROUGH_R2 (kept with a note), else 'sound'."""
        model = self.fit()
        fit = (model.fit or {}) if model is not None else {}
        if fit.get("poor_fit"):
            return "poor"
        r2 = fit.get("r2_overall")
        return "rough" if r2 is not None and r2 < ROUGH_R2 else "sound"

    @property
    def poor_fit(self) -> bool:
        """True where the run's fit is poor or rough (fit_quality): another run stands first."""
        return self.fit_quality != "sound"

    @property
    def fit_quality_words(self) -> str:
        """fit_quality said with its reason: 'poor (kept only as --accept-poor-fit keeps
        one)', 'rough (R² = 0.28, below 0.9)', 'sound'."""
        quality = self.fit_quality
        if quality == "poor":
            return "poor (kept only as --accept-poor-fit keeps one)"
        if quality == "rough":
            r2 = (self.fit().fit or {}).get("r2_overall")  # type: ignore[union-attr]
            return f"rough (R² = {r2:.2f}, below {ROUGH_R2:g})"
        return quality

    @property
    def standing(self) -> tuple[int, str, int]:
        """How readers rank runs of one model that could stand for it, the higher first: a
        sound fit over a rough one over a poor one (fit_quality), then the newer (creation
        time, then id)."""
        rank = {"poor": 0, "rough": 1, "sound": 2}[self.fit_quality]
        return (rank, self.record.created_at, self.record.id)

    @property
    def date(self) -> str:
        """The run's creation date, YYYY-MM-DD (UTC)."""
        return self.record.created_at[:10]

    @property
    def spec(self) -> ModelSpec | None:
        """The ModelSpec the run recorded; None where it is missing or no longer valid."""
        try:
            return ModelSpec.from_dict(self.record.spec)
        except (TypeError, ValueError):
            return None

    @property
    def device(self) -> str:
        """Where the run was measured: as recorded, else as its backend described it."""
        info = self.record.backend_info or {}
        return self.record.device or str(info.get("device") or "") or "unknown device"

    @property
    def stands_for(self) -> str:
        """The model this run measures for capability tables: a stand-in names its original."""
        extra = self.record.spec.get("extra") or {}
        return str(extra.get("stands_for") or self.record.model)

    @cached_property  # a catalog scan, asked for by pricing, labels and identity alike
    def stack(self) -> dict[str, Any]:
        """The stored stack; where it names no accelerator (a record written without one), the
        catalog entry of the GPU the run recorded as its device, so it is priced as run."""
        stack = dict(self.record.stack)
        if stack.get("accelerator") is None:
            detected = detect_accelerator(self.device)
            if detected is not None:
                stack["accelerator"] = detected.to_dict()
        if stack.get("dtype") is None and self.record.backend_info.get("dtype"):
            stack["dtype"] = self.record.backend_info["dtype"]  # the dtype the backend ran
        return stack

    @property
    def stack_identity(self) -> tuple[Any, ...]:
        """What makes two runs the same stack: backend, hardware, parallelism, dtype, and the
        machine itself where the catalog entry is generic (any CPU) or missing."""
        stack = self.stack
        acc = stack.get("accelerator")
        name = acc.get("name") if isinstance(acc, dict) else acc
        return (
            self.record.backend,
            name,
            stack.get("num_accelerators", 1),
            stack.get("tensor_parallel", 1),
            stack.get("dtype"),
            self.device if name in (None, "cpu") else None,
        )

    @property
    def stack_label(self) -> str:
        """'BACKEND on COUNT × ACCELERATOR' (or on the device where no accelerator was priced)."""
        acc = self.stack.get("accelerator")
        name = acc.get("name") if isinstance(acc, dict) else acc
        count = self.stack.get("num_accelerators", 1)
        where = f"{count} × {name}" if name else self.device
        return f"{self.record.backend} on {where}"

    def fit(self, quantity: str = "runtime_s", denoise: str = "min") -> CostModel | None:
        """The model of `quantity` fitted with `denoise`; None when the points cannot fit it."""
        key = (quantity, denoise)
        if key not in self._fits:
            self._fits[key] = self._fit(quantity, denoise)
        return self._fits[key]

    def _fit(self, quantity: str, denoise: str) -> CostModel | None:
        """The smallest batch size's model (the paper's batch of one where profiled)."""
        points = self.points
        if quantity not in points or points[quantity].notna().sum() == 0:
            return None
        policy = reader_policy(self.record.backend, denoise if quantity == "runtime_s" else None)
        try:
            models = fit_profile(
                points,
                policy,
                model=self.record.model,
                stack=self.stack,
                provenance=run_provenance(self.record, self.store),
                quantities=(quantity,),  # type: ignore[arg-type]
            )
        except UserError:
            return None
        attach_validation(models, self.validation)
        return models[0]

    def pricing(self) -> tuple[Pricing, str | None]:
        """What a second of this run's stack costs (an A100 with a note if none is recorded)."""
        return pricing_for(CostModel([1], [0.0], 0.0, stack=self.stack))


def load_runs(stores: list[Path], with_samples: bool = True) -> list[StoredRun]:
    """Every run of every store that has at least one usable point."""
    runs: list[StoredRun] = []
    for path in stores:
        if not Path(path).exists():
            raise UserError(
                f"store {path} does not exist; profile into it with `infermeter profile`"
            )
        with Store(path, read_only=True) as db:
            for run_id in db.runs()["id"].tolist():
                points = db.points(int(run_id))
                if points.empty:
                    continue
                samples = db.samples(int(run_id)) if with_samples else pd.DataFrame()
                validation = db.validation(int(run_id))
                record = db.get_run(int(run_id))
                runs.append(StoredRun(Path(path), record, points, samples, validation))
    return runs


def reference_runs(runs: list[StoredRun]) -> list[StoredRun]:
    """The runs of reference (non-API) backends with at least one good point."""
    return [r for r in runs if not r.is_api and not r.ok_points.empty]


def api_runs(runs: list[StoredRun]) -> list[StoredRun]:
    """The runs of API backends with at least one good point."""
    return [r for r in runs if r.is_api and not r.ok_points.empty]


_BACKEND_PREFERENCE = {"engine": 0, "hf": 1}


def reference_for(model: str, runs: list[StoredRun]) -> StoredRun | None:
    """The run that gives `model`'s idealized runtime: a sound fit over a rough or poor one,
    then the reference engine first, the newest (reference_candidates).

    The paper's idealized runtime is the model on one uniform, good stack; infermeter's
    engine is that stack, so it wins over hf when both profiled the model.
    """
    candidates = reference_candidates(model, runs)
    return candidates[0] if candidates else None


def reference_candidates(model: str, runs: list[StoredRun]) -> list[StoredRun]:
    """Every fitted reference run of `model` (by its name or the one it stands for), in the
    order reference_for prefers them: a sound fit before a rough one before a poor one
    (StoredRun.fit_quality), then engine before hf, then the newest first."""
    mine = [r for r in reference_runs(runs) if _same(r.stands_for, model) or _same(r.model, model)]
    mine = [r for r in mine if r.fit() is not None]
    newest_first = sorted(mine, key=lambda r: (r.record.created_at, r.record.id), reverse=True)
    by_backend = sorted(newest_first, key=lambda r: _BACKEND_PREFERENCE.get(r.record.backend, 9))
    return sorted(by_backend, key=lambda r: -r.standing[0])  # stable: sound, rough, poor


def _same(a: str, b: str) -> bool:
    return model_key(a) == model_key(b)


def model_key(name: str) -> str:
    """A spelling-proof key: the catalog's canonical name when it knows the model."""
    from infermeter.spec.catalog import get_spec

    try:
        return get_spec(name).name
    except UserError:
        return " ".join(name.strip().lower().replace("_", "-").split()).replace(" ", "-")


def run_summary(run: StoredRun) -> dict[str, Any]:
    """One line of provenance for the report's table, with the run's validation error: how
    its estimates fared on queries it never profiled (percent; none where not validated)."""
    row: dict[str, Any] = {
        "run": run.label,
        "model": run.model,
        "backend": run.record.backend,
        "stack": run.stack_label,
        "device": run.device,
        "date": run.date,
        "commit": (run.record.commit_sha or "-")[:10],
        "points": len(run.ok_points),
    }
    for quantity, label in (("runtime_s", "runtime"), ("energy_j", "energy")):
        model = run.fit(quantity) if not run.validation.empty else None
        check = (model.fit.get("validation") or {}) if model is not None else {}
        if check.get("n"):
            row[f"{label}_validated_on"] = check["n"]
            row[f"{label}_mape_pct"] = round(check["mape_pct"], 2)
            row[f"{label}_max_error_pct"] = round(check["max_error_pct"], 2)
            row[f"{label}_bias_pct"] = round(check["bias_pct"], 2)
    return row


def describe_runs(runs: list[StoredRun]) -> str:
    """'on DEVICE(S), DATE(S)': the short provenance phrase a caption ends with."""
    devices = sorted({r.device for r in runs})
    dates = sorted({r.date for r in runs})
    when = dates[0] if len(dates) == 1 else f"{dates[0]} to {dates[-1]}"
    where = devices[0] if len(devices) == 1 else f"{len(devices)} devices ({'; '.join(devices)})"
    return f"on {where}, {when}"
