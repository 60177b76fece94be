"""The fitted model of the idealized-runtime paper, and its JSON file.

    t(p, o) = PE(p) + D(p, o) + overhead,   D(p, o) = (o - 1) * g(p) in the paper

PE is piecewise linear in the prompt size p through the profiled sizes ("knots"), extrapolated
linearly past the end knots and never negative; past the largest knot it never falls below PE
there (a noisy profile whose last segment falls would otherwise price longer prompts cheaper,
down to nothing: `held_prompt_encoding` says when it holds); a profile of one prompt size has
no segment, and its PE is that size's at every p (`prompt_encoding_extension` says how PE is
extended at either end, and estimate.range_notes tells the user). The overhead is a constant for
black-box APIs (§3.5), zero for a local stack. The paper's g is one per-output-token slope, and
that is what `per_output_token` holds (Table 3's g). A decode step also reads the keys and
values of the whole context, so on a fast stack it costs more after a long prompt (LLaMA-7B on
an H200: 3.85 ms per token after 1 prompt token, 4.03 ms after 1,536; the energy per token 8%
more): with `output_token_slopes` (each knot's own slope) g(p) is interpolated between the
knots and held flat past the ends, which halved the held-out error of that profile. Without
them g(p) = g.

The decode part need not be a line. Measured on an H200 (docs/benchmarks/bias_diagnosis.md),
the first decode step after a 1,000-token prompt takes 5.1 ms and later ones 4.0 ms, and a
step's cost grows with the context: a line through o = 1 .. 256 then prices 2- to 8-token
outputs 2-4% low. With `decode_curves` (one per profiled prompt size: the measured decode time
D = t(p, o) - PE(p) at each profiled o), the first step is blended in p between curves and
every later step is priced at the context it attends over, from the curves' measured cost per
step there (infermeter.model.decode). PE(p) is then the measured o = 1 time at every prompt
size profiled at o = 1, which may be many more than the curves' sizes.

The same form prices energy, with joules in place of seconds. Evaluation is vectorised: a
million queries is one numpy pass. No prediction is negative.

File format (`schema`: "infermeter.cost_model/1"), a small JSON object:
    quantity          "runtime_s" or "energy_j"
    prompt_sizes      the knots, ascending
    prompt_encoding   PE at each knot (seconds or joules)
    per_output_token  g
    output_token_slopes  g at each knot, or null (optional: files without it use g everywhere)
    decode_curves     null, or a list of {prompt_tokens, output_tokens, decode, tail_slope}:
                      D at each profiled o (> 1) of one prompt size, and the slope past the last
    overhead          constant term (0 for local stacks)
    batch_size        the batch size the model prices (one model per batch size)
    model, stack      what was profiled (names / dicts, free-form)
    fit               statistics of the fit: R² per prompt size and overall, held-out error
    provenance        infermeter version, run id, date
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal

import numpy as np

from infermeter.errors import UserError
from infermeter.model.decode import decode_time
from infermeter.store.outputs import writing
from infermeter.workloads.queries import MAX_BATCH, MAX_JOULES, MAX_TOKENS, number

SCHEMA = "infermeter.cost_model/1"
SET_SCHEMA = "infermeter.cost_models/1"  # a file of several models (one per batch size)
# A fitted term in seconds or joules beyond this is a corrupt file, not a measurement.
_BOUND = MAX_JOULES
Quantity = Literal["runtime_s", "energy_j"]


def end_slopes(knots: np.ndarray, values: np.ndarray) -> tuple[float, float]:
    """The slopes (value per token) piecewise_linear extends its end segments with: the first
    segment's below the first knot, and the last segment's past the last knot, 0 there where
    that falls; (0, 0) for a single knot, whose value holds everywhere."""
    if len(knots) < 2:
        return 0.0, 0.0
    left = (values[1] - values[0]) / (knots[1] - knots[0])
    right = max((values[-1] - values[-2]) / (knots[-1] - knots[-2]), 0.0)
    return float(left), float(right)


def piecewise_linear(
    knots: np.ndarray, values: np.ndarray, x: np.ndarray, clip: bool = True
) -> np.ndarray:
    """Interpolate through (knots, values); extend the end segments linearly (end_slopes),
    except that past the last knot a falling segment is held flat at the last value (more of x
    never costs less there); a single knot's value holds everywhere. Clipped at 0 unless
    `clip` is False (what the lines themselves give, for saying how far below 0 they reach)."""
    knots = np.asarray(knots, dtype=float)
    values = np.asarray(values, dtype=float)
    x = np.asarray(x, dtype=float)
    if knots.size == 1:
        y = np.full_like(x, values[0], dtype=float)
        return np.maximum(y, 0.0) if clip else y
    y = np.interp(x, knots, values)
    left_slope, right_slope = end_slopes(knots, values)
    y = np.where(x < knots[0], values[0] + (x - knots[0]) * left_slope, y)
    y = np.where(x > knots[-1], values[-1] + (x - knots[-1]) * right_slope, y)
    return np.maximum(y, 0.0) if clip else y


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
    decode_curves: list[dict[str, Any]] | None = None  # see the module docstring
    batch_size: int = 1

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
        if self.decode_curves is not None:
            self.decode_curves = sorted(
                (_check_curve(c) for c in self.decode_curves), key=lambda c: c["prompt_tokens"]
            )
            if not self.decode_curves:
                raise ValueError("decode_curves must be null or hold at least one curve")
        values = [*self.prompt_encoding, self.per_output_token, self.overhead]
        if not all(np.isfinite(values)):
            raise ValueError("prompt_encoding, per_output_token and overhead must be finite")
        if int(self.batch_size) < 1:
            raise ValueError("batch_size must be at least 1")
        self.batch_size = int(self.batch_size)

    @property
    def unit(self) -> str:
        """'s' for a runtime model, 'J' for an energy model."""
        return "s" if self.quantity == "runtime_s" else "J"

    def prompt_encoding_at(self, prompt_tokens: np.ndarray | float) -> np.ndarray:
        """PE(p): prompt-encoding time (s) or energy (J) at `prompt_tokens`, piecewise linear
        through the profiled sizes and extended at the ends (paper 1 §3.4); same
        shape as the input."""
        return piecewise_linear(
            np.array(self.prompt_sizes), np.array(self.prompt_encoding), prompt_tokens
        )

    def prompt_encoding_extension(
        self, end: Literal["below", "past"]
    ) -> tuple[int, float, float] | None:
        """How PE(p) is extended outside the profiled prompt sizes (piecewise_linear): at `end`,
        "below" the smallest size or "past" the largest, (that size in tokens, PE there and
        the slope it is extended with, in the model's unit and unit per token: the first
        segment's below, the last segment's past, 0 past where that falls). None for a model
        profiled at one prompt size, whose PE is that size's at every prompt size."""
        if len(self.prompt_sizes) < 2:
            return None
        below, past = end_slopes(np.array(self.prompt_sizes), np.array(self.prompt_encoding))
        if end == "below":
            return self.prompt_sizes[0], self.prompt_encoding[0], below
        return self.prompt_sizes[-1], self.prompt_encoding[-1], past

    def held_prompt_encoding(self) -> tuple[int, float, int, float] | None:
        """Where PE is held flat past the largest profiled prompt size because the profile's
        last segment falls (piecewise_linear): (largest size, PE there, the size before it, PE
        there), in tokens and the model's unit; None where PE past it is extended as fitted."""
        sizes, pe = self.prompt_sizes, self.prompt_encoding
        if len(sizes) < 2 or pe[-1] >= pe[-2]:
            return None
        return sizes[-1], pe[-1], sizes[-2], pe[-2]

    def per_output_token_at(self, prompt_tokens: np.ndarray | float) -> np.ndarray:
        """g(p): the knots' slopes interpolated (flat past the ends), or g everywhere."""
        p = np.asarray(prompt_tokens, dtype=float)
        if self.output_token_slopes is None:
            return np.full_like(p, self.per_output_token, dtype=float)
        return np.interp(p, self.prompt_sizes, self.output_token_slopes)

    def decode_at(
        self, prompt_tokens: np.ndarray | float, output_tokens: np.ndarray | float
    ) -> np.ndarray:
        """D(p, o): the time (or energy) of the o - 1 decode steps after a prompt of p."""
        p = np.asarray(prompt_tokens, dtype=float)
        o = np.asarray(output_tokens, dtype=float)
        if self.decode_curves is None:
            return (o - 1.0) * self.per_output_token_at(p)
        p, o = np.broadcast_arrays(p, o)
        return decode_time(self.decode_curves, p.ravel(), o.ravel()).reshape(p.shape)

    def predict(
        self, prompt_tokens: np.ndarray | float, output_tokens: np.ndarray | float
    ) -> np.ndarray:
        """Vectorised t(p, o); o counts every output token, the first included (o ≥ 1).
        Never negative: a noisy curve cannot price a query below zero."""
        p = np.asarray(prompt_tokens, dtype=float)
        o = np.asarray(output_tokens, dtype=float)
        p, o = np.broadcast_arrays(p, o)
        value = self.prompt_encoding_at(p) + self.decode_at(p, o) + self.overhead
        return np.maximum(value, 0.0)

    def unclipped(self, prompt_tokens: float, output_tokens: float) -> float:
        """t(p, o) as the fitted lines give it, before predict's clips at 0 (s or J): how far
        below nothing a query the model extrapolates to 0 reaches, for saying so."""
        p, o = float(prompt_tokens), float(output_tokens)
        pe = piecewise_linear(
            np.array(self.prompt_sizes), np.array(self.prompt_encoding), np.array([p]), clip=False
        )
        return float(pe[0] + self.decode_at(np.array([p]), np.array([o]))[0] + self.overhead)

    @property
    def profiled_prompt_tokens(self) -> tuple[int, int]:
        """The smallest and largest prompt size the model was profiled at."""
        return self.prompt_sizes[0], self.prompt_sizes[-1]

    @property
    def max_context(self) -> int | None:
        """The model's context in tokens, where the profile recorded it (None for an API, a
        HELM entry or a model fitted from a points file)."""
        value = (self.provenance or {}).get("max_context")
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def profiled_output_tokens(self) -> int | None:
        """The largest output length the model was profiled at (None where unknown)."""
        if self.decode_curves is not None:
            return max(max(c["output_tokens"]) for c in self.decode_curves)
        largest = self.fit.get("max_output_tokens") if self.fit else None
        return int(largest) if largest else None

    # ---- file --------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields with the schema version, as model files hold them."""
        return {"schema": SCHEMA, **asdict(self)}

    def save(self, path: str | Path) -> Path:
        """Write the model as JSON to `path` and return it. Raises UserError where the path
        cannot be written."""
        with writing(path, "model file") as target:
            target.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return target

    def describe_fit(self) -> str:
        """One line: how the model was fitted (denoising, decode form, overhead)."""
        fit = self.fit or {}
        decode = (
            "decode curves"
            if self.decode_curves is not None
            else ("one g" if self.output_token_slopes is None else "g(p) per prompt size")
        )
        parts = [
            f"{fit.get('denoise', '?')} over trials",
            decode,
            f"overhead {fit.get('overhead_mode', 'none')}",
        ]
        if self.batch_size != 1:
            parts.append(f"batch {self.batch_size}")
        return ", ".join(parts)

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "cost-model file") -> CostModel:
        """A model from its JSON object, every field checked (types, finite numbers of sane
        size, whole prompt sizes); one line naming `origin` and the field otherwise."""
        if not isinstance(data, dict):
            raise UserError(f"{origin}: a model is not a JSON object; refit with `infermeter fit`")
        schema = data.get("schema")
        if schema != SCHEMA:
            raise UserError(
                f"{origin}: unsupported cost-model schema {schema!r} (this infermeter reads "
                f"{SCHEMA!r}); refit with `infermeter fit` or upgrade infermeter"
            )
        body = {k: v for k, v in data.items() if k != "schema"}
        _check_fields(body, origin)
        try:
            return cls(**body)
        except (TypeError, ValueError) as exc:
            raise UserError(
                f"{origin}: malformed cost model ({exc}); refit with `infermeter fit`"
            ) from exc


