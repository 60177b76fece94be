"""The decoder: any ModelSpec, one tensor-parallel rank, fused weights, a static KV cache.

Hidden states are 2-D [tokens, hidden] throughout, so every projection is one GEMM. Per layer:
one fused QKV matmul, one fused gate+up (or FFN input) matmul, and the two row-parallel
output projections, which fold the residual add into the GEMM (addmm) on rank 0.

Rotary embeddings use the interleaved-pair convention (GPT-J, Meta LLaMA): pair (2i, 2i+1) of
the first `rotary_fraction` of each head is rotated, done as one complex multiply. Checkpoints
in Hugging Face's rotate-half layout are permuted at load time (weights.py).

KV cache: one tensor [layers, batch, max_len, 2, kv_heads, head_dim]; sequences are
right-padded, so sequence i's keys are slots [0, length_i) and a decode step writes slot pos_i.
Decode attention is one of
- "triton": our split-K flash-decoding kernels (kernels.py) with fused rotary + cache write,
  RMSNorm and SiLU·mul, on CUDA in 16-bit types when Triton is present (self-checked);
- "flash": FlashAttention's varlen kernel with `seqused_k` = pos+1, which reads exactly the
  valid keys of each sequence, handles GQA natively, and takes the lengths as a device tensor
  (CUDA-graph safe, one graph serves every position); or
- "sdpa": scaled_dot_product_attention over the first `span` slots with an additive mask
  (CPU, ALiBi, float32). GQA is folded into the query length (q [b, kv, group, d]) so no
  backend needs grouped-query support and K/V are never copied.

Newer layouts (issue 20), each switched on by the spec and absent from a dense spec's path:
- sliding-window layers keep a ring buffer of min(W, cache length) slots: position p is
  written at slot p mod R and a step attends to the min(p + 1, R) filled slots (attention
  does not depend on the order of its keys, rotary positions are already in them), so the
  cache and the bytes a step reads follow the window; prefill masks to the window;
- attention sinks and soft-capped scores (decode: in the Triton kernels, constexpr-gated;
  prefill and sdpa decode: attention.attend's float32 math), a custom softmax scale, qk-norm
  per head or over the whole projection (all-reduced under tensor parallelism), post- and
  sandwich norms, an embedding multiplier, soft-capped logits, per-layer rotary bases;
- MoE FFNs (moe.py) and multi-head latent attention (attention.LatentAttention), whose cache
  is one [b, L, kv_lora + rope] latent per layer;
- Llama-4's chunked layers: a ring of W slots like a window's, but a step at position p attends
  to the (p mod W) + 1 slots its chunk has filled (slots 0 .. p mod W, since the chunk starts
  at slot 0) and prefill masks to the chunk; its layers without rotary positions
  (`nope_layers`), whose queries are scaled by position (`attn_temperature`); and its
  weightless per-head qk-norm ("l2"), applied before the rotation here (after it in
  transformers: a rotation keeps the norm, so only rounding differs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infermeter.engine.attention import LatentAttention, attend, blocked_attend
from infermeter.engine.layers import Norm, activation, fused_norm, linear, param
from infermeter.engine.moe import MoELayer
from infermeter.engine.parallel import Comm, Layout
from infermeter.engine.rope import rotations
from infermeter.spec.model import ModelSpec


@dataclass(frozen=True)
class Arch:
    """The spec's layout switches, resolved once: per-part biases fall back to `spec.bias`."""

    qkv_bias: bool
    out_bias: bool
    mlp_bias: bool
    lm_head_bias: bool
    embedding_norm: bool  # BLOOM: a norm right after the token embedding
    ffn_norm: bool  # a separate norm before the FFN (sequential blocks, or NeoX's two norms)
    position_offset: int  # OPT: learned position p lives in row p + offset
    pre_norms: bool = True  # a norm before attention (and the FFN); OLMo-2 has none
    post_norms: bool = False  # a norm on each sublayer's output (OLMo-2, Gemma's sandwich)

    @classmethod
    def of(cls, spec: ModelSpec) -> Arch:
        """The spec's switches resolved: per-part biases (None follows `bias`), the FFN's own
        norm (sequential blocks, or NeoX's two norms; none with post-norms), norm
        placement and OPT's position offset."""

        def either(value: bool | None) -> bool:
            return spec.bias if value is None else bool(value)

        two_norms = spec.parallel_norms == 2
        placement = spec.norm_placement
        return cls(
            qkv_bias=either(spec.qkv_bias),
            out_bias=either(spec.out_bias),
            mlp_bias=either(spec.mlp_bias),
            lm_head_bias=bool(spec.lm_head_bias),
            embedding_norm=bool(spec.embedding_norm),
            ffn_norm=(not spec.parallel_attn_ffn or two_norms) and placement != "post",
            position_offset=int(spec.position_offset),
            pre_norms=placement != "post",
            post_norms=placement != "pre",
        )


