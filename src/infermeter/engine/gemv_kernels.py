"""Batch-1 GEMVs that load each weight row whole, in one go (CUDA; Triton; issue 20).

A decode step at batch 1 is a chain of GEMVs of a few to a few tens of megabytes each. A
kernel that walks K in blocks (kernels._small_linear) waits on memory once per block; here a
program loads its BLOCK_N rows over all of K as one tile, so every load it will make is in
flight at once. K is read as one power-of-two piece (masked) or, with SPLIT, as two (the
largest power of two <= K and the rest padded: 768 = 512 + 256 has no masked lanes).

Measured on an H200 one kernel at a time (benchmarks/gemv_sweep.py, docs/benchmarks/
gemv_sweep.md, 2026-12-02): against the looped kernels it replaces, Qwen3-30B-A3B's expert
GEMVs went from 68% to 86% (gate/up) and 45% to 71% (down, summed over k) of the copy
bandwidth, its attention projections from 51-62% to 70-74%; every shape of the four MoE
models swept was faster.

One kernel serves three uses:
- dense (no Ids): out [1, N] = x·Wᵀ (+ bias)(+ residual);
- one token's expert pairs, a program per (column block, pair): out[p] = glu(A[p // a_div]·
  W[expert(p)]ᵀ + bias)(· scale[p]) (moe_kernels.expert_gemv's "pairs" mode);
- with SUM, a program per column block over all pairs (P = pairs padded to a power of two):
  the sum over k of the above, one row (the "sum" mode).
The tile (BLOCK_N, warps, SPLIT) is autotuned per shape among those that load 8-64 weight
elements a thread (kernels.autotune: kept in Triton's cache).
"""

from __future__ import annotations

from typing import Any

import torch
import triton
import triton.language as tl
from torch import Tensor

from infermeter.engine.kernels import INTERPRETED, _grid_sync, _launch, autotune

GLU = {"swiglu": 1, "geglu": 2, "clamped_swiglu": 3}  # fused gated activations
PER_THREAD = (8, 64)  # weight elements a thread loads: the tiles worth trying
MAX_WARPS = 16


@triton.jit
def _tanh(x):
    return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _glu(gate, up, ACT: tl.constexpr, limit, alpha):
    """The gated activation of a GEMM epilogue (float32): ACT 0 none (gate returned), 1 SiLU,
    2 tanh-GELU, 3 gpt-oss's clamped SiLU (limit, alpha)."""
    if ACT == 1:
        gate = gate * tl.sigmoid(gate) * up
    elif ACT == 2:
        inner = 0.7978845608028654 * (gate + 0.044715 * gate * gate * gate)
        gate = 0.5 * gate * (1.0 + _tanh(inner)) * up
    elif ACT == 3:
        gate = tl.minimum(gate, limit)
        up = tl.minimum(tl.maximum(up, -limit), limit)
        gate = gate * tl.sigmoid(alpha * gate) * (up + 1.0)
    return gate


