"""Rotary tables: inverse frequencies and the attention factor of each rope scaling type.

The engine rotates interleaved pairs with one complex multiply (model.py); this module gives
the per-position rotations as complex numbers of magnitude `factor` (YaRN's attention factor,
1 otherwise), for `rot` rotated dimensions of base `theta`. The scaling types follow the
formulas of transformers' modeling_rope_utils (default, linear, llama3, yarn); any other type
(dynamic, longrope) warns once and rotates as plain RoPE, which leaves a random-weight run's
cost unchanged but not a real checkpoint's numbers.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor

_WARNED: set[str] = set()


def _base(rot: int, theta: float) -> Tensor:
    return theta ** -(torch.arange(0, rot, 2, dtype=torch.float64) / rot)


def _llama3(inv: Tensor, p: dict[str, Any]) -> Tensor:
    factor, low, high = (
        float(p["factor"]),
        float(p["low_freq_factor"]),
        float(p["high_freq_factor"]),
    )
    old = float(p["original_max_position_embeddings"])
    wavelen = 2 * math.pi / inv
    scaled = torch.where(wavelen > old / low, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old / high) & (wavelen <= old / low)
    return torch.where(medium, smoothed, scaled)


def _yarn(rot: int, theta: float, p: dict[str, Any], max_context: int) -> tuple[Tensor, float]:
    original = float(p["original_max_position_embeddings"])
    factor = p.get("factor")
    factor = float(factor) if factor is not None else max_context / original

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = p.get("attention_factor")
    if attention is None:
        if p.get("mscale") and p.get("mscale_all_dim"):
            attention = mscale(factor, p["mscale"]) / mscale(factor, p["mscale_all_dim"])
        else:
            attention = mscale(factor)
    fast, slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1

    def dim_of(rotations: float) -> float:
        return rot * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(theta))

    low, high = dim_of(fast), dim_of(slow)
    if p.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rot - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(rot // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    extrapolation = 1 - ramp
    base = _base(rot, theta)
    inv = base / factor * (1 - extrapolation) + base * extrapolation
    return inv, float(attention)


def inverse_frequencies(
    rot: int, theta: float, scaling: dict[str, Any] | None, max_context: int
) -> tuple[Tensor, float]:
    """(inverse frequencies [rot/2] float64, attention factor) for a rope scaling dict.

    `scaling` is a spec's rope_scaling (transformers' rope_parameters without the base);
    None is plain RoPE.
    """
    kind = (scaling or {}).get("rope_type", "default")
    if kind == "default" or scaling is None:
        return _base(rot, theta), 1.0
    if kind == "linear":
        return _base(rot, theta) / float(scaling["factor"]), 1.0
    if kind == "llama3":
        return _llama3(_base(rot, theta), scaling), 1.0
    if kind == "yarn":
        return _yarn(rot, theta, scaling, max_context)
    if kind not in _WARNED:
        _WARNED.add(kind)
        warnings.warn(f"engine: rope scaling {kind!r} is applied as plain RoPE", stacklevel=2)
    return _base(rot, theta), 1.0


def rotations(
    rot: int,
    theta: float,
    scaling: dict[str, Any] | None,
    positions: int,
    max_context: int | None = None,
) -> Tensor:
    """Complex rotations [positions, rot/2] (complex64): factor · e^{i·p·inv_freq}, for the
    first `positions` of a model of `max_context` (None: `positions`; YaRN without a factor
    scales by it). A position's rotation does not depend on how many are built."""
    inv, factor = inverse_frequencies(rot, theta, scaling, max_context or positions)
    angles = torch.outer(torch.arange(positions, dtype=torch.float64), inv)
    return torch.polar(torch.full_like(angles, factor), angles).to(torch.complex64)
