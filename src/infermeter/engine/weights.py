"""Weights: random initialisation on the device, or a local Hugging Face checkpoint.

Both go through one seam, `assign(model, name, full)`, which takes a *logical* tensor (the whole,
unsharded, unfused weight of the spec, e.g. "layers.3.wk" [kv_dim, h]) and copies the slice this
rank owns into the fused local parameter. So a random model is identical for every tensor-
parallel degree: each logical tensor is drawn from its own generator, seeded by (seed, name),
on the device, then sliced.

Logical names (all shapes [out, in] like nn.Linear), present as the spec says:
  embed [V, h], embed_norm.{weight,bias}, pos_embed [max_context + offset, h],
  layers.i.{attn_norm,ffn_norm,post_attn_norm,post_ffn_norm}.{weight,bias},
  layers.i.{wq,wk,wv,wo}, layers.i.{bq,bk,bv,bo}, layers.i.{q_norm,k_norm}.weight ([d] per
  head or [heads·d] whole), layers.i.sinks [n],
  layers.i.{w_gate,w_up,w_down}, layers.i.{b_gate,b_up,b_down} (no gate without a gated FFN),
  MLA: layers.i.{wq | wq_a, q_a_norm.weight, wq_b}, layers.i.{wkv_a, kv_a_norm.weight, wkv_b},
  MoE: layers.i.router [E, h], router_bias [E], score_bias [E] (float32),
  layers.i.experts.{w_gate,w_up} [E, f, h], experts.w_down [E, h, f], experts.{b_gate,b_up,
  b_down}, and one expert's slice as layers.i.experts.j.w_gate etc. (checkpoints),
  layers.i.shared.{w_gate,w_up,w_down}, layers.i.shared_gate [1, h],
  norm.{weight,bias}, lm_head [V, h] (untied only), lm_head_bias [V].
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterator, Mapping

import torch
from torch import Tensor

from infermeter.engine.model import Arch, Block, Decoder
from infermeter.errors import UserError
from infermeter.spec.model import ModelSpec

STD = 0.02

Logical = tuple[str, tuple[int, ...], float]


def logical_tensors(spec: ModelSpec) -> Iterator[Logical]:
    """(name, full shape, init std) of every weight; std 0 means ones (norm scale) or zeros."""
    h, v, f = spec.hidden_size, spec.vocab_size, spec.ffn_dim
    q, kv = spec.q_dim, spec.kv_dim
    # GPT-2's scaled init: output projections add to the residual stream 2·layers times, so
    # scale them by 1/sqrt(2·layers) to keep activations O(1) (and finite in bf16).
    out_std = STD / math.sqrt(2 * spec.num_layers)
    layernorm = spec.norm == "layernorm"
    arch = Arch.of(spec)
    has_bias = {"q": arch.qkv_bias, "k": arch.qkv_bias, "v": arch.qkv_bias, "o": arch.out_bias}

    def norm(prefix: str, width: int = h) -> Iterator[Logical]:
        yield f"{prefix}.weight", (width,), 0.0
        if layernorm:
            yield f"{prefix}.bias", (width,), 0.0

    yield "embed", (v, h), STD
    if arch.embedding_norm:
        yield from norm("embed_norm")
    if spec.position == "learned":
        yield "pos_embed", (spec.max_context + arch.position_offset, h), STD
    for i in range(spec.num_layers):
        p = f"layers.{i}"
        if arch.pre_norms:
            yield from norm(f"{p}.attn_norm")
        if arch.ffn_norm:
            yield from norm(f"{p}.ffn_norm")
        if arch.post_norms:
            yield from norm(f"{p}.post_attn_norm")
            yield from norm(f"{p}.post_ffn_norm")
        if spec.mla is not None:
            yield from _mla_tensors(spec, p, out_std)
        else:
            shapes = [("wq", (q, h), STD), ("wk", (kv, h), STD), ("wv", (kv, h), STD)]
            shapes += [("wo", (h, q), out_std)]
            for name, shape, std in shapes:
                yield f"{p}.{name}", shape, std
                if has_bias[name[1:]]:
                    yield f"{p}.b{name[1:]}", shape[:1], 0.0
            if spec.qk_norm in ("head", "full"):  # "l2" (Llama-4) has no weights
                head = spec.qk_norm == "head"
                yield f"{p}.q_norm.weight", (spec.dim_head if head else q,), 0.0
                yield f"{p}.k_norm.weight", (spec.dim_head if head else kv,), 0.0
        if spec.attention_sinks:
            yield f"{p}.sinks", (spec.num_heads,), 0.0
        if spec.is_moe_layer(i):
            yield from _moe_tensors(spec, p, out_std)
            continue
        shapes = [("w_gate", (f, h), STD)] if spec.gated else []
        shapes += [("w_up", (f, h), STD), ("w_down", (h, f), out_std)]
        for name, shape, std in shapes:
            yield f"{p}.{name}", shape, std
            if arch.mlp_bias:
                yield f"{p}.b{name[1:]}", shape[:1], 0.0  # w_up -> b_up
    yield from norm("norm")
    if not spec.tie_embeddings:
        yield "lm_head", (v, h), STD
    if arch.lm_head_bias:
        yield "lm_head_bias", (v,), 0.0


def _mla_tensors(spec: ModelSpec, p: str, out_std: float) -> Iterator[Logical]:
    mla, h, n = spec.mla, spec.hidden_size, spec.num_heads
    assert mla is not None
    if mla.q_lora_rank is None:
        yield f"{p}.wq", (n * mla.qk_head_dim, h), STD
    else:
        yield f"{p}.wq_a", (mla.q_lora_rank, h), STD
        yield f"{p}.q_a_norm.weight", (mla.q_lora_rank,), 0.0
        yield f"{p}.wq_b", (n * mla.qk_head_dim, mla.q_lora_rank), STD
    yield f"{p}.wkv_a", (mla.cache_dim, h), STD
    yield f"{p}.kv_a_norm.weight", (mla.kv_lora_rank,), 0.0
    yield f"{p}.wkv_b", (n * (mla.qk_nope_dim + mla.v_head_dim), mla.kv_lora_rank), STD
    yield f"{p}.wo", (h, n * mla.v_head_dim), out_std


def _moe_tensors(spec: ModelSpec, p: str, out_std: float) -> Iterator[Logical]:
    """Router, experts and shared expert of a MoE layer. The router's std is such that its
    logits are O(1): random tokens then spread their choices evenly over the experts."""
    moe, h = spec.moe, spec.hidden_size
    assert moe is not None
    e, f, fs = moe.num_experts, moe.expert_ffn_size, moe.shared_ffn_size
    yield f"{p}.router", (e, h), h**-0.5
    if moe.router_bias:
        yield f"{p}.router_bias", (e,), 0.0
    if moe.score_correction:
        yield f"{p}.score_bias", (e,), 0.0
    parts = ["gate", "up"] if spec.gated else ["up"]
    for part in parts:
        yield f"{p}.experts.w_{part}", (e, f, h), STD
        if moe.expert_bias:
            yield f"{p}.experts.b_{part}", (e, f), 0.0
    yield f"{p}.experts.w_down", (e, h, f), out_std
    if moe.expert_bias:
        yield f"{p}.experts.b_down", (e, h), 0.0
    if fs:
        for part in parts:
            yield f"{p}.shared.w_{part}", (fs, h), STD
        yield f"{p}.shared.w_down", (h, fs), out_std
        if moe.shared_gate:
            yield f"{p}.shared_gate", (1, h), STD


Target = list[tuple[Tensor, tuple[slice | int, ...]]]


def _targets(model: Decoder, name: str) -> Target:
    """Where logical tensor `name` goes: (destination view, slice of the full tensor) pairs."""
    spec, lay = model.spec, model.layout
    d = spec.dim_head
    everything: tuple[slice, ...] = (slice(None),)
    if name == "embed":
        return [(model.embed, everything)]
    if name == "pos_embed":
        assert model.pos_embed is not None
        return [(model.pos_embed, everything)]
    vocab_rows = (slice(lay.vocab_start, lay.vocab_end),)
    if name == "lm_head":
        assert model.lm_head is not None
        return [(model.lm_head, vocab_rows)]
    if name == "lm_head_bias":
        assert model.head_bias is not None
        return [(model.head_bias, vocab_rows)]
    if name.startswith(("norm.", "embed_norm.")):
        module, field = name.split(".")
        return [(getattr(getattr(model, module), field), everything)]
    _, index, attr = name.split(".", 2)
    blk = model.layers[int(index)]
    special = _block_targets(blk, attr, model)
    if special is not None:
        return special
    if attr.endswith(("weight", "bias")):  # attn_norm.weight, ffn_norm.bias, ...
        module, field = attr.split(".")
        return [(getattr(getattr(blk, module), field), everything)]
    kind, what = attr[0], attr[1:].lstrip("_")  # "w"/"b" and q, k, v, o, gate, up, down
    nq, nkv = lay.q_heads * d, lay.kv_heads * d
    q_rows = slice(lay.q_start * d, lay.q_start * d + nq)
    kv_rows = slice(lay.kv_start * d, lay.kv_start * d + nkv)
    ffn_rows = slice(lay.ffn_start, lay.ffn_start + lay.ffn)
    fused = {"q": (0, nq, q_rows), "k": (nq, nkv, kv_rows), "v": (nq + nkv, nkv, kv_rows)}
    if what in fused:
        start, size, rows_ = fused[what]
        dst = blk.wqkv if kind == "w" else blk.bqkv
        return [(dst[start : start + size], (rows_,))]
    if what in ("gate", "up"):
        dst = blk.w_in if kind == "w" else blk.b_in
        gated = spec.gated
        start = lay.ffn if gated and what == "up" else 0
        return [(dst[start : start + lay.ffn], (ffn_rows,))]
    if what == "o":  # row-parallel: this rank's input columns; the bias is whole
        return [(blk.wo, (slice(None), q_rows))] if kind == "w" else [(blk.bo, everything)]
    if what == "down":
        if kind == "w":
            return [(blk.w_down, (slice(None), ffn_rows))]
        return [(blk.b_down, everything)]
    raise KeyError(name)


def _block_targets(blk: Block, attr: str, model: Decoder) -> Target | None:
    """Targets of the newer layouts' tensors (norms on q/k, sinks, MLA, MoE), or None."""
    lay, spec = model.layout, model.spec
    everything: tuple[slice, ...] = (slice(None),)
    d = spec.dim_head
    if attr in ("q_norm.weight", "k_norm.weight"):
        dst = blk.q_norm if attr[0] == "q" else blk.k_norm
        assert dst is not None
        if spec.qk_norm == "head":
            return [(dst, everything)]
        heads = (lay.q_start, lay.q_heads) if attr[0] == "q" else (lay.kv_start, lay.kv_heads)
        return [(dst, (slice(heads[0] * d, (heads[0] + heads[1]) * d),))]
    if attr == "sinks":
        assert blk.sinks is not None
        return [(blk.sinks, (slice(lay.q_start, lay.q_start + lay.q_heads),))]
    if blk.mla is not None:
        found = _mla_targets(blk, attr, lay.q_start, lay.q_heads)
        if found is not None:
            return found
    if attr.startswith(("router", "score_bias", "experts.", "shared")):
        return _moe_targets(blk, attr, lay)
    return None


