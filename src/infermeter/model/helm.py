"""HELM's efficiency_data format, in and out.

    {"<model>": {"runtime_per_output_token": g,
                 "runtime_for_prompt_tokens": {"<p>": seconds, ...},
                 "overhead": seconds}}          # overhead optional

Our profiles feed HELM, and HELM's published numbers load as profiles; either way PE between
the listed prompt sizes is the paper's piecewise-linear interpolation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from infermeter.errors import UserError
from infermeter.model.cost_model import CostModel, ModelSet, models_from_dict
from infermeter.model.fitted import model_key
from infermeter.store.outputs import writing
from infermeter.workloads.queries import MAX_SECONDS, MAX_TOKENS, number, read_json


def is_helm_efficiency(data: Any) -> bool:
    """True when `data` looks like HELM efficiency_data (a dict of per-model entries)."""
    return (
        isinstance(data, dict)
        and "schema" not in data
        and bool(data)
        and all(isinstance(v, dict) and "runtime_per_output_token" in v for v in data.values())
    )


def cost_model_from_helm_entry(name: str, entry: Any, origin: str = "HELM file") -> CostModel:
    """One entry, every value checked: prompt sizes whole numbers, seconds finite and >= 0."""
    where = f"{origin}: {name!r}"
    shape = (
        'it needs runtime_per_output_token (seconds) and runtime_for_prompt_tokens {"<p>": seconds}'
    )
    if not isinstance(entry, dict):
        raise UserError(f"{where} is not an object; {shape}")
    per_prompt = entry.get("runtime_for_prompt_tokens")
    if "runtime_per_output_token" not in entry or not isinstance(per_prompt, dict):
        raise UserError(f"{where} is malformed; {shape}")
    if not per_prompt:
        raise UserError(f"{where} lists no prompt sizes; {shape}")
    sizes: list[int] = []
    values: list[float] = []
    for key, seconds in per_prompt.items():
        try:
            size = int(str(key).strip())
        except ValueError:
            size = -1
        if size < 0 or size > MAX_TOKENS:
            raise UserError(
                f"{where}: prompt size {key!r} is not a whole number of tokens from 0 to "
                f"{MAX_TOKENS:,}; key runtime_for_prompt_tokens by prompt size"
            )
        if size in sizes:
            raise UserError(f"{where}: prompt size {size} is listed twice; keep one")
        sizes.append(size)
        values.append(
            number(seconds, f"{where} runtime_for_prompt_tokens[{key!r}]", maximum=MAX_SECONDS)
        )
    g = number(
        entry["runtime_per_output_token"], f"{where} runtime_per_output_token", maximum=MAX_SECONDS
    )
    overhead = 0.0
    if entry.get("overhead") is not None:
        overhead = number(entry["overhead"], f"{where} overhead", maximum=MAX_SECONDS)
    return CostModel(
        prompt_sizes=sizes,
        prompt_encoding=values,
        per_output_token=g,
        overhead=overhead,
        model=name,
        provenance={"source": "helm efficiency_data", "helm_has_overhead": "overhead" in entry},
    )


def load_helm_efficiency(path: str | Path) -> dict[str, CostModel]:
    """Every model entry of a HELM efficiency_data JSON file."""
    data = read_json(path, "HELM efficiency file")
    if not is_helm_efficiency(data):
        raise UserError(
            f"{path} is not HELM efficiency_data: expected "
            '{"<model>": {"runtime_per_output_token": ..., "runtime_for_prompt_tokens": {...}}}'
        )
    return {
        name: cost_model_from_helm_entry(name, entry, str(path)) for name, entry in data.items()
    }


def helm_entry(model: CostModel) -> dict[str, Any]:
    """One model's entry of HELM's efficiency JSON: per-output-token runtime, prompt-encoding
    runtime per prompt size and, where fitted, the overhead (s). Raises UserError for an
    energy model."""
    if model.quantity != "runtime_s":
        raise UserError("HELM efficiency_data holds runtimes; export a runtime model, not energy")
    entry: dict[str, Any] = {
        "runtime_per_output_token": model.per_output_token,
        "runtime_for_prompt_tokens": {
            str(p): v for p, v in zip(model.prompt_sizes, model.prompt_encoding, strict=False)
        },
    }
    if model.overhead or model.provenance.get("helm_has_overhead"):
        entry["overhead"] = model.overhead
    return entry


def to_helm_efficiency(models: dict[str, CostModel]) -> dict[str, Any]:
    """HELM's efficiency JSON {model: entry} for runtime models (see helm_entry)."""
    return {name: helm_entry(model) for name, model in models.items()}


def save_helm_efficiency(models: dict[str, CostModel], path: str | Path) -> Path:
    """Write HELM's efficiency JSON for `models` to `path` and return it. Raises UserError for
    an energy model or a path that cannot be written."""
    body = json.dumps(to_helm_efficiency(models), indent=2) + "\n"
    with writing(path, "HELM file") as target:
        target.write_text(body)
    return target


def load_profile(path: str | Path, model: str | None = None, what: str = "profile") -> CostModel:
    """A cost model from our JSON file or from one entry of a HELM efficiency_data file (the
    smallest batch size's where the file holds several). `what` names the file in errors."""
    return load_model_set(path, model, what).first()


def load_model_set(path: str | Path, model: str | None = None, what: str = "profile") -> ModelSet:
    """The models of a file by batch size: ours (one or a set) or one HELM entry (batch 1).
    UserError (naming the file as `what`) for one that cannot be read, is neither, or is a fit
    of another model than `model`."""
    data = read_json(path, what)
    if isinstance(data, dict) and "schema" in data:
        models = ModelSet(models_from_dict(data, str(path)))
        fitted = models.first().model
        if model is not None and fitted and model_key(model) != model_key(fitted):
            raise UserError(
                f"--model {model}: {path} is a fit of {fitted}, not {model}; --model picks an "
                f"entry of a HELM efficiency_data file: pass a fit of {model} as --profile"
            )
        return models
    if not is_helm_efficiency(data):
        raise UserError(
            f"{what} {path} is neither an infermeter cost model nor HELM efficiency_data; "
            "make one with `infermeter fit --output FILE`"
        )
    if model is None:
        if len(data) == 1:
            model = next(iter(data))
        else:
            raise UserError(
                f"{path} holds {len(data)} models; pick one with --model (e.g. "
                f"{', '.join(list(data)[:3])})"
            )
    model = next((name for name in data if model_key(name) == model_key(model)), model)
    if model not in data:
        raise UserError(f"model {model!r} is not in {path}; it has: {', '.join(list(data)[:10])}")
    return ModelSet([cost_model_from_helm_entry(model, data[model], str(path))])