def rotary_dim(spec: ModelSpec) -> int:
    """How many of a head's dimensions are rotated: 0 without rotary positions, MLA's rotary
    part, else rotary_fraction of the head width rounded down to even."""
    if spec.position != "rotary":
        return 0
    if spec.mla is not None:
        return spec.mla.qk_rope_dim
    return int(spec.dim_head * spec.rotary_fraction) // 2 * 2


def alibi_slopes(num_heads: int) -> Tensor:
    """BLOOM's slopes: a geometric series, interleaved extras when n is not a power of two."""
    closest = 2 ** math.floor(math.log2(num_heads))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = [base ** (i + 1) for i in range(closest)]
    if closest != num_heads:
        extra = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        slopes += [extra ** (2 * i + 1) for i in range(num_heads - closest)]
    return torch.tensor(slopes, dtype=torch.float32)


@dataclass
class Context:
    """Per-forward tensors shared by all layers (built once, not once per layer)."""

    batch: int
    length: int  # tokens per sequence in this forward (prompt length, or 1 for decode)
    positions: Tensor  # [b|1, s] rows of the learned position table (position + offset)
    freqs: Tensor | None = None  # [b|1, s, 1, rot/2] complex rotations
    mask: Tensor | None = None  # additive attention bias; None with causal prefill / flash
    decode: bool = False
    slots: Tensor | None = None  # decode: [b] cache slot written by each sequence
    rows: Tensor | None = None  # decode: arange(b), the batch index paired with `slots`
    span: int = 0  # sdpa decode: keys attended
    seqlens: Tensor | None = None  # flash decode: [b] int32 valid keys per sequence
    cu_q: Tensor | None = None  # flash decode: [b+1] int32 query offsets 0, 1, ..., b
    cu_k: Tensor | None = None  # flash decode: [b+1] int32 key offsets 0, L, ..., b·L
    fast: Any = None  # triton decode: the kernels module
    cos: Tensor | None = None  # triton decode: [max_context, rot/2] float32 tables
    sin: Tensor | None = None
    slopes: Tensor | None = None  # triton decode: this rank's ALiBi slopes
    freqs_local: Tensor | None = None  # rotations of the sliding layers' own base (Gemma-3)
    cos_local: Tensor | None = None
    sin_local: Tensor | None = None
    rings: dict[int, Ring] | None = None  # ring length -> its slots/masks (windowed layers)
    mla_fast: Any = None  # triton decode of an MLA model: the mla_kernels module
    q_temp: Tensor | None = None  # [T] float32 query scale of the NoPE layers (Llama-4)
    flex: Any = None  # prefill of soft-capped or sink layers: a flex.FlexPrefill


@dataclass
class Ring:
    """What a windowed layer with a ring buffer of `size` slots needs in one forward."""

    size: int
    slots: Tensor | None = None  # decode: [b] slot pos % size
    seqlens: Tensor | None = None  # decode: [b] int32 slots attended: min(pos + 1, size)
    # (a chunked layer's: pos % size + 1)
    mask: Tensor | None = None  # sdpa decode: additive [b, 1, 1, size]
    cu_k: Tensor | None = None  # flash decode: [b+1] int32 key offsets 0, size, ...
    rows: Tensor | None = None  # prefill: [b, size] batch index ...
    src: Tensor | None = None  # ... position read from the prompt ...
    dst: Tensor | None = None  # ... and slot written (src % size)


# positions of the rotary tables a Decoder builds at first; allocate_cache grows them
ROTARY_POSITIONS = 32768