def _mla_targets(blk: Block, attr: str, q0: int, heads: int) -> Target | None:
    mla = blk.mla
    assert mla is not None
    everything: tuple[slice, ...] = (slice(None),)
    qk, v = mla.nope + mla.rope, mla.mla.v_head_dim
    if attr == "wq":  # no q_lora: this rank's heads, fused ahead of kv_a
        return [(mla.w_a[: mla.q_width], (slice(q0 * qk, (q0 + heads) * qk),))]
    if attr == "wq_a":
        return [(mla.w_a[: mla.q_width], everything)]
    if attr == "wkv_a":
        return [(mla.w_a[mla.q_width :], everything)]
    if attr == "wq_b":
        assert mla.wq_b is not None
        return [(mla.wq_b, (slice(q0 * qk, (q0 + heads) * qk),))]
    if attr == "wkv_b":
        return [(mla.wkv_b, (slice(q0 * (mla.nope + v), (q0 + heads) * (mla.nope + v)),))]
    if attr == "wo":
        return [(blk.wo, (slice(None), slice(q0 * v, (q0 + heads) * v)))]
    if attr in ("q_a_norm.weight", "kv_a_norm.weight"):
        norm = mla.q_a_norm if attr[0] == "q" else mla.kv_a_norm
        assert norm is not None
        return [(norm.weight, everything)]
    return None


