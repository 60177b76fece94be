"""Triton grouped GEMM for mixture-of-experts layers (CUDA; imported lazily, self-checked).

The (token, expert) pairs of a batch are sorted by expert and each expert's run is padded to
a multiple of BLOCK_M rows (`align`, plain torch ops with static shapes, so the whole MoE
layer is one CUDA graph whatever the routing). One program multiplies a BLOCK_M-row block of
one expert by a BLOCK_N-column tile of that expert's weights, so every expert the batch
touches is streamed once per block of its tokens and an untouched expert is never read: at
decode (a few tokens, BLOCK_M 16) the bytes read are those of the distinct experts, the
quantity spec.expected_distinct_experts predicts. Blocks past the last expert's run exit at
once. The same kernel serves prefill with larger blocks (the grouped GEMM of serving
engines, e.g. vLLM's fused_moe).

Pair p = token·k + j is token p // k's j-th choice. The first GEMM reads activations by
token (`a_div` = k) and writes pair rows; the second reads pair rows (`a_div` = 1), adds the
expert's bias and multiplies by the pair's routing weight, so a sum over k finishes the layer.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from infermeter.engine.kernels import _grid_sync, _launch

DECODE_BLOCK_M = 16  # the smallest tile of a tensor-core dot
PREFILL_BLOCK_M = 64


def capacity(pairs: int, experts: int, block_m: int) -> int:
    """Rows of the padded, expert-sorted layout: every pair plus each touched expert's
    padding (at most block_m − 1 rows, and at most min(E, pairs) experts are touched)."""
    rows = pairs + min(experts, pairs) * (block_m - 1)
    return triton.cdiv(rows, block_m) * block_m


def align(ids: Tensor, experts: int, block_m: int) -> tuple[Tensor, Tensor]:
    """ids [T, k] expert choices -> (rows [cap] int32, block_experts [cap / block_m] int32).

    rows[r] is the pair index in padded row r (T·k for padding); block_experts[i] is the
    expert of block i, or -1 past the last expert's run. No host sync, static shapes.
    """
    flat = ids.reshape(-1)
    pairs = flat.numel()
    cap = capacity(pairs, experts, block_m)
    device = flat.device
    counts = torch.zeros(experts, device=device, dtype=torch.long)
    counts.scatter_add_(0, flat, torch.ones_like(flat))
    padded = (counts + block_m - 1) // block_m * block_m
    ends = padded.cumsum(0)
    order = torch.argsort(flat, stable=True)
    chosen = flat[order]
    first = counts.cumsum(0) - counts  # first sorted position of each expert
    rank = torch.arange(pairs, device=device) - first[chosen]
    dest = (ends - padded)[chosen] + rank
    rows = torch.full((cap,), pairs, device=device, dtype=torch.int32)
    rows.scatter_(0, dest, order.to(torch.int32))
    starts = torch.arange(0, cap, block_m, device=device)
    owner = torch.searchsorted(ends, starts, right=True)
    block_experts = torch.where(owner < experts, owner, -1).to(torch.int32)
    return rows, block_experts


@triton.jit
def _grouped_gemm(
    A, W, Bias, Scale, Out, Rows, BlockExperts,
    pairs, N, K, a_div,
    stride_am, stride_we, stride_wn, stride_be, stride_om,
    HAS_BIAS: tl.constexpr, HAS_SCALE: tl.constexpr, PDL: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):  # fmt: skip
    _grid_sync(PDL)
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    expert = tl.load(BlockExperts + pid_m).to(tl.int64)
    if expert < 0:
        return
    rows = tl.load(Rows + pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    rmask = rows < pairs
    a_rows = rows // a_div
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = cols < N
    w_base = W + expert * stride_we + cols[:, None] * stride_wn
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        kmask = kk < K
        a = tl.load(
            A + a_rows[:, None] * stride_am + kk[None, :],
            mask=rmask[:, None] & kmask[None, :],
            other=0.0,
        )
        w = tl.load(w_base + kk[None, :], mask=nmask[:, None] & kmask[None, :], other=0.0)
        acc += tl.dot(a, tl.trans(w))
    if HAS_BIAS:
        bias = tl.load(Bias + expert * stride_be + cols, mask=nmask, other=0.0)
        acc += bias.to(tl.float32)[None, :]
    if HAS_SCALE:
        acc *= tl.load(Scale + rows, mask=rmask, other=0.0)[:, None]
    out = Out + rows[:, None] * stride_om + cols[None, :]
    tl.store(out, acc.to(Out.dtype.element_ty), mask=rmask[:, None] & nmask[None, :])


def grouped_linear(
    a: Tensor,
    w: Tensor,
    rows: Tensor,
    block_experts: Tensor,
    pairs: int,
    a_div: int,
    bias: Tensor | None = None,
    scale: Tensor | None = None,
) -> Tensor:
    """out[p] = (a[p // a_div] @ w[expert(p)].T + bias[expert(p)]) · scale[p] for every pair p.

    a [rows_a, K], w [E, N, K], bias [E, N], scale [pairs] float32 -> out [pairs, N] in
    a's dtype. `rows`/`block_experts` come from align(); the block size is theirs.
    """
    n, k = w.shape[1], w.shape[2]
    block_m = rows.numel() // block_experts.numel()
    out = torch.empty(pairs, n, device=a.device, dtype=a.dtype)
    decode = block_m == DECODE_BLOCK_M
    block_n, block_k = (64, 128) if decode else (128, 64)
    grid = (block_experts.numel(), triton.cdiv(n, block_n))
    _grouped_gemm[grid](
        a, w, bias if bias is not None else w, scale if scale is not None else w, out,
        rows, block_experts, pairs, n, k, a_div,
        a.stride(0), w.stride(0), w.stride(1), bias.stride(0) if bias is not None else 0,
        out.stride(0),
        HAS_BIAS=bias is not None, HAS_SCALE=scale is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=4 if decode else 8, num_stages=3, **_launch(a.device),
    )  # fmt: skip
    return out
