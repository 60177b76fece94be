"""The fitted model of the idealized-runtime paper, and its JSON file.

    t(p, o) = PE(p) + (o - 1) * g + overhead

PE is piecewise linear in the prompt size p through the profiled sizes ("knots"), extrapolated
linearly past the end knots and never negative; g is one per-output-token slope; overhead is a
constant for black-box APIs (§3.5), zero for a local stack. The same form prices energy, with
joules in place of seconds. Evaluation is vectorised: a million queries is one numpy pass.

File format (`schema`: "infermeter.cost_model/1"), a small JSON object:
    quantity          "runtime_s" or "energy_j"
    prompt_sizes      the knots, ascending
    prompt_encoding   PE at each knot (seconds or joules)
    per_output_token  g
    overhead          constant term (0 for local stacks)
    model, stack      what was profiled (names / dicts, free-form)
    fit               statistics of the fit: R² per prompt size and overall, held-out error
    provenance        infermeter version, run id, date
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from infermeter.errors import UserError

SCHEMA = "infermeter.cost_model/1"
Quantity = Literal["runtime_s", "energy_j"]


def piecewise_linear(knots: np.ndarray, values: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Interpolate through (knots, values); extend the end segments linearly; clip at 0."""
    knots = np.asarray(knots, dtype=float)
    values = np.asarray(values, dtype=float)
    x = np.asarray(x, dtype=float)
    if knots.size == 1:
        return np.full_like(x, max(values[0], 0.0), dtype=float)
    y = np.interp(x, knots, values)
    left_slope = (values[1] - values[0]) / (knots[1] - knots[0])
    right_slope = (values[-1] - values[-2]) / (knots[-1] - knots[-2])
    y = np.where(x < knots[0], values[0] + (x - knots[0]) * left_slope, y)
    y = np.where(x > knots[-1], values[-1] + (x - knots[-1]) * right_slope, y)
    return np.maximum(y, 0.0)


@dataclass
class CostModel:
    """t(p, o) = PE(p) + (o - 1)·g + overhead, for runtime (s) or energy (J)."""

    prompt_sizes: list[int]
    prompt_encoding: list[float]
    per_output_token: float
    overhead: float = 0.0
    quantity: Quantity = "runtime_s"
    model: str = ""
    stack: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    provenance: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.prompt_sizes) != len(self.prompt_encoding) or not self.prompt_sizes:
            raise ValueError("prompt_sizes and prompt_encoding must be non-empty and equal length")
        order = np.argsort(self.prompt_sizes)
        self.prompt_sizes = [int(self.prompt_sizes[i]) for i in order]
        self.prompt_encoding = [float(self.prompt_encoding[i]) for i in order]
        if len(set(self.prompt_sizes)) != len(self.prompt_sizes):
            raise ValueError("prompt_sizes must be distinct")

    @property
    def unit(self) -> str:
        return "s" if self.quantity == "runtime_s" else "J"

    def prompt_encoding_at(self, prompt_tokens: np.ndarray | float) -> np.ndarray:
        return piecewise_linear(
            np.array(self.prompt_sizes), np.array(self.prompt_encoding), prompt_tokens
        )

    def predict(
        self, prompt_tokens: np.ndarray | float, output_tokens: np.ndarray | float
    ) -> np.ndarray:
        """Vectorised t(p, o); o counts every output token, the first included (o ≥ 1)."""
        o = np.asarray(output_tokens, dtype=float)
        return (
            self.prompt_encoding_at(prompt_tokens)
            + (o - 1.0) * self.per_output_token
            + (self.overhead)
        )

    # ---- file --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, **asdict(self)}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CostModel:
        schema = data.get("schema")
        if schema != SCHEMA:
            raise UserError(
                f"unsupported cost-model schema {schema!r} (this infermeter reads {SCHEMA!r}); "
                "refit with `infermeter fit` or upgrade infermeter"
            )
        body = {k: v for k, v in data.items() if k != "schema"}
        try:
            return cls(**body)
        except (TypeError, ValueError) as exc:
            raise UserError(
                f"malformed cost-model file: {exc}; refit with `infermeter fit`"
            ) from exc
