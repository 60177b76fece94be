"""Attention beyond plain causal SDPA: windows, sinks, soft-capping, and latent attention.

- `attend`: attention of queries [b, nq, s, d] over keys/values [b, nkv, t, d] with a boolean
  or additive mask, a custom softmax scale, soft-capped scores (Gemma-2: c·tanh(x/c)) and
  per-head sink logits (gpt-oss: one more softmax column whose value is zero). Plain masked
  cases go to SDPA; sinks and soft-capping to explicit float32 math (FlashAttention exposes
  neither), which materialises the [b, nq, s, t] scores.
- `window_mask`: causal attention limited to the last W positions (transformers'
  sliding_window semantics: key j is seen by query i when i − W < j <= i); `chunk_mask`:
  causal attention within aligned chunks of C positions (Llama-4: j <= i, j // C == i // C);
  `blocked_attend`: a prefill under either (or causal), in blocks of queries over the keys
  they can see.
- `LatentAttention`: DeepSeek's multi-head latent attention. Prefill expands the cached
  latent into per-head keys and values and attends as usual; a decode step uses the
  weight absorption of serving engines: the query's no-rope part is multiplied into the
  latent space by W_UK (from kv_b), scores are taken against the cached latent and rope key
  directly, the output is gathered in the latent space and multiplied out by W_UV, so a step
  reads the compressed cache (kv_lora + rope values per token) and never expands it.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infermeter.engine.layers import Norm, linear, param
from infermeter.spec.model import ModelSpec


def window_mask(queries: Tensor, keys: Tensor, window: int | None) -> Tensor:
    """Bool [len(queries), len(keys)]: True where query position i may see key position j."""
    rel = queries[:, None] - keys[None, :]
    keep = rel >= 0
    return keep if window is None else keep & (rel < window)


def chunk_mask(queries: Tensor, keys: Tensor, chunk: int) -> Tensor:
    """Bool [len(queries), len(keys)]: True where query position i may see key position j
    in chunked attention (transformers' create_chunked_causal_mask)."""
    same = (queries[:, None] // chunk) == (keys[None, :] // chunk)
    return (queries[:, None] >= keys[None, :]) & same


LOCAL_BLOCK = 1024  # blocked_attend's least queries a window's block (fewer launches)
# blocked_attend's scores a global block (b·nq·queries·keys) at most, but 16 queries a block
# at least: 1 GiB a float32 copy (the explicit path holds a few copies at once)
SCORE_BUDGET = 1 << 28


def blocked_attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    window: int | None,
    chunked: bool = False,
    scale: float | None = None,
    softcap: float | None = None,
    sinks: Tensor | None = None,
    block: int | None = None,
) -> Tensor:
    """Prefill attention in blocks of queries: q [b, nq, s, d], k/v [b, nkv, s, d] at
    positions 0 .. s − 1 -> [b, nq, s, dv]. Same semantics as `attend` over all s keys under
    the [s, s] mask of the layer: `window_mask` (a sliding window of `window` keys; causal
    with None) or, with `chunked`, `chunk_mask` (aligned chunks of `window` positions).

    A windowed layer's blocks are whole windows (at least `block` queries, default
    LOCAL_BLOCK) and attend only the keys they can see (their own chunks; or their own
    queries' and the W before them), so the work is about (B + W)·s scores, not s². A
    global layer's blocks (soft-capping or sinks: the explicit path) hold at most
    SCORE_BUDGET scores, where one [b, nq, s, s] score tensor would not fit (gpt-oss-20b at
    s = 32,768: 275 GB in float32). A block whose mask is plain causal (one chunk, or a
    first block within the window) goes to SDPA's is_causal (the flash kernel on CUDA)
    unless the layer soft-caps or has sinks.

    Why: SDPA with a boolean [s, s] mask runs the memory-efficient kernel over every tile,
    masked or not, with unaligned mask rows at odd s. Measured on an H200 (Llama-4 Scout
    cut to 8 layers, chunks of 8192, at 0321b60): a profile's PE knots (odd s) rose faster
    than linearly past the chunk, and prefills at even s ran faster than the knots below
    them (s = 13,281: 0.276 s; s = 13,854: 0.258 s), so the profile priced its validation
    queries 4.55% high on average, up to 17.9%."""
    b, nq, s = q.shape[0], q.shape[1], q.shape[2]
    chunked = chunked and window is not None  # a chunk is a window's (None: causal)
    if window is None:
        span = max(KEY_ALIGN, SCORE_BUDGET // (b * nq * s) // KEY_ALIGN * KEY_ALIGN)
    else:
        least = LOCAL_BLOCK if block is None else block
        span = window * max(1, -(-least // window))
    pos = torch.arange(s, device=q.device)
    plain = softcap is None and sinks is None
    outs = []
    for start in range(0, s, span):
        stop = min(start + span, s)
        # a window's first key for query `start` is start − W + 1; one more: aligned rows
        lo = 0 if window is None else start if chunked else max(0, start - window)
        qb, kb, vb = q[:, :, start:stop], k[:, :, lo:stop], v[:, :, lo:stop]
        if plain and lo == start and (window is None or stop - start <= window):
            gqa = nq != k.shape[1]  # causal within the block: the flash kernel
            outs.append(
                F.scaled_dot_product_attention(
                    qb, kb, vb, is_causal=True, enable_gqa=gqa, scale=scale
                )
            )
            continue
        seen = chunk_mask if chunked else window_mask
        mask = seen(pos[start:stop], pos[lo:stop], window)
        outs.append(attend(qb, kb, vb, mask, scale, softcap, sinks))
    return outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)


KEY_ALIGN = 16  # keys per score row, padded to a multiple of this (see _aligned_keys)


def _aligned_keys(
    k: Tensor, v: Tensor, mask: Tensor | None
) -> tuple[Tensor, Tensor, Tensor | None]:
    """Keys and values [b, nkv, t, d] padded with zeros to t' = a multiple of KEY_ALIGN, and
    the mask widened to t' with the padding masked out (False, or −inf when additive).

    Why: the explicit path's two matmuls take t as the row length of the scores and as the
    inner size of probabilities × values. With t odd, their rows are not 16-byte aligned and
    cuBLAS leaves its fastest tensor-core kernels. Measured on an H200 (bias_diagnosis.py,
    docs/benchmarks/parity_gemma-2-9b_before.md and parity_gemma-2-9b.md): a Gemma-2-9B
    prefill at an odd p took 12.5% longer than its even neighbours before, 0.7% after, so a
    profile's PE knots (odd sizes) read high and even-p queries were priced 4-12% high. The
    extra ≤ 15 columns score −inf and weigh 0."""
    t = k.shape[2]
    pad = -t % KEY_ALIGN
    if not pad:
        return k, v, mask
    k, v = F.pad(k, (0, 0, 0, pad)), F.pad(v, (0, 0, 0, pad))
    if mask is None:
        mask = torch.arange(t + pad, device=k.device) < t
    elif mask.dtype == torch.bool:
        mask = F.pad(mask, (0, pad), value=False)
    else:
        mask = F.pad(mask, (0, pad), value=-math.inf)
    return k, v, mask


def attend(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    mask: Tensor | None,
    scale: float | None = None,
    softcap: float | None = None,
    sinks: Tensor | None = None,
) -> Tensor:
    """q [b, nq, s, d], k [b, nkv, t, d], v [b, nkv, t, dv], mask broadcastable to
    [b, nq, s, t] (bool: True = attend; or additive) -> [b, nq, s, dv]. Grouped-query heads:
    query head i reads KV head i // (nq / nkv)."""
    nq, nkv = q.shape[1], k.shape[1]
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    if softcap is None and sinks is None:
        if mask is not None:  # rows of the mask 16-byte aligned (see _aligned_keys)
            k, v, mask = _aligned_keys(k, v, mask)
        if nq != nkv:  # SDPA kernels with a mask want equal head counts
            k, v = k.repeat_interleave(nq // nkv, 1), v.repeat_interleave(nq // nkv, 1)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
    b, s, t = q.shape[0], q.shape[2], k.shape[2]
    k, v, mask = _aligned_keys(k, v, mask)
    t = k.shape[2]
    group = nq // nkv
    qg = q.reshape(b, nkv, group * s, q.shape[-1])
    scores = torch.matmul(qg, k.transpose(-1, -2)).float().view(b, nq, s, t) * scale
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    if mask is not None:
        scores = scores.masked_fill(~mask, -math.inf) if mask.dtype == torch.bool else scores + mask
    if sinks is not None:
        sink = sinks.float().view(1, nq, 1, 1).expand(b, nq, s, 1)
        probs = torch.cat([scores, sink], dim=-1).softmax(-1)[..., :t]
    else:
        probs = scores.softmax(-1)
    out = torch.matmul(probs.to(v.dtype).view(b, nkv, group * s, t), v)
    return out.view(b, nq, s, v.shape[-1])


class LatentAttention(nn.Module):
    """MLA on one tensor-parallel rank: `heads` of the spec's query heads.

    Parameters (shapes [out, in]): w_a fuses the query projection (this rank's heads, or the
    replicated q_lora down-projection) with the replicated kv_a projection [kv_lora + rope, h];
    q_a_norm/wq_b (q_lora only); kv_a_norm; wkv_b [heads·(nope + v), kv_lora]; the output
    projection stays in the Block (its `wo`).
    """

    def __init__(
        self, spec: ModelSpec, heads: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        super().__init__()
        mla = spec.mla
        assert mla is not None
        kw = {"device": device, "dtype": dtype}
        h = spec.hidden_size
        self.heads, self.mla = heads, mla
        self.nope, self.rope, self.lora = mla.qk_nope_dim, mla.qk_rope_dim, mla.kv_lora_rank
        self.q_lora = mla.q_lora_rank
        self.scale = spec.attn_scale if spec.attn_scale is not None else mla.qk_head_dim**-0.5
        q_out = self.q_lora if self.q_lora is not None else heads * mla.qk_head_dim
        self.q_width = q_out
        self.w_a = param(q_out + mla.cache_dim, h, **kw)
        self.q_a_norm = Norm(spec, device, dtype, self.q_lora) if self.q_lora else None
        self.wq_b = param(heads * mla.qk_head_dim, self.q_lora, **kw) if self.q_lora else None
        self.kv_a_norm = Norm(spec, device, dtype, self.lora)
        self.wkv_b = param(heads * (self.nope + mla.v_head_dim), self.lora, **kw)

    def forward(self, x: Tensor, ctx: Any, cache: Tensor, fast: Any, rotate: Any) -> Tensor:
        """x [T, h] -> attention output [T, heads·v] (before the output projection).

        `rotate(t)` rotates t [b, s, n, rope] in place at the context's positions."""
        b, s, n = ctx.batch, ctx.length, self.heads
        y = linear(x, self.w_a, None, fast)
        q = y[:, : self.q_width]
        if self.q_a_norm is not None:
            assert self.wq_b is not None
            q = linear(self.q_a_norm(q, fast), self.wq_b, None, fast)
        q = q.reshape(b, s, n, self.nope + self.rope)
        latent = torch.cat(
            [self.kv_a_norm(y[:, self.q_width : self.q_width + self.lora], fast),
             y[:, self.q_width + self.lora :]], dim=-1,
        ).view(b, s, 1, self.lora + self.rope)  # fmt: skip
        rotate(q[..., self.nope :])
        rotate(latent[..., self.lora :])
        latent = latent.view(b, s, -1)
        if not ctx.decode:
            cache[:, :s] = latent
            return self._prefill(q, latent, ctx)
        cache.index_put_((ctx.rows, ctx.slots), latent[:, 0])
        return self._decode(q[:, 0], cache, ctx)

    def decode_fast(self, x: Tensor, ctx: Any, cache: Tensor, fast: Any) -> Tensor:
        """The decode step with the Triton kernels (mla_kernels.py): the same arithmetic as
        forward() + _decode() in about nine launches."""
        mk, b, n, v = ctx.mla_fast, ctx.batch, self.heads, self.mla.v_head_dim
        y = linear(x, self.w_a, None, fast)
        q = y[:, : self.q_width]
        if self.q_a_norm is not None:
            assert self.wq_b is not None
            q = linear(self.q_a_norm(q, fast), self.wq_b, None, fast)
        q = q.view(b, n, self.nope + self.rope)
        norm = self.kv_a_norm
        mk.latent_store(
            y, q, norm.weight, norm.eps, cache, ctx.slots, ctx.slots, ctx.cos, ctx.sin,
            self.q_width, self.nope,
        )  # fmt: skip
        w = self.wkv_b.view(n, self.nope + v, self.lora)
        q_lat = torch.bmm(q[..., : self.nope].transpose(0, 1), w[:, : self.nope])
        out = mk.latent_attention(
            q_lat.transpose(0, 1), q[..., self.nope :], cache, ctx.seqlens, self.scale
        )
        out = torch.bmm(out.transpose(0, 1), w[:, self.nope :].transpose(1, 2))  # [n, b, v]
        return out.transpose(0, 1).reshape(b, n * v)

    def _prefill(self, q: Tensor, latent: Tensor, ctx: Any) -> Tensor:
        b, s, n, v = ctx.batch, ctx.length, self.heads, self.mla.v_head_dim
        kv = F.linear(latent[..., : self.lora], self.wkv_b).view(b, s, n, self.nope + v)
        k_pe = latent[..., self.lora :][:, :, None].expand(b, s, n, self.rope)
        k = torch.cat([kv[..., : self.nope], k_pe], dim=-1).transpose(1, 2)
        values = kv[..., self.nope :].transpose(1, 2)
        o = F.scaled_dot_product_attention(
            q.transpose(1, 2), k, values, is_causal=True, scale=self.scale
        )
        return o.transpose(1, 2).reshape(b * s, n * v)

    def _decode(self, q: Tensor, cache: Tensor, ctx: Any) -> Tensor:
        """q [b, n, nope + rope] against the latent cache [b, L, lora + rope] (absorbed)."""
        b, n, v = q.shape[0], self.heads, self.mla.v_head_dim
        w = self.wkv_b.view(n, self.nope + v, self.lora)
        q_lat = torch.bmm(q[..., : self.nope].transpose(0, 1), w[:, : self.nope])  # [n, b, lora]
        query = torch.cat([q_lat.transpose(0, 1), q[..., self.nope :]], dim=-1)  # [b, n, C]
        span = ctx.span if ctx.mask is not None else cache.shape[1]
        keys = cache[:, :span]
        scores = torch.bmm(query, keys.transpose(1, 2)).float() * self.scale  # [b, n, span]
        if ctx.mask is not None:  # sdpa mode: the additive [b, 1, 1, span] bias
            scores = scores + ctx.mask.view(b, 1, span)
        else:  # triton/flash mode: one graph for every position, keys [0, pos] valid
            valid = torch.arange(span, device=q.device)[None, :] < ctx.seqlens[:, None]
            scores = scores.masked_fill(~valid[:, None, :], -math.inf)
        probs = scores.softmax(-1).to(cache.dtype)
        out_lat = torch.bmm(probs, keys[..., : self.lora])  # [b, n, lora]
        out = torch.bmm(out_lat.transpose(0, 1), w[:, self.nope :].transpose(1, 2))  # [n, b, v]
        return out.transpose(0, 1).reshape(b, n * v)
