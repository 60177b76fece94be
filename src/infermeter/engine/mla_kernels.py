"""Triton decode kernels for multi-head latent attention (CUDA; lazily imported, self-checked).

- latent_store: per sequence, RMS-normalises the new latent c (kv_lora values of the fused
  projection's output), rotates the shared rope key and writes both to the cache slot, and
  rotates every head's rope query in place; one launch where torch takes about ten.
- latent_attention: flash-decoding in the latent space. Each program takes up to 16 heads of
  one sequence and a chunk of its cached tokens, scores q_lat·c + q_pe·k_pe (the absorbed
  query against the cache as stored, never expanded to per-head keys), and accumulates
  softmax-weighted latents; kernels._attn_combine merges the chunks as for plain attention.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from infermeter.engine.kernels import (
    _attn_combine,
    _grid_sync,
    _launch,
    _online_softmax,
    merge_pass,
    split_plan,
)

LATENT_BLOCK_N = 32  # cached tokens per step (divides split_plan's chunks of 64)
HEADS = 16  # heads per program (the smallest tile of a tensor-core dot)


@triton.jit
def _latent_store(
    Y, Q, NormW, Cache, Pos, Slots, Cos, Sin,
    stride_yb, stride_qb, stride_qh, stride_cb, stride_cn, stride_t, eps,
    QW: tl.constexpr, LORA: tl.constexpr, BLOCK_L: tl.constexpr, NOPE: tl.constexpr,
    ROPE: tl.constexpr, HALF: tl.constexpr, NH: tl.constexpr, PDL: tl.constexpr,
):  # fmt: skip
    _grid_sync(PDL)
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    pos = tl.load(Pos + b)
    i = tl.arange(0, HALF)
    imask = i < ROPE // 2
    c = tl.load(Cos + pos * stride_t + i, mask=imask, other=0.0)
    s = tl.load(Sin + pos * stride_t + i, mask=imask, other=0.0)
    if h < NH:  # a query head: rotate its rope part in place
        row = Q + b * stride_qb + h * stride_qh + NOPE
        x0 = tl.load(row + 2 * i, mask=imask, other=0.0).to(tl.float32)
        x1 = tl.load(row + 2 * i + 1, mask=imask, other=0.0).to(tl.float32)
        tl.store(row + 2 * i, (x0 * c - x1 * s).to(Q.dtype.element_ty), mask=imask)
        tl.store(row + 2 * i + 1, (x1 * c + x0 * s).to(Q.dtype.element_ty), mask=imask)
    else:  # the latent: normalise c, rotate the shared key, write both at the slot
        slot = Cache + b * stride_cb + tl.load(Slots + b) * stride_cn
        row = Y + b * stride_yb + QW
        dd = tl.arange(0, BLOCK_L)
        dmask = dd < LORA
        x = tl.load(row + dd, mask=dmask, other=0.0).to(tl.float32)
        w = tl.load(NormW + dd, mask=dmask, other=0.0).to(tl.float32)
        normed = (x * tl.rsqrt(tl.sum(x * x, 0) / LORA + eps) * w).to(Cache.dtype.element_ty)
        tl.store(slot + dd, normed, mask=dmask)
        k0 = tl.load(row + LORA + 2 * i, mask=imask, other=0.0).to(tl.float32)
        k1 = tl.load(row + LORA + 2 * i + 1, mask=imask, other=0.0).to(tl.float32)
        tl.store(slot + LORA + 2 * i, (k0 * c - k1 * s).to(Cache.dtype.element_ty), mask=imask)
        tl.store(slot + LORA + 2 * i + 1, (k1 * c + k0 * s).to(Cache.dtype.element_ty), mask=imask)


def latent_store(
    y: Tensor,
    q: Tensor,
    norm_weight: Tensor,
    eps: float,
    cache: Tensor,
    pos: Tensor,
    slots: Tensor,
    cos: Tensor,
    sin: Tensor,
    q_width: int,
    nope: int,
) -> None:
    """y [b, q_width + lora + rope] (the fused projection; latent from column q_width),
    q [b, heads, nope + rope] (rotated in place), cache [b, L, lora + rope] (written at
    slots), rotations at positions pos from cos/sin [max_context, rope/2]."""
    b, heads = q.shape[0], q.shape[1]
    lora = cache.shape[-1] - 2 * cos.shape[1]
    rope = 2 * cos.shape[1]
    _latent_store[(b, heads + 1)](
        y, q, norm_weight, cache, pos, slots, cos, sin,
        y.stride(0), q.stride(0), q.stride(1), cache.stride(0), cache.stride(1), cos.stride(0),
        eps, QW=q_width, LORA=lora, BLOCK_L=triton.next_power_of_2(lora), NOPE=nope,
        ROPE=rope, HALF=triton.next_power_of_2(rope // 2), NH=heads, num_warps=4,
        **_launch(q.device),
    )  # fmt: skip


@triton.jit
def _latent_split(
    QL, QP, Cache, Lens, Part, Lse,
    stride_lb, stride_lh, stride_pb, stride_ph, stride_cb, stride_cn,
    stride_ob, stride_oh, stride_os, stride_eb, stride_eh,
    nh, chunk, scale,
    LORA: tl.constexpr, ROPE: tl.constexpr, G: tl.constexpr, BLOCK_N: tl.constexpr,
    PDL: tl.constexpr,
):  # fmt: skip
    _grid_sync(PDL)
    bg = tl.program_id(0)
    split = tl.program_id(1)
    groups = tl.cdiv(nh, G)
    b = (bg // groups).to(tl.int64)
    heads = (bg % groups) * G + tl.arange(0, G)
    hmask = heads < nh
    length = tl.load(Lens + b)
    start = split * chunk
    end = tl.minimum(start + chunk, length)
    dl = tl.arange(0, LORA)
    dr = tl.arange(0, ROPE)
    q_lat = tl.load(QL + b * stride_lb + heads[:, None] * stride_lh + dl[None, :],
                    mask=hmask[:, None], other=0.0)  # fmt: skip
    q_pe = tl.load(QP + b * stride_pb + heads[:, None] * stride_ph + dr[None, :],
                   mask=hmask[:, None], other=0.0)  # fmt: skip
    m = tl.full([G], float("-inf"), dtype=tl.float32)
    denom = tl.zeros([G], dtype=tl.float32)
    acc = tl.zeros([G, LORA], dtype=tl.float32)
    base = Cache + b * stride_cb
    for n0 in range(start, end, BLOCK_N):
        n = n0 + tl.arange(0, BLOCK_N)
        nmask = n < end
        c = tl.load(base + n[:, None] * stride_cn + dl[None, :], mask=nmask[:, None], other=0.0)
        pe = tl.load(base + n[:, None] * stride_cn + LORA + dr[None, :], mask=nmask[:, None],
                     other=0.0)  # fmt: skip
        s = (tl.dot(q_lat, tl.trans(c)) + tl.dot(q_pe, tl.trans(pe))) * scale
        m, denom, acc = _online_softmax(
            tl.where(nmask[None, :], s, float("-inf")), c, m, denom, acc
        )
    out = tl.where(denom[:, None] > 0, acc / denom[:, None], 0.0)
    o_ptr = Part + b * stride_ob + heads[:, None] * stride_oh + split * stride_os + dl[None, :]
    tl.store(o_ptr, out, mask=hmask[:, None])
    tl.store(Lse + b * stride_eb + heads * stride_eh + split, m + tl.log(denom), mask=hmask)


def latent_attention(
    q_lat: Tensor, q_pe: Tensor, cache: Tensor, lengths: Tensor, scale: float
) -> Tensor:
    """q_lat [b, n, lora], q_pe [b, n, rope] (rows may be strided), cache [b, L, lora + rope],
    lengths [b] int32 -> [b, n, lora]: softmax over cached tokens [0, lengths[i]) of
    scale·(q_lat·c + q_pe·k_pe), applied to the latents c. lora and rope: powers of two."""
    b, n, lora = q_lat.shape
    rope, length = q_pe.shape[2], cache.shape[1]
    groups = triton.cdiv(n, HEADS)
    splits, chunk = split_plan(length, b * groups, q_lat.device)
    part = torch.empty(b, n, splits, lora, device=q_lat.device, dtype=torch.float32)
    lse = torch.empty(b, n, splits, device=q_lat.device, dtype=torch.float32)
    launch = _launch(q_lat.device)
    _latent_split[(b * groups, splits)](
        q_lat, q_pe, cache, lengths, part, lse,
        q_lat.stride(0), q_lat.stride(1), q_pe.stride(0), q_pe.stride(1),
        cache.stride(0), cache.stride(1), part.stride(0), part.stride(1), part.stride(2),
        lse.stride(0), lse.stride(1), n, chunk, scale,
        LORA=lora, ROPE=rope, G=HEADS, BLOCK_N=LATENT_BLOCK_N, num_warps=4, **launch,
    )  # fmt: skip
    out = torch.empty(b, n, lora, device=q_lat.device, dtype=q_lat.dtype)
    _attn_combine[(b * n,)](
        part, lse, out, lse, n, splits,
        part.stride(0), part.stride(1), part.stride(2), lse.stride(0), lse.stride(1),
        out.stride(0), out.stride(1),
        BLOCK_S=triton.next_power_of_2(splits), D=lora, BLOCK_D=lora, num_warps=4,
        SB=merge_pass(1, splits, lora), **launch,
    )  # fmt: skip
    return out
