"""Where fitted models come from for comparisons and trade-offs: stores (the default one when
none is named), fitted-model or HELM files, the runs of one model on several stacks (paper 1
Fig. 8) and the idealized, raw and denoised models of each model (Figs. 9-10); and the
`compare` and `tradeoffs` requests answered from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from infermeter.errors import UserError
from infermeter.model.compare import (
    StackComparison,
    StackProfile,
    compare_stacks,
    default_queries,
)
from infermeter.model.cost_model import CostModel, models_from_dict
from infermeter.model.estimate import is_api_model, pricing_for, read_queries
from infermeter.model.fitted import (
    StoredRun,
    api_runs,
    load_runs,
    model_key,
    reference_candidates,
    reference_for,
    reference_runs,
)
from infermeter.model.helm import is_helm_efficiency, load_helm_efficiency, load_profile
from infermeter.model.tradeoffs import (
    DEFAULT_OBJECTIVES,
    ModelProfile,
    Tradeoffs,
    parse_objectives,
    rank_models,
    read_capabilities,
    read_scenario_queries,
    tradeoff_table,
)
from infermeter.requests import CompareRequest, TradeoffsRequest
from infermeter.spec.catalog import resolve_spec
from infermeter.store.db import DEFAULT_STORE
from infermeter.store.outputs import check_output_folder, check_outputs, image_format
from infermeter.units import one_of
from infermeter.workloads.queries import read_json


def stores_or_default(stores: list[Path] | None, required: bool = True) -> list[Path]:
    """The stores named (each must exist; one named twice is read once), else the default
    store ($INFERMETER_STORE or infermeter.sqlite) when it exists, else [] or, when
    `required`, a UserError."""
    if stores:
        for path in stores:
            if not path.exists():
                raise UserError(f"store {path} does not exist; check --store")
        unique: dict[Path, Path] = {}  # each store read once, however it is spelled
        for path in stores:
            unique.setdefault(path.resolve(), path)
        return list(unique.values())
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


def pricing_notes(priced: list[tuple[str, CostModel]]) -> list[str]:
    """What pricing each (label, model) as its stack (estimate.pricing_for) assumed: the
    paper's reference A100 for a profile that names no accelerator, a nominal part's $/h or
    rated W (the generic CPU socket's); one note per assumption, led by the labels it holds
    for. compare and tradeoffs take no pricing flags, so the note points to estimate's. An
    API's run is not priced: no note."""
    labels: dict[str, list[str]] = {}
    for label, model in priced:
        if is_api_model(model):
            continue
        pricing, assumed = pricing_for(model)
        why = []
        if assumed:
            why.append("the profile names no accelerator, so the paper's reference is priced, "
                       "not the hardware that ran it")  # fmt: skip
        figures = pricing.nominal_figures()
        if figures:
            why.append(
                f"{' and '.join(figures)} are a nominal part's, not the machine's that ran it"
            )
        if why:
            labels.setdefault(f"priced as {pricing.describe()}: {'; '.join(why)}", []).append(label)
    return [
        f"{', '.join(held)}: {assumption}; `infermeter estimate` prices "
        f"{'it' if len(held) == 1 else 'each'} with your own figures (--accelerator, "
        "--price-per-hour, --power-watts)"
        for assumption, held in labels.items()
    ]


def stacks_for(
    runs: list[int] | None,
    model: str | None,
    profile: list[Path] | None,
    store: list[Path] | None,
) -> tuple[list[StackProfile], list[str]]:
    """StackProfiles (model.compare) to compare, and notes on the runs left out: from
    fitted-model files, or the stored runs `runs`, or every stack that profiled `model` (or
    the one model profiled on two stacks; newer_runs_stand says which runs stand). Raises
    UserError when the choice is missing or ambiguous."""
    if profile:
        stacks = []
        for path in profile:
            fitted = load_profile(path)
            stacks.append(StackProfile(f"{path.stem}", fitted, pricing_for(fitted)[0]))
        return stacks, []
    paths = stores_or_default(store)
    stored = [r for r in load_runs(paths, with_samples=False) if not r.is_api]
    if runs:
        chosen = [r for r in stored if r.record.id in set(runs)]
        absent = sorted(set(runs) - {r.record.id for r in chosen})
        if absent:
            raise UserError(
                f"run(s) {one_of(absent, 'and')} not found (or without points); see "
                "`infermeter runs`"
            )
        fitted = [r for r in chosen if r.fit() is not None]
        if len(fitted) < 2:
            given = ", ".join(f"{r.label} ({r.model}, {r.stack_label})" for r in fitted)
            raise UserError(
                f"compare needs two or more runs to set side by side; got "
                f"{given or 'none that can be fitted'}: pass another RUN id of "
                f"{fitted[0].model if fitted else 'the model'} (see `infermeter runs`)"
            )
        groups = {"": [_stack_profile(r, f"{r.stack_label} ({r.label})") for r in fitted]}
        notes: dict[str, list[str]] = {}
    else:
        if model:
            stored = [r for r in stored if model_key(r.model) == model_key(model)]
        kept, notes = newer_runs_stand(stored)
        groups = {name: _profiles_of(of_model) for name, of_model in kept.items()}
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
    name, stacks = next(iter(groups.items()))
    return stacks, notes.get(model_key(name), []) if name else []


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


def stack_runs(runs: list[StoredRun]) -> dict[str, list[StoredRun]]:
    """Per model profiled on two stacks or more: one fitted reference run per stack and store
    (newer_runs_stand says which run stands where one store profiled a stack twice)."""
    return newer_runs_stand(runs)[0]


def newer_runs_stand(
    runs: list[StoredRun],
) -> tuple[dict[str, list[StoredRun]], dict[str, list[str]]]:
    """stack_runs, and per model (model_key) a note for each run it leaves out.

    Runs of one stack (same model, backend, hardware and dtype: StoredRun.stack_identity)
    from different stores are all kept, each labelled by its store and id: a user who names
    two stores compares them. Within one store one run stands (a stack profiled again is one
    stack, not a comparison of a stack with itself): a sound fit over a rough one over a poor
    one, then the newer (StoredRun.standing); the note names the run left out, the one used
    instead and why.
    """
    by_model: dict[str, dict[tuple[Any, ...], StoredRun]] = {}
    notes: dict[str, list[str]] = {}
    for run in sorted(
        (r for r in reference_runs(runs) if r.fit() is not None), key=lambda r: r.standing
    ):
        key = model_key(run.model)
        stacks = by_model.setdefault(key, {})
        stack = (*run.stack_identity, run.store.resolve())
        older = stacks.get(stack)
        if older is not None:
            why = (
                f"{run.label} is a newer run of {run.model} on the same stack "
                f"({run.stack_label}) in the same store, and the newer run stands"
                if older.fit_quality == run.fit_quality
                else f"its fit is {older.fit_quality_words} and {run.label}, a run of "
                f"{run.model} whose fit is {run.fit_quality}, on the same stack "
                f"({run.stack_label}) in the same store, stands"
            )
            notes.setdefault(key, []).append(
                f"{older.label} left out: {why}; pass both RUN ids to compare them"
            )
        stacks[stack] = run
    kept = {
        next(iter(by_stack.values())).model: list(by_stack.values())
        for by_stack in by_model.values()
        if len(by_stack) >= 2
    }
    return kept, notes


def _stack_profile(run: StoredRun, label: str) -> StackProfile:
    """A fitted reference run as a StackProfile labelled `label`."""
    return StackProfile(
        label,
        run.fit(),  # type: ignore[arg-type]
        run.pricing()[0],
        run.fit("energy_j", "median"),
        run.device,
        run.date,
    )


def _profiles_of(runs: list[StoredRun]) -> list[StackProfile]:
    """One model's runs on different stacks as StackProfiles, each labelled by its stack (and
    dtype, where they differ in it), store and run id (the store's path where two stores of
    one file name would give two runs the same label)."""
    dtypes = {r.stack.get("dtype") for r in runs}

    def label(run: StoredRun, where: str) -> str:
        dtype = f" {run.stack.get('dtype')}" if len(dtypes) > 1 else ""
        return f"{run.stack_label}{dtype} ({where})"

    labels = [label(r, r.label) for r in runs]
    if len(set(labels)) < len(labels):
        labels = [label(r, f"{r.store}#{r.record.id}") for r in runs]
    return [_stack_profile(run, text) for run, text in zip(runs, labels, strict=True)]


def stack_profiles(runs: list[StoredRun]) -> dict[str, list[StackProfile]]:
    """Per model: its reference runs on different stacks, each as a StackProfile."""
    return {model: _profiles_of(of_model) for model, of_model in stack_runs(runs).items()}


def model_profiles(runs: list[StoredRun]) -> list[ModelProfile]:
    """Per model named by the runs: idealized (reference), raw and denoised (API) models."""
    names = list(dict.fromkeys(r.stands_for for r in runs))
    profiles = []
    for name in names:
        ref = reference_for(name, runs)
        api = next((r for r in api_runs(runs) if model_key(r.stands_for) == model_key(name)), None)
        if ref is None and api is None:
            continue
        pricing = ref.pricing()[0] if ref else None
        # An API run's spec is a placeholder when the model is a black box.
        spec = ref.spec if ref else None
        if spec is None and api is not None and api.record.spec.get("family") != "black-box":
            spec = api.spec
        profiles.append(
            ModelProfile(
                name=name,
                idealized=ref.fit() if ref else None,
                pricing=pricing,
                spec=spec,
                energy=ref.fit("energy_j", "median") if ref else None,
                raw=api.fit(denoise="mean") if api else None,
                denoised=api.fit() if api else None,
                source=", ".join(r.label for r in (ref, api) if r is not None),
            )
        )
    return profiles


def left_out_runs(name: str, runs: list[StoredRun]) -> str | None:
    """Where model `name` has several fitted reference runs, of which model_profiles prices
    it with one (reference_for): a note naming the run used and those left out, and how to
    price with another (tradeoffs has no flag that picks a run); None where it has one."""
    used, *others = reference_candidates(name, runs) or [None]
    if used is None or not others:
        return None

    def described(run: StoredRun) -> str:
        quality = f", its fit {run.fit_quality_words}" if run.poor_fit else ""
        return f"{run.label} ({run.stack_label}, {run.date}{quality})"

    poor = (
        " (with --accept-poor-fit for a poor one)"
        if any(r.fit_quality == "poor" for r in others)
        else ""
    )
    return (
        f"{name}: priced with run {described(used)}, the one tradeoffs and report take (a "
        f"sound fit before a rough one before a poor one, then the newest engine run, else the "
        f"newest hf); left "
        f"out: {', '.join(described(r) for r in others)}; to price with another, write its fit "
        f"with `infermeter fit RUN --store STORE --output FILE.json`{poor} and pass --profile "
        "FILE.json, which stands over the store's runs"
    )


def compare_request(r: CompareRequest) -> tuple[StackComparison, int]:
    """`infermeter compare`: its outputs checked, the stacks of r.runs, r.model or r.profile
    compared on r.queries (default: a grid), with notes on the runs left out (stacks_for)
    and on what each stack's pricing assumed (pricing_notes), and how many queries that was."""

    check_outputs(r.output, (r.figure, "figure"))
    stacks, notes = stacks_for(r.runs, r.model, r.profile, r.store)
    if r.queries:
        frame = read_queries(r.queries, fix="check --queries")
    else:
        frame = default_queries([s.runtime for s in stacks])
    base = baseline_index(stacks, r.baseline)
    result = compare_stacks(stacks, frame, base, r.allow_different_models)
    result.notes = notes + pricing_notes([(s.label, s.runtime) for s in stacks])
    return result, len(frame)


def tradeoff_notes(
    files: list[ModelProfile], stored: list[ModelProfile], models: list[str], runs: list[StoredRun]
) -> list[str]:
    """How each of `models` (the capability table's) is priced by the profiles `files` then
    `stored` (model_profiles of `runs`), for the one that prices it (the first of its model,
    as tradeoff_table takes): a later file of the same model left out, the stored run used and
    those left out (left_out_runs), and what its pricing assumed (pricing_notes)."""
    wanted = {model_key(m) for m in models}
    used: dict[str, ModelProfile] = {}
    notes = []
    for profile in files + stored:
        key = model_key(profile.name)
        if key not in wanted:
            continue
        first = used.setdefault(key, profile)
        if first is not profile:
            notes.append(
                f"{profile.source or profile.name} left out: {first.source or first.name}, "
                f"given first, prices {profile.name}"
            )
    for profile in used.values():
        if any(profile is s for s in stored):  # priced from the store's runs
            note = left_out_runs(profile.name, runs)
            notes += [note] if note else []
    return notes + pricing_notes(
        [(p.source or p.name, p.idealized) for p in used.values()
         if p.pricing is not None and p.idealized is not None]
    )  # fmt: skip


def tradeoffs_for(r: TradeoffsRequest) -> tuple[Tradeoffs, pd.DataFrame]:
    """`infermeter tradeoffs`: its outputs checked, the capabilities, scenario queries and
    profiles (r.profile's files, then r.store's runs for the models no file gives) read, the
    table made and ranked by the default objectives and r.objective's (a bad objective fails
    before anything is shown), with tradeoff_notes on how each model was priced."""

    image_format(r.fmt)
    check_outputs(r.output, r.ranks_output)
    if r.figures:
        check_output_folder(r.figures, "--figures folder")
    caps = read_capabilities(r.capabilities, r.metric)
    scenario_queries = read_scenario_queries(r.queries)
    files = profiles_from_files(list(r.profile or []))
    paths = stores_or_default(r.store, required=not files)
    given = {model_key(p.name) for p in files}  # a --profile file stands over the store's runs
    runs = load_runs(paths, with_samples=False) if paths else []
    stored = [p for p in model_profiles(runs) if model_key(p.name) not in given]
    profiles = files + stored
    if not profiles:
        raise UserError("no profiles: profile models into --store, or pass --profile FILE")
    objectives = {**DEFAULT_OBJECTIVES, **parse_objectives(r.objective or [])}
    result = tradeoff_table(profiles, caps, scenario_queries)
    result.notes += tradeoff_notes(files, stored, list(caps["model"]), runs)
    return result, rank_models(result.table, objectives)