def _moe_targets(blk: Block, attr: str, lay: object) -> Target:
    moe = blk.moe
    assert moe is not None
    everything: tuple[slice, ...] = (slice(None),)
    f, fs = moe.f, moe.fs
    start, shared_start = getattr(lay, "expert_ffn_start", 0), getattr(lay, "shared_ffn_start", 0)
    rows, srows = slice(start, start + f), slice(shared_start, shared_start + fs)
    simple = {"router": moe.router, "router_bias": moe.router_bias, "score_bias": moe.score_bias}
    simple["shared_gate"] = moe.shared_gate
    if attr in simple:
        dst = simple[attr]
        assert dst is not None
        return [(dst, everything)]
    group, *expert, leaf = attr.split(".")
    up = f if moe.gated else 0  # where the up rows start in the fused [gate; up]
    if group == "shared":
        assert moe.ws_in is not None and moe.ws_down is not None
        offset = fs if moe.gated and leaf == "w_up" else 0
        if leaf == "w_down":
            return [(moe.ws_down, (slice(None), srows))]
        return [(moe.ws_in[offset : offset + fs], (srows,))]
    # experts: all of them ([E, ...] tensors) or one ("experts.j.w_gate" [f, h]: its slice)
    at: slice | int = int(expert[0]) if expert else slice(None)
    lead: tuple[slice, ...] = () if expert else (slice(None),)
    if leaf in ("w_gate", "w_up"):
        offset = up if leaf == "w_up" else 0
        return [(moe.w13[at, offset : offset + f], (*lead, rows))]
    if leaf in ("b_gate", "b_up"):
        assert moe.b13 is not None
        offset = up if leaf == "b_up" else 0
        return [(moe.b13[at, offset : offset + f], (*lead, rows))]
    if leaf == "w_down":
        return [(moe.w2[at], (*lead, slice(None), rows))]
    if leaf == "b_down":
        assert moe.b2 is not None
        return [(moe.b2[at], everything)]
    raise KeyError(attr)


