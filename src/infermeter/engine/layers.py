"""The pieces every engine layer is made of: parameters, norms, projections, gated activations.

Below model.py (the decoder and its blocks), attention.py and moe.py, which all build on them.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infermeter.spec.model import ModelSpec


def param(*shape: int, device: torch.device, dtype: torch.dtype) -> nn.Parameter:
    """An uninitialised, frozen parameter of `shape` on the target device: weights.py fills it
    there (random or from a checkpoint), with no CPU round trip."""
    return nn.Parameter(torch.empty(*shape, device=device, dtype=dtype), requires_grad=False)


class Norm(nn.Module):
    """RMSNorm, or LayerNorm where `spec.norm` is "layernorm", over `width` (default the
    hidden size) features; `fast` (the Triton kernels) fuses the RMSNorm."""

    def __init__(
        self, spec: ModelSpec, device: torch.device, dtype: torch.dtype, width: int = 0
    ) -> None:
        super().__init__()
        h = width or spec.hidden_size
        self.eps = spec.norm_eps
        self.weight = param(h, device=device, dtype=dtype)
        self.bias = param(h, device=device, dtype=dtype) if spec.norm == "layernorm" else None

    def forward(self, x: Tensor, fast: Any = None) -> Tensor:
        """The norm of x [..., width]: LayerNorm with bias, else RMSNorm (the fused Triton
        kernel where `fast` is given); same shape."""
        if self.bias is not None:
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        if fast is not None:
            return fast.rms_norm(x, self.weight, self.eps)
        return F.rms_norm(x, x.shape[-1:], self.weight, self.eps)


def linear(
    x: Tensor, w: Tensor, b: Tensor | None, fast: Any = None, norm: Norm | None = None
) -> Tensor:
    """norm(x) @ w.T + b (`norm`: x's pre-norm, not yet applied; None: x as given); a decode
    batch on the Triton path streams w through our GEMV kernel, which applies an RMSNorm
    itself as it loads x (see fused_norm)."""
    if norm is not None and fused_norm(norm, x, fast):
        return fast.small_linear(x, w, b, norm=(norm.weight, norm.eps))
    if norm is not None:
        x = norm(x, fast)
    if fast is not None and x.shape[0] <= fast.SMALL_M:
        return fast.small_linear(x, w, b)
    return F.linear(x, w, b)


def fused_norm(norm: Norm | None, x: Tensor, fast: Any) -> bool:
    """Whether a GEMV on the Triton decode path applies `norm` to x itself: an RMSNorm, one
    token, whole-rows GEMVs (that kernel loads all of x in each program; kernels.LOOPED's
    one-token GEMVs do not)."""
    return (
        norm is not None
        and norm.bias is None
        and fast is not None
        and x.shape[0] == 1
        and fast.ONE_TOKEN_ROWS
    )


def activation(y: Tensor, kind: str, width: int, extra: dict[str, Any]) -> Tensor:
    """Gated activations of y = [gate | up] ([T, 2·width]) -> [T, width]."""
    gate, up = y.split(width, dim=-1)
    if kind == "swiglu":
        return F.silu(gate) * up
    if kind == "geglu":
        return F.gelu(gate, approximate="tanh") * up
    if kind == "clamped_swiglu":  # gpt-oss: clamp both halves, x·σ(αx), (up + 1)
        limit, alpha = extra.get("swiglu_limit", 7.0), extra.get("swiglu_alpha", 1.702)
        gate = gate.clamp(max=limit)
        up = up.clamp(min=-limit, max=limit)
        return gate * torch.sigmoid(gate * alpha) * (up + 1)
    raise ValueError(f"not a gated FFN kind: {kind}")
