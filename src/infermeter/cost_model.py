"""The fitted model of the idealized-runtime paper, and its JSON file.

    t(p, o) = PE(p) + (o - 1) * g(p) + overhead

PE is piecewise linear in the prompt size p through the profiled sizes ("knots"), extrapolated
linearly past the end knots and never negative; overhead is a constant for black-box APIs
(§3.5), zero for a local stack. The paper's g is one per-output-token slope, and that is what
`per_output_token` holds (Table 3's g). A decode step also reads the keys and values of the
whole context, so on a fast stack it costs more after a long prompt (LLaMA-7B on an H200:
3.85 ms per token after 1 prompt token, 4.03 ms after 1,536; the energy per token 8% more):
with `output_token_slopes` (each knot's own slope) g(p) is interpolated between the knots and
held flat past the ends, which halved the held-out error of that profile. Without them g(p) = g.
The same form prices energy, with joules in place of seconds. Evaluation is vectorised: a
million queries is one numpy pass.

File format (`schema`: "infermeter.cost_model/1"), a small JSON object:
    quantity          "runtime_s" or "energy_j"
    prompt_sizes      the knots, ascending
    prompt_encoding   PE at each knot (seconds or joules)
    per_output_token  g
    output_token_slopes  g at each knot, or null (optional: files without it use g everywhere)
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
    output_token_slopes: list[float] | None = None  # g at each knot; None: g everywhere

    def __post_init__(self) -> None:
        if len(self.prompt_sizes) != len(self.prompt_encoding) or not self.prompt_sizes:
            raise ValueError("prompt_sizes and prompt_encoding must be non-empty and equal length")
        slopes = self.output_token_slopes
        if slopes is not None and len(slopes) != len(self.prompt_sizes):
            raise ValueError("output_token_slopes must have one slope per prompt size")
        order = np.argsort(self.prompt_sizes)
        self.prompt_sizes = [int(self.prompt_sizes[i]) for i in order]
        self.prompt_encoding = [float(self.prompt_encoding[i]) for i in order]
        if slopes is not None:
            self.output_token_slopes = [float(slopes[i]) for i in order]
        if len(set(self.prompt_sizes)) != len(self.prompt_sizes):
            raise ValueError("prompt_sizes must be distinct")

    @property
    def unit(self) -> str:
        return "s" if self.quantity == "runtime_s" else "J"

    def prompt_encoding_at(self, prompt_tokens: np.ndarray | float) -> np.ndarray:
        return piecewise_linear(
            np.array(self.prompt_sizes), np.array(self.prompt_encoding), prompt_tokens
        )

    def per_output_token_at(self, prompt_tokens: np.ndarray | float) -> np.ndarray:
        """g(p): the knots' slopes interpolated (flat past the ends), or g everywhere."""
        p = np.asarray(prompt_tokens, dtype=float)
        if self.output_token_slopes is None:
            return np.full_like(p, self.per_output_token, dtype=float)
        return np.interp(p, self.prompt_sizes, self.output_token_slopes)

    def predict(
        self, prompt_tokens: np.ndarray | float, output_tokens: np.ndarray | float
    ) -> np.ndarray:
        """Vectorised t(p, o); o counts every output token, the first included (o ≥ 1)."""
        o = np.asarray(output_tokens, dtype=float)
        return (
            self.prompt_encoding_at(prompt_tokens)
            + (o - 1.0) * self.per_output_token_at(prompt_tokens)
            + self.overhead
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
