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
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infermeter.engine.parallel import Comm, Layout
from infermeter.spec import ModelSpec


@dataclass(frozen=True)
class Arch:
    """The spec's optional layout switches, resolved once (older specs lack some: defaults)."""

    qkv_bias: bool
    out_bias: bool
    mlp_bias: bool
    lm_head_bias: bool
    embedding_norm: bool  # BLOOM: a norm right after the token embedding
    ffn_norm: bool  # a separate norm before the FFN (sequential blocks, or NeoX's two norms)
    position_offset: int  # OPT: learned position p lives in row p + offset

    @classmethod
    def of(cls, spec: ModelSpec) -> Arch:
        def either(name: str) -> bool:
            value = getattr(spec, name, None)
            return spec.bias if value is None else bool(value)

        two_norms = getattr(spec, "parallel_norms", 1) == 2
        return cls(
            qkv_bias=either("qkv_bias"),
            out_bias=either("out_bias"),
            mlp_bias=either("mlp_bias"),
            lm_head_bias=bool(getattr(spec, "lm_head_bias", False)),
            embedding_norm=bool(getattr(spec, "embedding_norm", False)),
            ffn_norm=not spec.parallel_attn_ffn or two_norms,
            position_offset=int(getattr(spec, "position_offset", 0)),
        )


def rotary_dim(spec: ModelSpec) -> int:
    if spec.position != "rotary":
        return 0
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


def _param(*shape: int, device: torch.device, dtype: torch.dtype) -> nn.Parameter:
    # Uninitialised on the target device: weights.py fills it there, no CPU round trip.
    return nn.Parameter(torch.empty(*shape, device=device, dtype=dtype), requires_grad=False)


class Norm(nn.Module):
    def __init__(self, spec: ModelSpec, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        h = spec.hidden_size
        self.eps = spec.norm_eps
        self.weight = _param(h, device=device, dtype=dtype)
        self.bias = _param(h, device=device, dtype=dtype) if spec.norm == "layernorm" else None

    def forward(self, x: Tensor, fast: Any = None) -> Tensor:
        if self.bias is not None:
            return F.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)
        if fast is not None:
            return fast.rms_norm(x, self.weight, self.eps)
        return F.rms_norm(x, x.shape[-1:], self.weight, self.eps)


