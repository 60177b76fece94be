"""Where fitted models come from for comparisons: stores (the default one when none is named),
fitted-model or HELM files, and the runs of one model on several stacks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from infermeter.errors import UserError

DEFAULT_STORE = os.environ.get("INFERMETER_STORE", "infermeter.sqlite")


def stores_or_default(stores: list[Path] | None, required: bool = True) -> list[Path]:
    """The stores named (each must exist), else the default store ($INFERMETER_STORE or
    infermeter.sqlite) when it exists, else [] or, when `required`, a UserError."""
    if stores:
        for path in stores:
            if not path.exists():
                raise UserError(f"store {path} does not exist; check --store")
        return list(stores)
    default = Path(DEFAULT_STORE)
    if default.exists():
        return [default]
    if required:
        raise UserError(
            f"no store given and {default} does not exist; pass --store PATH "
            "(profile into one with `infermeter profile MODEL --store PATH`)"
        )
    return []


def profiles_from_files(files: list[Path]) -> list[Any]:
    """ModelProfiles (model.tradeoffs) from fitted-model JSON files or HELM efficiency_data
    files, each priced on its own stack. Raises UserError for an unreadable file."""
    from infermeter.model.cost_model import models_from_dict
    from infermeter.model.estimate import pricing_for
    from infermeter.model.helm import is_helm_efficiency, load_helm_efficiency
    from infermeter.model.tradeoffs import ModelProfile
    from infermeter.spec.catalog import resolve_spec
    from infermeter.workloads.queries import read_json

    profiles = []
    for path in files:
        data = read_json(path, "profile")
        if is_helm_efficiency(data):
            models = load_helm_efficiency(path)
        else:
            model = models_from_dict(data, str(path))[0]
            models = {model.model or path.stem: model}
        for name, model in models.items():
            try:
                spec = resolve_spec(name)
            except UserError:
                spec = None
            pricing, _ = pricing_for(model)
            profiles.append(ModelProfile(name, model, pricing, spec, source=f"{path.name}:{name}"))
    return profiles


def stacks_for(
    runs: list[int] | None,
    model: str | None,
    profile: list[Path] | None,
    store: list[Path] | None,
) -> list[Any]:
    """StackProfiles (model.compare) to compare: from fitted-model files, or the stored runs
    `runs`, or every stack that profiled `model` (or the one model profiled on two stacks).
    Raises UserError when the choice is missing or ambiguous."""
    from infermeter.model.compare import StackProfile
    from infermeter.model.estimate import pricing_for
    from infermeter.model.fitted import load_runs, model_key
    from infermeter.model.helm import load_profile
    from infermeter.report.build import stack_profiles

    if profile:
        stacks = []
        for path in profile:
            fitted = load_profile(path)
            stacks.append(StackProfile(f"{path.stem}", fitted, pricing_for(fitted)[0]))
        return stacks
    paths = stores_or_default(store)
    stored = [r for r in load_runs(paths, with_samples=False) if not r.is_api]
    if runs:
        chosen = [r for r in stored if r.record.id in set(runs)]
        absent = sorted(set(runs) - {r.record.id for r in chosen})
        if absent:
            raise UserError(f"run(s) {absent} not found (or without points); see `infermeter runs`")
        stored = chosen
    elif model:
        stored = [r for r in stored if model_key(r.model) == model_key(model)]
    groups = (
        stack_profiles(stored)
        if not runs
        else {
            "": [
                StackProfile(
                    f"{r.stack_label} ({r.label})",
                    r.fit(),
                    r.pricing()[0],
                    r.fit("energy_j", "median"),
                    r.device,
                    r.date,
                )
                for r in stored
                if r.fit() is not None
            ]
        }
    )
    groups = {k: v for k, v in groups.items() if len(v) >= 2}
    if not groups:
        raise UserError(
            "no model with runs on two stacks; profile one model with two "
            "backends or on two machines (see `infermeter runs`), or pass RUN ids"
        )
    if len(groups) > 1:
        raise UserError(
            f"several models have runs on two stacks ({', '.join(groups)}); pick one with --model"
        )
    return next(iter(groups.values()))


def baseline_index(stacks: list[Any], baseline: str | None) -> int:
    """The index of the stack `baseline` names (its label or run id; None: the first).
    Raises UserError when it names none of them."""
    if baseline is None:
        return 0
    for i, stack in enumerate(stacks):
        if stack.label == baseline or stack.label.endswith(f"#{baseline})"):
            return i
    raise UserError(
        f"--baseline {baseline!r} matches none of: " + "; ".join(s.label for s in stacks)
    )
