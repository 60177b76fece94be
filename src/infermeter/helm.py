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

from infermeter.cost_model import CostModel, ModelSet, models_from_dict
from infermeter.errors import UserError


def is_helm_efficiency(data: Any) -> bool:
    """True when `data` looks like HELM efficiency_data (a dict of per-model entries)."""
    return (
        isinstance(data, dict)
        and "schema" not in data
        and bool(data)
        and all(isinstance(v, dict) and "runtime_per_output_token" in v for v in data.values())
    )


def cost_model_from_helm_entry(name: str, entry: dict[str, Any]) -> CostModel:
    try:
        per_prompt = entry["runtime_for_prompt_tokens"]
        sizes = [int(k) for k in per_prompt]
        values = [float(per_prompt[k]) for k in per_prompt]
        g = float(entry["runtime_per_output_token"])
    except (KeyError, TypeError, ValueError) as exc:
        raise UserError(
            f"HELM entry {name!r} is malformed ({exc}); it needs runtime_per_output_token and "
            'runtime_for_prompt_tokens {"<p>": seconds}'
        ) from exc
    if not sizes:
        raise UserError(f"HELM entry {name!r} lists no prompt sizes")
    return CostModel(
        prompt_sizes=sizes,
        prompt_encoding=values,
        per_output_token=g,
        overhead=float(entry.get("overhead", 0.0)),
        model=name,
        provenance={"source": "helm efficiency_data", "helm_has_overhead": "overhead" in entry},
    )


def load_helm_efficiency(path: str | Path) -> dict[str, CostModel]:
    """Every model entry of a HELM efficiency_data JSON file."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise UserError(f"cannot read HELM efficiency file {path}: {exc}") from exc
    if not is_helm_efficiency(data):
        raise UserError(
            f"{path} is not HELM efficiency_data: expected "
            '{"<model>": {"runtime_per_output_token": ..., "runtime_for_prompt_tokens": {...}}}'
        )
    return {name: cost_model_from_helm_entry(name, entry) for name, entry in data.items()}


def helm_entry(model: CostModel) -> dict[str, Any]:
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
    return {name: helm_entry(model) for name, model in models.items()}


def save_helm_efficiency(models: dict[str, CostModel], path: str | Path) -> Path:
    path = Path(path)
    path.write_text(json.dumps(to_helm_efficiency(models), indent=2) + "\n")
    return path


def load_profile(path: str | Path, model: str | None = None) -> CostModel:
    """A cost model from our JSON file or from one entry of a HELM efficiency_data file (the
    smallest batch size's where the file holds several)."""
    return load_model_set(path, model).first()


def load_model_set(path: str | Path, model: str | None = None) -> ModelSet:
    """The models of a file by batch size: ours (one or a set) or one HELM entry (batch 1)."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise UserError(f"cannot read profile {path}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise UserError(f"profile {path} is not valid JSON ({exc.msg}, line {exc.lineno})") from exc
    if isinstance(data, dict) and "schema" in data:
        return ModelSet(models_from_dict(data))
    if not is_helm_efficiency(data):
        raise UserError(
            f"{path} is neither an infermeter cost model nor HELM efficiency_data; "
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
    if model not in data:
        raise UserError(f"model {model!r} is not in {path}; it has: {', '.join(list(data)[:10])}")
    return ModelSet([cost_model_from_helm_entry(model, data[model])])