@triton.jit
def _dot_rows(A, W, expert, p, cols, pmask, nmask, K, a_div, stride_am, stride_we, stride_wn,
              off, N_UP, NormW, KC: tl.constexpr, ACT: tl.constexpr,
              NORM: tl.constexpr):  # fmt: skip
    """Columns [off, off + KC) of K: (gate, up) partial sums [P, BLOCK_N] in float32 (up is
    gate where ACT is 0) and the partial sum of squares of A's rows [P]; with NORM, A is
    multiplied by the norm's weight NormW [K] (the 1/rms scale, a scalar a row, is applied
    to the finished sums by the caller, so no pass of its own reads the row first)."""
    kk = off + tl.arange(0, KC)
    kmask = kk < K
    w_ptr = (
        W + expert[:, None, None] * stride_we + cols.to(tl.int64)[None, :, None] * stride_wn
        + kk[None, None, :]
    )  # fmt: skip
    w_mask = pmask[:, None, None] & nmask[None, :, None] & kmask[None, None, :]
    w = tl.load(w_ptr, mask=w_mask, other=0.0)
    w_up = w
    if ACT > 0:
        w_up = tl.load(w_ptr + N_UP * stride_wn, mask=w_mask, other=0.0)
    a_ptr = A + (p // a_div).to(tl.int64)[:, None] * stride_am + kk[None, :]
    a = tl.load(a_ptr, mask=pmask[:, None] & kmask[None, :], other=0.0).to(tl.float32)
    squares = tl.sum(a * a, 1)
    if NORM:
        a *= tl.load(NormW + kk, mask=kmask, other=0.0).to(tl.float32)[None, :]
    gate = tl.sum(w.to(tl.float32) * a[:, None, :], 2)
    up = gate
    if ACT > 0:
        up = tl.sum(w_up.to(tl.float32) * a[:, None, :], 2)
    return gate, up, squares


def _tiles() -> list[triton.Config]:
    """(BLOCK_N, warps, SPLIT) tiles; pruned per shape by _fitting. The interpreter runs one
    tile that splits K, so that the CPU tests walk both pieces."""
    if INTERPRETED:
        return [triton.Config({"BLOCK_N": 4, "SPLIT": True}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_N": n, "SPLIT": split}, num_warps=w, num_stages=1)
        for n in (1, 2, 4)
        for w in (2, 4, 8, MAX_WARPS)
        for split in (False, True)
    ]


def k_pieces(k: int, split: bool) -> tuple[int, int]:
    """(KA, KB) lanes of K's two pieces: K padded to a power of two and none, or with `split`
    the largest power of two <= K and the rest padded (768 -> 512 + 256, 2880 -> 2048 + 1024).
    """
    if not split:
        return triton.next_power_of_2(k), 0
    ka = 1 << (k.bit_length() - 1)
    rest = k - ka
    return ka, triton.next_power_of_2(rest) if rest else 0


def _per_thread(k: int, split: bool, p: int, act: int, block_n: int, warps: int) -> int:
    return sum(k_pieces(k, split)) * p * (2 if act else 1) * block_n // (32 * warps)


def _fitting(configs: list[triton.Config], named_args: dict[str, Any], **kwargs: Any) -> list:
    """The tiles worth timing for this shape: PER_THREAD weight elements a thread, and a
    split only where it reads fewer padded lanes."""
    args = {**named_args, **kwargs}
    k, p, act = args["K"], args["P"], args["ACT"]
    lo, hi = PER_THREAD
    keep = []
    for c in configs:
        split, n = c.kwargs["SPLIT"], c.kwargs["BLOCK_N"]
        if split and sum(k_pieces(k, True)) >= sum(k_pieces(k, False)):
            continue
        if INTERPRETED or lo <= _per_thread(k, split, p, act, n, c.num_warps) <= hi:
            keep.append(c)
    return keep or configs[:1]


def fits(k: int, pairs: int = 1, glu: bool = False) -> bool:
    """Whether the rows kernel can hold a K-long row for `pairs` pairs (SUM) without more
    than PER_THREAD's upper bound a thread at its widest tile (one row, MAX_WARPS warps)."""
    return _per_thread(k, False, triton.next_power_of_2(pairs), glu, 1, MAX_WARPS) <= PER_THREAD[1]


@autotune(_tiles(), key=["N", "K", "P", "SUM", "HAS_IDS", "ACT"], prune=_fitting)
@triton.jit
def _rows_gemv(
    A, W, Bias, Scale, Res, Out, Ids, NormW,
    N, K, pairs, a_div, limit, alpha, eps,
    stride_am, stride_we, stride_wn, stride_be, stride_rm, stride_om,
    P: tl.constexpr, SUM: tl.constexpr, HAS_IDS: tl.constexpr, HAS_BIAS: tl.constexpr,
    HAS_SCALE: tl.constexpr, HAS_RES: tl.constexpr, NORM: tl.constexpr, PDL: tl.constexpr,
    K_WHOLE: tl.constexpr, K_LOW: tl.constexpr, K_REST: tl.constexpr, ACT: tl.constexpr,
    BLOCK_N: tl.constexpr, SPLIT: tl.constexpr,
):  # fmt: skip
    _grid_sync(PDL)
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # axis 0: up to 2^31 - 1 blocks
    p = tl.program_id(1) * P + tl.arange(0, P)
    pmask = p < pairs
    nmask = cols < N
    if HAS_IDS:
        expert = tl.load(Ids + p, mask=pmask, other=0).to(tl.int64)
    else:
        expert = tl.zeros([P], dtype=tl.int64)
    if SPLIT:
        gate, up, squares = _dot_rows(
            A, W, expert, p, cols, pmask, nmask, K, a_div, stride_am, stride_we, stride_wn,
            0, N, NormW, K_LOW, ACT, NORM,
        )  # fmt: skip
        if K_REST > 0:
            gate_b, up_b, squares_b = _dot_rows(
                A, W, expert, p, cols, pmask, nmask, K, a_div, stride_am, stride_we, stride_wn,
                K_LOW, N, NormW, K_REST, ACT, NORM,
            )  # fmt: skip
            gate += gate_b
            up += up_b
            squares += squares_b
    else:
        gate, up, squares = _dot_rows(
            A, W, expert, p, cols, pmask, nmask, K, a_div, stride_am, stride_we, stride_wn,
            0, N, NormW, K_WHOLE, ACT, NORM,
        )  # fmt: skip
    if NORM:  # RMSNorm: (a / rms(a) · weight)·w = (a · weight)·w / rms(a)
        inv = tl.rsqrt(squares / K + eps)[:, None]
        gate *= inv
        up *= inv
    if HAS_BIAS:
        b_ptr = Bias + expert[:, None] * stride_be + cols[None, :]
        b_mask = pmask[:, None] & nmask[None, :]
        gate += tl.load(b_ptr, mask=b_mask, other=0.0).to(tl.float32)
        if ACT > 0:
            up += tl.load(b_ptr + N, mask=b_mask, other=0.0).to(tl.float32)
    y = _glu(gate, up, ACT, limit, alpha)
    if HAS_SCALE:
        y *= tl.load(Scale + p, mask=pmask, other=0.0).to(tl.float32)[:, None]
    if SUM:
        total = tl.sum(tl.where(pmask[:, None], y, 0.0), 0)  # [BLOCK_N]
        if HAS_RES:
            total += tl.load(Res + cols, mask=nmask, other=0.0).to(tl.float32)
        tl.store(Out + cols, total.to(Out.dtype.element_ty), mask=nmask)
    else:
        o_mask = pmask[:, None] & nmask[None, :]
        if HAS_RES:
            r_ptr = Res + p[:, None] * stride_rm + cols[None, :]
            y += tl.load(r_ptr, mask=o_mask, other=0.0).to(tl.float32)
        o_ptr = Out + p[:, None] * stride_om + cols[None, :]
        tl.store(o_ptr, y.to(Out.dtype.element_ty), mask=o_mask)


def rows_gemv(
    a: Tensor,
    w: Tensor,
    *,
    ids: Tensor | None = None,
    a_div: int = 1,
    bias: Tensor | None = None,
    scale: Tensor | None = None,
    residual: Tensor | None = None,
    act: str | None = None,
    total: bool = False,
    limit: float = 7.0,
    alpha: float = 1.702,
    norm: tuple[Tensor, float] | None = None,
    tile: dict[str, Any] | None = None,
) -> Tensor:
    """One token's GEMVs, in a's dtype.

    Dense: a [1, K], w [N, K] -> [1, N] (+ bias [N])(+ residual [1, N]). Experts: ids [pairs]
    (int), w [E, N(·2), K], a [rows, K] read at row p // a_div -> [pairs, N], or with `total`
    their sum [1, N]; bias [E, N(·2)], scale [pairs]. With `act` (a GLU key) w holds [gate;
    up] rows and the gated activation is applied. `norm` (weight [K], eps): a's rows are
    RMSNorm-ed as they are loaded (in float32; the pre-norm of a decoder block, so that no
    kernel of its own writes them first). `tile` ({"BLOCK_N", "SPLIT", "num_warps"})
    runs that tile untuned (self-checks, sweeps); else the autotuned one.

    Raises ValueError where a and w are not contiguous along K, or where the row does not
    fit (see fits()): callers take the looped kernels there.
    """
    experts = ids is not None
    pairs = ids.numel() if experts else 1
    n = w.shape[-2] // (2 if act else 1)
    k = w.shape[-1]
    if a.stride(-1) != 1 or w.stride(-1) != 1:
        raise ValueError("rows_gemv needs a and w contiguous along K")
    if not fits(k, pairs if total else 1, act is not None):
        raise ValueError(f"rows_gemv: a row of K = {k} does not fit a program's registers")
    out = torch.empty(1 if total or not experts else pairs, n, device=a.device, dtype=a.dtype)
    p_block = triton.next_power_of_2(pairs) if total else 1
    grid = lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), 1 if total else pairs)  # noqa: E731
    kernel: Any = _rows_gemv
    options: dict[str, Any] = {}
    if tile is not None:
        kernel, options = _rows_gemv.fn, {"num_stages": 1, **tile}
    kernel[grid](
        a, w, bias if bias is not None else w, scale if scale is not None else w,
        residual if residual is not None else out, out, ids if experts else w,
        norm[0] if norm is not None else w,
        n, k, pairs, a_div, limit, alpha, norm[1] if norm is not None else 0.0,
        a.stride(0), w.stride(0) if experts else 0, w.stride(-2),
        bias.stride(0) if bias is not None and experts else 0,
        residual.stride(0) if residual is not None else 0, out.stride(0),
        P=p_block, SUM=total, HAS_IDS=experts, HAS_BIAS=bias is not None,
        HAS_SCALE=scale is not None, HAS_RES=residual is not None, NORM=norm is not None,
        K_WHOLE=k_pieces(k, False)[0], K_LOW=k_pieces(k, True)[0], K_REST=k_pieces(k, True)[1],
        ACT=GLU[act] if act else 0, **_launch(a.device), **options,
    )  # fmt: skip
    return out