def _check_fields(body: dict[str, Any], origin: str) -> None:
    """The checks of a model file's fields that the dataclass itself leaves to its callers."""
    for name in ("prompt_sizes", "prompt_encoding"):
        if not isinstance(body.get(name), list) or not body[name]:
            raise UserError(f"{origin}: {name} must be a non-empty list; refit the model")
    for i, size in enumerate(body["prompt_sizes"]):
        number(size, f"{origin}: prompt_sizes[{i}]", maximum=MAX_TOKENS, whole=True)
    for i, value in enumerate(body["prompt_encoding"]):
        number(value, f"{origin}: prompt_encoding[{i}]", minimum=-_BOUND, maximum=_BOUND)
    number(body.get("per_output_token"), f"{origin}: per_output_token", maximum=_BOUND)
    number(body.get("overhead", 0.0), f"{origin}: overhead", maximum=_BOUND)
    slopes = body.get("output_token_slopes")
    if slopes is not None:
        if not isinstance(slopes, list):
            raise UserError(f"{origin}: output_token_slopes must be a list or null")
        for i, value in enumerate(slopes):
            number(value, f"{origin}: output_token_slopes[{i}]", maximum=_BOUND)
    if body.get("quantity", "runtime_s") not in ("runtime_s", "energy_j"):
        raise UserError(f"{origin}: quantity must be runtime_s or energy_j")
    number(
        body.get("batch_size", 1), f"{origin}: batch_size", minimum=1, maximum=MAX_BATCH, whole=True
    )
    for name in ("stack", "fit", "provenance"):
        if not isinstance(body.get(name, {}), dict):
            raise UserError(f"{origin}: {name} must be a JSON object")
    if not isinstance(body.get("model", ""), str):
        raise UserError(f"{origin}: model must be a name (text)")
    curves = body.get("decode_curves")
    if curves is None:
        return
    if not isinstance(curves, list):
        raise UserError(f"{origin}: decode_curves must be a list or null")
    for i, curve in enumerate(curves):
        where = f"{origin}: decode_curves[{i}]"
        if not isinstance(curve, dict) or not all(
            isinstance(curve.get(k), list) for k in ("output_tokens", "decode")
        ):
            raise UserError(f"{where} needs output_tokens and decode lists")
        number(curve.get("prompt_tokens"), f"{where}.prompt_tokens", maximum=MAX_TOKENS, whole=True)
        for o in curve["output_tokens"]:
            number(o, f"{where}.output_tokens", minimum=2, maximum=MAX_TOKENS, whole=True)
        for d in curve["decode"]:
            number(d, f"{where}.decode", minimum=-_BOUND, maximum=_BOUND)
        number(curve.get("tail_slope", 0.0), f"{where}.tail_slope", maximum=_BOUND)