class Block(nn.Module):
    """One transformer layer on this rank's tensor-parallel slice: norms, attention (standard,
    windowed or MLA) with its KV-cache writes, and a dense or MoE FFN, sequential or
    parallel (GPT-J, NeoX)."""

    def __init__(
        self,
        spec: ModelSpec,
        lay: Layout,
        comm: Comm,
        device: torch.device,
        dtype: torch.dtype,
        index: int = 0,
    ) -> None:
        super().__init__()
        h, d = spec.hidden_size, spec.dim_head
        self.nq, self.nkv, self.d, self.rot = lay.q_heads, lay.kv_heads, d, rotary_dim(spec)
        self.ffn_kind, self.ffn = spec.ffn_kind, lay.ffn
        self.parallel = spec.parallel_attn_ffn
        self.comm = comm
        self.lead = comm.rank == 0  # adds the residual and the row-parallel biases
        kw = {"device": device, "dtype": dtype}
        arch = Arch.of(spec)
        self.extra = spec.extra
        self.window = spec.layer_window(index)
        self.local = self.window is not None and spec.local_rope_theta is not None
        self.chunked = self.window is not None and spec.chunked_attention
        self.rotary = spec.layer_rotary(index)
        self.scale = spec.attn_scale
        self.softcap = spec.attn_softcap
        # Llama-4: the weightless qk-norm ("l2") is the per-head norm with weights of ones, on
        # the rotary layers only; the query temperature is on the others
        self.qk_norm = spec.qk_norm
        if spec.qk_norm == "l2":
            self.qk_norm = "head" if self.rotary else "none"
        nope = spec.position == "rotary" and not self.rotary
        self.temperature = nope and spec.attn_temperature is not None
        self._eps = spec.norm_eps
        # qk_norm "full": widths of the whole (unsharded) q and k, and how many ranks hold
        # each KV head (replicated when there are fewer KV heads than ranks)
        self.full_widths = (spec.num_heads * d, spec.kv_heads * d)
        self.kv_copies = max(1, lay.tp // spec.kv_heads)
        self.attn_norm = Norm(spec, device, dtype) if arch.pre_norms else None
        self.ffn_norm = Norm(spec, device, dtype) if arch.ffn_norm else None
        self.post_attn_norm = Norm(spec, device, dtype) if arch.post_norms else None
        self.post_ffn_norm = Norm(spec, device, dtype) if arch.post_norms else None
        self.mla = LatentAttention(spec, lay.q_heads, device, dtype) if spec_mla(spec) else None
        v_dim = spec.mla.v_head_dim if self.mla is not None else d
        if self.mla is None:
            qkv = (self.nq + 2 * self.nkv) * d
            self.wqkv = param(qkv, h, **kw)
            self.bqkv = param(qkv, **kw) if arch.qkv_bias else None
        self.wo = param(h, self.nq * v_dim, **kw)
        self.bo = param(h, **kw) if arch.out_bias else None
        self.q_norm = self.k_norm = None
        if self.qk_norm == "head" and spec.qk_norm == "l2":  # ones: not parameters, not loaded
            self.q_norm = self.k_norm = torch.ones(d, **kw)
        elif self.qk_norm == "head":
            self.q_norm, self.k_norm = param(d, **kw), param(d, **kw)
        elif self.qk_norm == "full":
            self.q_norm, self.k_norm = param(self.nq * d, **kw), param(self.nkv * d, **kw)
        self.sinks = param(self.nq, **kw) if spec.attention_sinks else None
        self.moe = None
        if spec.moe is not None and spec.is_moe_layer(index):
            self.moe = MoELayer(spec, lay.expert_ffn, lay.shared_ffn, self.lead, device, dtype)
            return
        ffn_in = (2 if spec.gated else 1) * lay.ffn
        self.w_in = param(ffn_in, h, **kw)  # gated: [gate; up] of this rank
        self.b_in = param(ffn_in, **kw) if arch.mlp_bias else None
        self.w_down = param(h, lay.ffn, **kw)
        self.b_down = param(h, **kw) if arch.mlp_bias else None

    def _row(self, x: Tensor, w: Tensor, b: Tensor | None, acc: Tensor | None, fast: Any) -> Tensor:
        """acc + x @ w.T (+ b on the lead rank): the residual add rides in the GEMM epilogue."""
        b = b if self.lead else None
        if fast is not None and x.shape[0] <= fast.SMALL_M:
            return fast.small_linear(x, w, b, acc)
        y = torch.addmm(acc, x, w.t()) if acc is not None else torch.mm(x, w.t())
        if b is not None:
            y += b
        return y

    def _ffn_hidden(self, x: Tensor, fast: Any = None, norm: Norm | None = None) -> Tensor:
        """The FFN's hidden activations of norm(x) (`norm`: x's pre-norm, not yet applied);
        on the Triton decode path a gated FFN's activation rides in the GEMV's epilogue."""
        limit, alpha = self.extra.get("swiglu_limit", 7.0), self.extra.get("swiglu_alpha", 1.702)
        gated = self.ffn_kind in ("swiglu", "geglu", "clamped_swiglu")
        if fast is not None and gated and x.shape[0] <= fast.SMALL_M:
            if norm is not None and fused_norm(norm, x, fast):
                pre: tuple[Tensor, float] | None = (norm.weight, norm.eps)
            else:
                pre, x = None, (x if norm is None else norm(x, fast))
            return fast.glu_linear(
                x, self.w_in, self.b_in, self.ffn_kind, self.ffn, pre, limit, alpha
            )
        y = linear(x, self.w_in, self.b_in, fast, norm)
        if self.ffn_kind == "swiglu" and fast is not None:
            return fast.silu_mul(y, self.ffn)
        if self.ffn_kind == "swiglu":
            gate, up = y.split(self.ffn, dim=-1)
            return F.silu(gate).mul_(up)
        if self.ffn_kind == "relu":
            return F.relu_(y)
        if self.ffn_kind == "gelu_exact":  # Falcon: the erf GELU
            return F.gelu(y)
        if self.ffn_kind in ("geglu", "clamped_swiglu"):
            if fast is not None:
                return fast.gated_act(y, self.ffn, self.ffn_kind, limit, alpha)
            return activation(y, self.ffn_kind, self.ffn, self.extra)
        return F.gelu(y, approximate="tanh")  # GPT-2/GPT-J/BLOOM's "gelu_new"

    def _ffn_out(
        self, x: Tensor, residual: Tensor | None, fast: Any, norm: Norm | None = None
    ) -> Tensor:
        """This rank's FFN output (+ residual) of norm(x): dense or mixture of experts."""
        if self.moe is not None:
            return self.moe(x, residual, fast, norm)
        hidden = self._ffn_hidden(x, fast, norm)
        return self._row(hidden, self.w_down, self.b_down, residual, fast)

    def _freqs(self, ctx: Context) -> Tensor | None:
        return ctx.freqs_local if self.local else ctx.freqs

    def _rotate(self, qkv: Tensor, ctx: Context) -> None:
        """Rotate the first `rot` dims of every Q and K head in place (interleaved pairs)."""
        x = qkv.view(ctx.batch, ctx.length, -1, self.d)[:, :, : self.nq + self.nkv, : self.rot]
        xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
        x.copy_(torch.view_as_real(xc * self._freqs(ctx)).flatten(-2))

    def _rotate_part(self, x: Tensor, ctx: Context) -> None:
        """Rotate x [b, s, n, rot] in place (MLA's rope parts)."""
        xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
        x.copy_(torch.view_as_real(xc * self._freqs(ctx)).flatten(-2))

    def _norm_qk(self, qkv: Tensor, fast: Any = None) -> None:
        """RMSNorm of the query and key heads in place (qk-norm), before the rotation."""
        nq, nkv, eps = self.nq, self.nkv, self._eps
        assert self.q_norm is not None and self.k_norm is not None
        q, k = qkv[:, :nq], qkv[:, nq : nq + nkv]
        if self.qk_norm == "head" and fast is not None:
            fast.qk_norm(qkv, self.q_norm, self.k_norm, eps, nq, nkv)
            return
        if self.qk_norm == "head":
            q.copy_(F.rms_norm(q, (self.d,), self.q_norm, eps))
            k.copy_(F.rms_norm(k, (self.d,), self.k_norm, eps))
            return
        # the whole projection (OLMo-2): mean square over every rank's heads
        t = qkv.shape[0]
        qf, kf = q.reshape(t, -1).float(), k.reshape(t, -1).float()
        sums = torch.stack([qf.square().sum(-1), kf.square().sum(-1)], dim=-1)
        if self.comm.size > 1:
            sums = self.comm.all_reduce(sums)
            sums[:, 1] /= self.kv_copies
        width_q, width_k = self.full_widths
        inv = torch.rsqrt(sums / sums.new_tensor([width_q, width_k]) + eps)
        q.copy_((qf * inv[:, :1]).view_as(q).to(q.dtype) * self.q_norm.view(nq, self.d))
        k.copy_((kf * inv[:, 1:]).view_as(k).to(k.dtype) * self.k_norm.view(nkv, self.d))

    def _attend(self, qkv: Tensor, ctx: Context, cache: Tensor, qk_norm: bool = False) -> Tensor:
        """Attention of qkv [T, heads, d] over the cache -> [T, nq·d]; `qk_norm`: the decode
        step's rope_store applies the per-head qk-norm (not yet applied)."""
        b, s, nq, nkv, d = ctx.batch, ctx.length, self.nq, self.nkv, self.d
        q = qkv[:, :nq]
        kv = qkv[:, nq:].view(b, s, 2, nkv, d)
        plain = self.window is None and self.sinks is None and self.softcap is None
        if not ctx.decode:
            self._store_prompt(kv, ctx, cache)
            q = q.view(b, s, nq, d).transpose(1, 2)
            k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
            if not plain:  # windows or chunks; soft-capping or sinks: blocks of queries
                extras = (self.scale, self.softcap, self.sinks)
                capped_or_sinks = self.softcap is not None or self.sinks is not None
                fused = ctx.flex is not None and capped_or_sinks  # flex: one fused kernel
                attend_all = ctx.flex if fused else blocked_attend
                o = attend_all(q, k, v, self.window, self.chunked, *extras)
            elif ctx.mask is None:  # plain causal: the flash kernel on CUDA
                o = F.scaled_dot_product_attention(
                    q, k, v, is_causal=True, enable_gqa=nq != nkv, scale=self.scale
                )
            else:  # ALiBi bias: memory-efficient kernel, which wants equal head counts
                if nq != nkv:
                    k, v = k.repeat_interleave(nq // nkv, 1), v.repeat_interleave(nq // nkv, 1)
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.mask)
            return o.transpose(1, 2).reshape(b * s, nq * d)
        ring = self._ring(ctx, cache)
        if ctx.fast is not None:  # rotary + cache write in one kernel, then flash-decoding
            cos, sin = (ctx.cos_local, ctx.sin_local) if self.local else (ctx.cos, ctx.sin)
            slots = ring.slots if ring is not None else None
            norms = (self.q_norm, self.k_norm, self._eps) if qk_norm else None
            if not self.rotary:  # NoPE (Llama-4): the cache write alone
                cos = sin = None
            ctx.fast.rope_store(qkv, cache, ctx.slots, cos, sin, nq, slots, norms)
            lengths = ring.seqlens if ring is not None else ctx.seqlens
            if plain and self.scale is None:
                o = ctx.fast.decode_attention(q, cache, lengths, ctx.slopes)
            else:
                o = ctx.fast.decode_attention(
                    q, cache, lengths, ctx.slopes, self.scale, self.softcap, self.sinks
                )
            return o.view(b, nq * d)
        # Decode: write this step's K/V at each sequence's slot, then attend over the cache.
        slots = ring.slots if ring is not None else ctx.slots
        cache.index_put_((ctx.rows, slots), kv.view(b, 2, nkv, d))
        if ctx.seqlens is not None:
            length = cache.shape[1]
            k = cache[:, :, 0].view(b * length, nkv, d)
            v = cache[:, :, 1].view(b * length, nkv, d)
            if ring is not None:
                o = flash_varlen(q, k, v, ctx.cu_q, ring.cu_k, ring.seqlens, length, self.scale)
            else:
                o = flash_varlen(q, k, v, ctx.cu_q, ctx.cu_k, ctx.seqlens, length, self.scale)
            return o.reshape(b, nq * d)
        span = ring.size if ring is not None else ctx.span
        k = cache[:, :span, 0].transpose(1, 2)  # [b, kv, span, d]
        v = cache[:, :span, 1].transpose(1, 2)
        mask = ring.mask if ring is not None else ctx.mask
        if mask is not None and mask.shape[1] > 1:  # per-head ALiBi bias
            mask = mask.view(b, nkv, nq // nkv, -1)
        if not plain:
            o = attend(q.view(b, nq, 1, d), k, v, mask, self.scale, self.softcap, self.sinks)
            return o.reshape(b, nq * d)
        o = F.scaled_dot_product_attention(
            q.reshape(b, nkv, nq // nkv, d), k, v, attn_mask=mask, scale=self.scale
        )
        return o.reshape(b, nq * d)

    def _ring(self, ctx: Context, cache: Tensor) -> Ring | None:
        """The ring buffer data of this layer, when its cache is shorter than the context."""
        if self.window is None or ctx.rings is None:
            return None
        return ctx.rings.get(cache.shape[1])

    def _store_prompt(self, kv: Tensor, ctx: Context, cache: Tensor) -> None:
        """Write the prompt's K/V: slots [0, s), or, for a ring shorter than the prompt, the
        last `size` positions of each sequence at their slots (position mod size)."""
        s = ctx.length
        ring = ctx.rings.get(cache.shape[1]) if ctx.rings is not None else None
        if ring is None or ring.size >= s:
            cache[:, :s] = kv
            return
        cache[ring.rows, ring.dst] = kv[ring.rows, ring.src]

    def _self_attention(
        self, h: Tensor, ctx: Context, cache: Tensor, norm: Norm | None = None
    ) -> Tensor:
        """Attention output [T, heads·v] before the output projection, of norm(h) (`norm`:
        h's pre-norm, not yet applied, the QKV GEMV applies it; not with latent attention)."""
        fast = ctx.fast
        if self.mla is not None:
            assert norm is None
            if ctx.mla_fast is not None:
                return self.mla.decode_fast(h, ctx, cache, fast)
            return self.mla(h, ctx, cache, fast, lambda t: self._rotate_part(t, ctx))
        qkv = linear(h, self.wqkv, self.bqkv, fast, norm).view(h.shape[0], -1, self.d)
        # per-head qk-norm in the decode step's rotary kernel (rope_store), one launch fewer
        in_rope = self.qk_norm == "head" and fast is not None and fast.ROPE_QK_NORM
        if self.q_norm is not None and not in_rope:
            self._norm_qk(qkv, fast)
        if self.temperature:  # Llama-4's NoPE layers: queries scaled by position
            assert ctx.q_temp is not None
            qkv[:, : self.nq].mul_(ctx.q_temp[:, None, None])
        if self.rot and self.rotary and fast is None:
            self._rotate(qkv, ctx)
        return self._attend(qkv, ctx, cache, in_rope)

    def forward(self, x: Tensor, ctx: Context, cache: Tensor) -> Tensor:
        """x [T, hidden] through one layer at the positions of `ctx`, reading and writing
        `cache` (this layer's KV cache); returns [T, hidden], all-reduced over the
        TP group."""
        fast = ctx.fast
        if fused_norm(self.attn_norm, x, fast) and self.mla is None and not self.parallel:
            a = self._self_attention(x, ctx, cache, self.attn_norm)  # the QKV GEMV norms x
        else:
            h = x if self.attn_norm is None else self.attn_norm(x, fast)
            a = self._self_attention(h, ctx, cache)
        residual = x if self.lead else None
        if self.parallel:  # GPT-J: x + attn(ln(x)) + ffn(ln(x)), one all_reduce for both
            f_in = h if self.ffn_norm is None else self.ffn_norm(x, fast)  # NeoX: two norms
            f = self._ffn_hidden(f_in, fast)
            y = self._row(a, self.wo, self.bo, residual, fast)
            y = self._row(f, self.w_down, self.b_down, y, fast)
            return self.comm.all_reduce(y)
        if self.post_attn_norm is not None:  # post/sandwich: norm the summed output, then add
            o = self.comm.all_reduce(self._row(a, self.wo, self.bo, None, fast))
            x = self._add_normed(x, o, self.post_attn_norm, fast)
        else:
            x = self.comm.all_reduce(self._row(a, self.wo, self.bo, residual, fast))
        pre = self.ffn_norm if fused_norm(self.ffn_norm, x, fast) else None  # GEMVs norm x
        f_in = x if self.ffn_norm is None or pre is not None else self.ffn_norm(x, fast)
        if self.post_ffn_norm is not None:
            f = self.comm.all_reduce(self._ffn_out(f_in, None, fast, pre))
            return self._add_normed(x, f, self.post_ffn_norm, fast)
        residual = x if self.lead else None
        return self.comm.all_reduce(self._ffn_out(f_in, residual, fast, pre))

    @staticmethod
    def _add_normed(x: Tensor, y: Tensor, norm: Norm, fast: Any) -> Tensor:
        """x + norm(y): one kernel on the Triton decode path (RMSNorm)."""
        if fast is not None and norm.bias is None:
            return fast.rms_norm_add(y, norm.weight, norm.eps, x)
        return x + norm(y, fast)


def spec_mla(spec: ModelSpec) -> bool:
    """Whether the spec uses multi-head latent attention (DeepSeek-V2/V3)."""
    return spec.mla is not None


def flash_varlen(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    cu_q: Tensor,
    cu_k: Tensor,
    seqlens: Tensor,
    length: int,
    scale: float | None = None,
) -> Tensor:
    """One query per sequence against keys [cu_k[i], cu_k[i] + seqlens[i]) of packed k/v.

    PyTorch's private entry to FlashAttention-2's varlen kernel; `seqused_k` bounds each
    sequence's keys on the device, so no mask, no host sync and no shape change per step.
    """
    if scale is None:
        out = torch.ops.aten._flash_attention_forward(
            q, k, v, cu_q, cu_k, 1, length, 0.0, False, False, seqused_k=seqlens
        )
    else:
        out = torch.ops.aten._flash_attention_forward(
            q, k, v, cu_q, cu_k, 1, length, 0.0, False, False, seqused_k=seqlens, scale=scale
        )
    return out[0]


class Decoder(nn.Module):
    """One tensor-parallel rank of the model described by `spec` (weights uninitialised)."""

    def __init__(
        self,
        spec: ModelSpec,
        layout: Layout,
        comm: Comm,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        self.spec, self.layout, self.comm = spec, layout, comm
        self.device, self.dtype = device, dtype
        kw = {"device": device, "dtype": dtype}
        h = spec.hidden_size
        self.arch = arch = Arch.of(spec)
        self.embed = param(spec.vocab_size, h, **kw)  # replicated on every rank
        self.embed_norm = Norm(spec, device, dtype) if arch.embedding_norm else None
        rows = spec.max_context + arch.position_offset
        self.pos_embed = param(rows, h, **kw) if spec.position == "learned" else None
        self.layers = nn.ModuleList(
            Block(spec, layout, comm, device, dtype, i) for i in range(spec.num_layers)
        )
        self.norm = Norm(spec, device, dtype)
        rows = layout.vocab_end - layout.vocab_start
        self.lm_head = None if spec.tie_embeddings else param(rows, h, **kw)
        self.head_bias = param(rows, **kw) if arch.lm_head_bias else None
        self.rot = rotary_dim(spec)
        self.freqs: Tensor | None = None
        self.cos: Tensor | None = None
        self.sin: Tensor | None = None
        self.freqs_local = self.cos_local = self.sin_local = None
        if self.rot:
            self._rotary_tables(min(spec.max_context, ROTARY_POSITIONS))
        self.slopes: Tensor | None = None
        if spec.position == "alibi":
            q0, nq = layout.q_start, layout.q_heads
            self.slopes = alibi_slopes(spec.num_heads)[q0 : q0 + nq].to(device)
        self.arange = torch.arange(spec.max_context + arch.position_offset, device=device)
        multiplier = float(spec.embedding_multiplier)
        self.embed_scale = (  # on the device: a CUDA graph cannot copy it there in capture
            None if multiplier == 1.0 else torch.tensor(multiplier, dtype=dtype, device=device)
        )
        self.final_softcap = spec.final_softcap
        self.temperature = spec.attn_temperature if spec.nope_layers else None
        self.windows = sorted({blk.window for blk in self.layers if blk.window is not None})
        self.mla = spec_mla(spec)
        self.kernels: Any = None  # the Triton kernels module, once the engine has checked it
        self.mla_kernels: Any = None  # and mla_kernels, for an MLA model where they pass
        self.cache: Tensor | list[Tensor] | None = None
        self.flex_prefill: Any = None  # set by the Engine where FlexAttention serves prefill
        self.rings: list[int] = []  # ring-buffer lengths of this allocation (windowed layers)
        self.rows: Tensor | None = None
        self.cu_q: Tensor | None = None
        self.cu_k: Tensor | None = None

    def _rotary_tables(self, positions: int) -> None:
        """The rotations (and the Triton decode's cos/sin) of positions [0, positions): built
        for what a cache holds, not for the spec's whole max_context (Llama-4 Scout's is
        10,485,760 positions: about 10 GiB of tables on every rank)."""
        spec, device = self.spec, self.device
        theta, scaling, longest = spec.rope_theta, spec.rope_scaling, spec.max_context
        self.freqs = rotations(self.rot, theta, scaling, positions, longest).to(device)
        self.cos = self.freqs.real.contiguous()
        self.sin = self.freqs.imag.contiguous()
        if any(blk.local for blk in self.layers):  # Gemma-3: sliding layers' own base
            local = rotations(self.rot, spec.local_rope_theta, None, positions, longest)
            self.freqs_local = local.to(device)
            self.cos_local = self.freqs_local.real.contiguous()
            self.sin_local = self.freqs_local.imag.contiguous()

    # ---- cache ---------------------------------------------------------------------------
    def cache_shape(self, layer: int, batch: int, length: int) -> tuple[int, ...]:
        """One layer's cache: [b, slots, 2, kv_heads, d] (slots = min(W, length) for a
        windowed layer), or MLA's latent [b, length, kv_lora + rope]."""
        spec = self.spec
        if self.mla:
            return (batch, length, spec.mla.cache_dim)
        window = self.layers[layer].window
        slots = length if window is None else min(window, length)
        return (batch, slots, 2, self.layout.kv_heads, spec.dim_head)

    def allocate_cache(self, batch: int, length: int) -> None:
        """Allocate a zeroed KV cache for `batch` sequences of up to `length` tokens (one
        tensor where every layer's shape agrees, else one per layer) and the index
        tensors the CUDA graphs read; frees the old cache first. torch raises
        OutOfMemoryError where it does not fit."""
        self.cache = None  # free the old one first: two caches may not fit
        spec = self.spec
        if self.freqs is not None and length > self.freqs.shape[0]:  # longer than built
            grown = max(length, 2 * self.freqs.shape[0])
            self._rotary_tables(min(spec.max_context, grown))
        shapes = [self.cache_shape(i, batch, length) for i in range(spec.num_layers)]
        if len(set(shapes)) == 1:  # one tensor, as every dense spec has
            shape = (spec.num_layers, *shapes[0])
            self.cache = torch.zeros(shape, device=self.device, dtype=self.dtype)
        else:
            self.cache = [torch.zeros(s, device=self.device, dtype=self.dtype) for s in shapes]
        self.rings = sorted({min(w, length) for w in self.windows if w < length})
        # Static per allocation, like the CUDA graphs that read them.
        self.rows = torch.arange(batch, device=self.device)
        self.cu_q = torch.arange(batch + 1, device=self.device, dtype=torch.int32)
        self.cu_k = self.cu_q * length

    # ---- contexts ------------------------------------------------------------------------
    def prefill_context(self, batch: int, length: int, lengths: Tensor | None = None) -> Context:
        """Context of a prefill of `length` tokens per sequence; `lengths` [b] are the real
        (right-padded) prompt lengths when they differ, for the ring buffers' writes."""
        pos = self.arange[:length]
        ctx = Context(batch, length, positions=pos[None] + self.arch.position_offset)
        ctx.flex = self.flex_prefill
        if self.freqs is not None:
            ctx.freqs = self.freqs[:length].view(1, length, 1, -1)
        if self.freqs_local is not None:
            ctx.freqs_local = self.freqs_local[:length].view(1, length, 1, -1)
        if self.slopes is not None:  # bias slope·(j - i), -inf above the diagonal
            rel = (pos[None, :] - pos[:, None]).float()
            bias = self.slopes[:, None, None] * rel
            ctx.mask = bias.masked_fill(rel > 0, -math.inf).to(self.dtype)[None]
        if self.temperature is not None:
            ctx.q_temp = self._q_temp(pos).repeat(batch)
        if self.rings:
            ctx.rings = {r: self._prompt_ring(r, batch, length, lengths) for r in self.rings}
        return ctx

    def _q_temp(self, pos: Tensor) -> Tensor:
        """Llama-4's query scale at positions `pos` (NoPE layers): 1 + a·log1p(floor((p + 1) /
        f)), float32, as transformers' Llama4TextAttention computes it."""
        assert self.temperature is not None
        floor, scale = self.temperature
        return torch.log1p(torch.floor((pos.float() + 1.0) / floor)) * scale + 1.0

    def _prompt_ring(self, size: int, batch: int, length: int, lengths: Tensor | None) -> Ring:
        """Where a prompt's K/V go in a ring of `size` slots: each sequence's last `size`
        positions (or its first, when it is shorter), at slot position mod size."""
        last = lengths if lengths is not None else self.arange.new_full((batch,), length)
        start = (last - size).clamp(min=0)
        src = start[:, None] + self.arange[:size][None, :]
        rows = self.arange[:batch][:, None].expand(batch, size)
        return Ring(size, rows=rows, src=src, dst=src % size)

    def decode_context(self, pos: Tensor, span: int, attention: str) -> Context:
        """One token per sequence at cache slot/position pos[i] (a device tensor).

        attention: "triton", "flash" or "sdpa" (see the module docstring); `span` is the number
        of cache slots the sdpa path attends to.
        """
        b = pos.shape[0]
        learned = pos[:, None] + self.arch.position_offset
        ctx = Context(b, 1, learned, decode=True, slots=pos, rows=self.rows, span=span)
        if self.rings:
            ctx.rings = {r: self._step_ring(r, pos, attention) for r in self.rings}
        if self.temperature is not None:
            ctx.q_temp = self._q_temp(pos)
        if attention == "triton":
            ctx.fast, ctx.cos, ctx.sin, ctx.slopes = self.kernels, self.cos, self.sin, self.slopes
            ctx.cos_local, ctx.sin_local = self.cos_local, self.sin_local
            ctx.seqlens = (pos + 1).to(torch.int32)
            ctx.mla_fast = self.mla_kernels
            if self.mla and self.mla_kernels is None and self.freqs is not None:
                ctx.freqs = self.freqs[pos].view(b, 1, 1, -1)  # MLA rotates in torch
            return ctx
        if self.freqs is not None:
            ctx.freqs = self.freqs[pos].view(b, 1, 1, -1)
        if self.freqs_local is not None:
            ctx.freqs_local = self.freqs_local[pos].view(b, 1, 1, -1)
        if attention == "flash":
            ctx.seqlens = (pos + 1).to(torch.int32)
            ctx.cu_q, ctx.cu_k = self.cu_q, self.cu_k
            return ctx
        keys = self.arange[:span]
        valid = keys[None, :] <= pos[:, None]  # [b, span]
        bias = torch.zeros(valid.shape, device=self.device).masked_fill_(~valid, -math.inf)
        if self.slopes is not None:
            rel = (keys[None, :] - pos[:, None]).float()
            bias = bias[:, None] + self.slopes[None, :, None] * rel[:, None]  # [b, heads, span]
        else:
            bias = bias[:, None]
        ctx.mask = bias[:, :, None].to(self.dtype)  # [b, 1|heads, 1, span]
        return ctx

    def _step_ring(self, size: int, pos: Tensor, attention: str) -> Ring:
        # a window's filled slots, or a chunk's keys: slots 0 .. pos mod size
        chunked = self.spec.chunked_attention
        filled = pos % size + 1 if chunked else torch.clamp(pos + 1, max=size)
        ring = Ring(size, slots=pos % size, seqlens=filled.to(torch.int32))
        if attention == "flash":
            assert self.cu_q is not None
            ring.cu_k = self.cu_q * size
        elif attention == "sdpa":
            valid = self.arange[:size][None, :] < filled[:, None]
            bias = torch.zeros(valid.shape, device=self.device).masked_fill_(~valid, -math.inf)
            ring.mask = bias[:, None, None].to(self.dtype)  # [b, 1, 1, size]
        return ring

    # ---- forward -------------------------------------------------------------------------
    def forward(self, tokens: Tensor, ctx: Context) -> Tensor:
        """tokens [b, s] -> hidden states [b·s, h]; writes the K/V of these tokens."""
        assert self.cache is not None, "allocate_cache first"
        x = F.embedding(tokens, self.embed)
        if self.embed_scale is not None:  # Gemma: sqrt(h), rounded to the model dtype
            x = x * self.embed_scale
        if self.embed_norm is not None:
            x = self.embed_norm(x)
        if self.pos_embed is not None:
            x = x + F.embedding(ctx.positions, self.pos_embed)
        x = x.reshape(-1, self.spec.hidden_size)
        for layer, cache in zip(self.layers, self.cache, strict=True):
            x = layer(x, ctx, cache)
        return x

    def logits(self, x: Tensor, fast: Any = None) -> Tensor:
        """Hidden states [n, h] -> float32 logits [n, vocab], identical on every rank."""
        lay = self.layout
        head = self.lm_head
        if head is None:  # tied: this rank's rows of the (replicated) embedding, a view
            head = self.embed[lay.vocab_start : lay.vocab_end]
        y = linear(self.norm(x, fast), head, self.head_bias, fast).float()
        if self.final_softcap is not None:  # Gemma-2: c·tanh(logits / c)
            y = torch.tanh(y / self.final_softcap) * self.final_softcap
        if lay.tp == 1:
            return y
        if y.shape[-1] < lay.vocab_chunk:  # the last chunk is short: pad to a common width
            y = F.pad(y, (0, lay.vocab_chunk - y.shape[-1]), value=-math.inf)
        return self.comm.gather_columns(y)[:, : self.spec.vocab_size]