def assign(model: Decoder, name: str, full: Tensor) -> None:
    """Copy this rank's part of logical tensor `name` (whole, unsharded) into the model."""
    for dst, index in _targets(model, name):
        part = full[index]
        if part.shape != dst.shape:
            raise UserError(
                f"weight {name}: expected {tuple(dst.shape)} for this rank, got {tuple(part.shape)}"
            )
        dst.copy_(part)


def load_state(model: Decoder, tensors: Mapping[str, Tensor]) -> None:
    """Assign every logical tensor; all of them must be present."""
    missing = [n for n, _, _ in logical_tensors(model.spec) if n not in tensors]
    if missing:
        raise UserError(f"missing weight(s): {', '.join(missing[:5])}")
    for name, tensor in tensors.items():
        assign(model, name, tensor)


def _seed(seed: int, name: str) -> int:
    # crc32, not hash(): the same on every rank and process (hash() is salted per process).
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63)


@torch.inference_mode()
def init_random(model: Decoder, seed: int = 0) -> None:
    """Fill the model with seeded random weights, drawn on its device in its dtype."""
    device, dtype = model.device, model.dtype
    for name, shape, std in logical_tensors(model.spec):
        if std == 0.0:  # norm scales 1, biases 0
            value = 1.0 if name.endswith("norm.weight") else 0.0
            for dst, _ in _targets(model, name):
                dst.fill_(value)
            continue
        gen = torch.Generator(device=device).manual_seed(_seed(seed, name))
        full = torch.empty(shape, device=device, dtype=dtype).normal_(0.0, std, generator=gen)
        assign(model, name, full)
        del full  # one logical tensor alive at a time


# END