def _check_curve(curve: dict[str, Any]) -> dict[str, Any]:
    try:
        o = [float(x) for x in curve["output_tokens"]]
        d = [float(x) for x in curve["decode"]]
        out = {
            "prompt_tokens": int(curve["prompt_tokens"]),
            "output_tokens": o,
            "decode": d,
            "tail_slope": float(curve.get("tail_slope", 0.0)),
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise ValueError(f"malformed decode curve {curve!r}") from exc
    if not o or len(o) != len(d) or any(b <= a for a, b in pairwise(o)):
        raise ValueError("a decode curve needs ascending output_tokens, one decode value each")
    if o[0] <= 1 or not all(np.isfinite([*d, out["tail_slope"]])):
        raise ValueError("decode curves hold finite values at output lengths above 1")
    return out


def save_models(models: list[CostModel], path: str | Path) -> Path:
    """One model as a cost-model file; several (one per batch size) as a set of them."""
    if len(models) == 1:
        return models[0].save(path)
    body = {"schema": SET_SCHEMA, "models": [m.to_dict() for m in models]}
    with writing(path, "model file") as target:
        target.write_text(json.dumps(body, indent=2) + "\n")
    return target


def models_from_dict(data: Any, origin: str = "cost-model file") -> list[CostModel]:
    """The models of a cost-model file or of a set of them."""
    if isinstance(data, dict) and data.get("schema") == SET_SCHEMA:
        entries = data.get("models")
        if not isinstance(entries, list) or not entries:
            raise UserError(f"{origin}: a cost-model set without models; refit `infermeter fit`")
        return [
            CostModel.from_dict(entry, f"{origin} model {i + 1}") for i, entry in enumerate(entries)
        ]
    if not isinstance(data, dict):
        raise UserError(f"{origin}: not a JSON object; refit with `infermeter fit`")
    return [CostModel.from_dict(data, origin)]


class ModelSet:
    """Models of one quantity by batch size: what `estimate` prices a batch_size column with."""

    def __init__(self, models: list[CostModel]) -> None:
        if not models:
            raise ValueError("a model set needs at least one model")
        quantities = {m.quantity for m in models}
        if len(quantities) != 1:
            raise UserError("a model set mixes runtime and energy models; pass one of each kind")
        self.by_batch: dict[int, CostModel] = {}
        for model in models:
            if model.batch_size in self.by_batch:
                raise UserError(f"two models for batch size {model.batch_size} in one set")
            self.by_batch[model.batch_size] = model

    @property
    def quantity(self) -> str:
        """What every model of the set predicts: 'runtime_s' or 'energy_j'."""
        return next(iter(self.by_batch.values())).quantity

    @property
    def batch_sizes(self) -> list[int]:
        """The profiled batch sizes, ascending."""
        return sorted(self.by_batch)

    def first(self) -> CostModel:
        """The model of the smallest profiled batch size."""
        return self.by_batch[self.batch_sizes[0]]

    def for_batch(self, batch_size: int) -> CostModel:
        """The model for `batch_size`. Raises UserError naming the profiled sizes where it has
        none."""
        try:
            return self.by_batch[int(batch_size)]
        except KeyError:
            sizes = ", ".join(str(b) for b in self.batch_sizes)
            raise UserError(
                f"the profile has no model for batch size {batch_size} (it has {sizes}); "
                "profile that batch size with --batch-sizes or price one it has"
            ) from None

    def predict(
        self, prompt_tokens: np.ndarray, output_tokens: np.ndarray, batch_size: np.ndarray
    ) -> np.ndarray:
        """t(p, o) of each query under its batch size's model."""
        p = np.asarray(prompt_tokens, dtype=float)
        o = np.asarray(output_tokens, dtype=float)
        b = np.asarray(batch_size, dtype=int)
        out = np.empty(p.shape, dtype=float)
        for size in np.unique(b):
            rows = b == size
            out[rows] = self.for_batch(int(size)).predict(p[rows], o[rows])
        return out