class Block(nn.Module):
    def __init__(
        self, spec: ModelSpec, lay: Layout, comm: Comm, device: torch.device, dtype: torch.dtype
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
        qkv = (self.nq + 2 * self.nkv) * d
        ffn_in = (2 if spec.ffn_kind == "swiglu" else 1) * lay.ffn
        self.attn_norm = Norm(spec, device, dtype)
        self.ffn_norm = Norm(spec, device, dtype) if arch.ffn_norm else None
        self.wqkv = _param(qkv, h, **kw)
        self.bqkv = _param(qkv, **kw) if arch.qkv_bias else None
        self.wo = _param(h, self.nq * d, **kw)
        self.bo = _param(h, **kw) if arch.out_bias else None
        self.w_in = _param(ffn_in, h, **kw)  # swiglu: [gate; up] of this rank
        self.b_in = _param(ffn_in, **kw) if arch.mlp_bias else None
        self.w_down = _param(h, lay.ffn, **kw)
        self.b_down = _param(h, **kw) if arch.mlp_bias else None

    def _row(self, x: Tensor, w: Tensor, b: Tensor | None, acc: Tensor | None, fast: Any) -> Tensor:
        """acc + x @ w.T (+ b on the lead rank): the residual add rides in the GEMM epilogue."""
        b = b if self.lead else None
        if fast is not None and x.shape[0] <= fast.SMALL_M:
            return fast.small_linear(x, w, b, acc)
        y = torch.addmm(acc, x, w.t()) if acc is not None else torch.mm(x, w.t())
        if b is not None:
            y += b
        return y

    def _ffn_hidden(self, x: Tensor, fast: Any = None) -> Tensor:
        y = linear(x, self.w_in, self.b_in, fast)
        if self.ffn_kind == "swiglu" and fast is not None:
            return fast.silu_mul(y, self.ffn)
        if self.ffn_kind == "swiglu":
            gate, up = y.split(self.ffn, dim=-1)
            return F.silu(gate).mul_(up)
        if self.ffn_kind == "relu":
            return F.relu_(y)
        return F.gelu(y, approximate="tanh")  # GPT-2/GPT-J/BLOOM's "gelu_new"

    def _rotate(self, qkv: Tensor, ctx: Context) -> None:
        """Rotate the first `rot` dims of every Q and K head in place (interleaved pairs)."""
        x = qkv.view(ctx.batch, ctx.length, -1, self.d)[:, :, : self.nq + self.nkv, : self.rot]
        xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)))
        x.copy_(torch.view_as_real(xc * ctx.freqs).flatten(-2))

    def _attend(self, qkv: Tensor, ctx: Context, cache: Tensor) -> Tensor:
        b, s, nq, nkv, d = ctx.batch, ctx.length, self.nq, self.nkv, self.d
        q = qkv[:, :nq]
        kv = qkv[:, nq:].view(b, s, 2, nkv, d)
        if not ctx.decode:
            cache[:, :s] = kv
            q = q.view(b, s, nq, d).transpose(1, 2)
            k, v = kv[:, :, 0].transpose(1, 2), kv[:, :, 1].transpose(1, 2)
            if ctx.mask is None:  # plain causal: the flash kernel on CUDA
                o = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=nq != nkv)
            else:  # ALiBi bias: memory-efficient kernel, which wants equal head counts
                if nq != nkv:
                    k, v = k.repeat_interleave(nq // nkv, 1), v.repeat_interleave(nq // nkv, 1)
                o = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.mask)
            return o.transpose(1, 2).reshape(b * s, nq * d)
        if ctx.fast is not None:  # rotary + cache write in one kernel, then flash-decoding
            ctx.fast.rope_store(qkv, cache, ctx.slots, ctx.cos, ctx.sin, nq)
            o = ctx.fast.decode_attention(q, cache, ctx.seqlens, ctx.slopes)
            return o.view(b, nq * d)
        # Decode: write this step's K/V at each sequence's slot, then attend over the cache.
        cache.index_put_((ctx.rows, ctx.slots), kv.view(b, 2, nkv, d))
        if ctx.seqlens is not None:
            length = cache.shape[1]
            k = cache[:, :, 0].view(b * length, nkv, d)
            v = cache[:, :, 1].view(b * length, nkv, d)
            o = flash_varlen(q, k, v, ctx.cu_q, ctx.cu_k, ctx.seqlens, length)
            return o.reshape(b, nq * d)
        k = cache[:, : ctx.span, 0].transpose(1, 2)  # [b, kv, span, d]
        v = cache[:, : ctx.span, 1].transpose(1, 2)
        mask = ctx.mask
        if mask is not None and mask.shape[1] > 1:  # per-head ALiBi bias
            mask = mask.view(b, nkv, nq // nkv, -1)
        o = F.scaled_dot_product_attention(q.reshape(b, nkv, nq // nkv, d), k, v, attn_mask=mask)
        return o.reshape(b, nq * d)

    def forward(self, x: Tensor, ctx: Context, cache: Tensor) -> Tensor:
        fast = ctx.fast
        h = self.attn_norm(x, fast)
        qkv = linear(h, self.wqkv, self.bqkv, fast).view(x.shape[0], -1, self.d)
        if self.rot and fast is None:
            self._rotate(qkv, ctx)
        a = self._attend(qkv, ctx, cache)
        residual = x if self.lead else None
        if self.parallel:  # GPT-J: x + attn(ln(x)) + ffn(ln(x)), one all_reduce for both
            f_in = h if self.ffn_norm is None else self.ffn_norm(x, fast)  # NeoX: two norms
            f = self._ffn_hidden(f_in, fast)
            y = self._row(a, self.wo, self.bo, residual, fast)
            y = self._row(f, self.w_down, self.b_down, y, fast)
            return self.comm.all_reduce(y)
        x = self.comm.all_reduce(self._row(a, self.wo, self.bo, residual, fast))
        assert self.ffn_norm is not None
        f = self._ffn_hidden(self.ffn_norm(x, fast), fast)
        residual = x if self.lead else None
        return self.comm.all_reduce(self._row(f, self.w_down, self.b_down, residual, fast))


def linear(x: Tensor, w: Tensor, b: Tensor | None, fast: Any = None) -> Tensor:
    """x @ w.T + b; a decode batch on the Triton path streams w through our GEMV kernel."""
    if fast is not None and x.shape[0] <= fast.SMALL_M:
        return fast.small_linear(x, w, b)
    return F.linear(x, w, b)


def flash_varlen(
    q: Tensor, k: Tensor, v: Tensor, cu_q: Tensor, cu_k: Tensor, seqlens: Tensor, length: int
) -> Tensor:
    """One query per sequence against keys [cu_k[i], cu_k[i] + seqlens[i]) of packed k/v.

    PyTorch's private entry to FlashAttention-2's varlen kernel; `seqused_k` bounds each
    sequence's keys on the device, so no mask, no host sync and no shape change per step.
    """
    out = torch.ops.aten._flash_attention_forward(
        q, k, v, cu_q, cu_k, 1, length, 0.0, False, False, seqused_k=seqlens
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
        self.embed = _param(spec.vocab_size, h, **kw)  # replicated on every rank
        self.embed_norm = Norm(spec, device, dtype) if arch.embedding_norm else None
        rows = spec.max_context + arch.position_offset
        self.pos_embed = _param(rows, h, **kw) if spec.position == "learned" else None
        self.layers = nn.ModuleList(
            Block(spec, layout, comm, device, dtype) for _ in range(spec.num_layers)
        )
        self.norm = Norm(spec, device, dtype)
        rows = layout.vocab_end - layout.vocab_start
        self.lm_head = None if spec.tie_embeddings else _param(rows, h, **kw)
        self.head_bias = _param(rows, **kw) if arch.lm_head_bias else None
        self.rot = rotary_dim(spec)
        self.freqs: Tensor | None = None
        self.cos: Tensor | None = None
        self.sin: Tensor | None = None
        if self.rot:
            inv = spec.rope_theta ** -(torch.arange(0, self.rot, 2, dtype=torch.float64) / self.rot)
            angles = torch.outer(torch.arange(spec.max_context, dtype=torch.float64), inv)
            self.freqs = torch.polar(torch.ones_like(angles), angles).to(torch.complex64).to(device)
            self.cos = self.freqs.real.contiguous()
            self.sin = self.freqs.imag.contiguous()
        self.slopes: Tensor | None = None
        if spec.position == "alibi":
            q0, nq = layout.q_start, layout.q_heads
            self.slopes = alibi_slopes(spec.num_heads)[q0 : q0 + nq].to(device)
        self.arange = torch.arange(spec.max_context + arch.position_offset, device=device)
        self.kernels: Any = None  # the Triton kernels module, once the engine has checked it
        self.cache: Tensor | None = None
        self.rows: Tensor | None = None
        self.cu_q: Tensor | None = None
        self.cu_k: Tensor | None = None

    # ---- cache ---------------------------------------------------------------------------
    def allocate_cache(self, batch: int, length: int) -> None:
        self.cache = None  # free the old one first: two caches may not fit
        lay, spec = self.layout, self.spec
        shape = (spec.num_layers, batch, length, 2, lay.kv_heads, spec.dim_head)
        self.cache = torch.zeros(shape, device=self.device, dtype=self.dtype)
        # Static per allocation, like the CUDA graphs that read them.
        self.rows = torch.arange(batch, device=self.device)
        self.cu_q = torch.arange(batch + 1, device=self.device, dtype=torch.int32)
        self.cu_k = self.cu_q * length

    # ---- contexts ------------------------------------------------------------------------
    def prefill_context(self, batch: int, length: int) -> Context:
        pos = self.arange[:length]
        ctx = Context(batch, length, positions=pos[None] + self.arch.position_offset)
        if self.freqs is not None:
            ctx.freqs = self.freqs[:length].view(1, length, 1, -1)
        if self.slopes is not None:  # bias slope·(j - i), -inf above the diagonal
            rel = (pos[None, :] - pos[:, None]).float()
            bias = self.slopes[:, None, None] * rel
            ctx.mask = bias.masked_fill(rel > 0, -math.inf).to(self.dtype)[None]
        return ctx

    def decode_context(self, pos: Tensor, span: int, attention: str) -> Context:
        """One token per sequence at cache slot/position pos[i] (a device tensor).

        attention: "triton", "flash" or "sdpa" (see the module docstring); `span` is the number
        of cache slots the sdpa path attends to.
        """
        b = pos.shape[0]
        learned = pos[:, None] + self.arch.position_offset
        ctx = Context(b, 1, learned, decode=True, slots=pos, rows=self.rows, span=span)
        if attention == "triton":
            ctx.fast, ctx.cos, ctx.sin, ctx.slopes = self.kernels, self.cos, self.sin, self.slopes
            ctx.seqlens = (pos + 1).to(torch.int32)
            return ctx
        if self.freqs is not None:
            ctx.freqs = self.freqs[pos].view(b, 1, 1, -1)
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

    # ---- forward -------------------------------------------------------------------------
    def forward(self, tokens: Tensor, ctx: Context) -> Tensor:
        """tokens [b, s] -> hidden states [b·s, h]; writes the K/V of these tokens."""
        assert self.cache is not None, "allocate_cache first"
        x = F.embedding(tokens, self.embed)
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
        if lay.tp == 1:
            return y
        if y.shape[-1] < lay.vocab_chunk:  # the last chunk is short: pad to a common width
            y = F.pad(y, (0, lay.vocab_chunk - y.shape[-1]), value=-math.inf)
        return self.comm.gather_columns(y)[:, : self.spec.vocab_size]
