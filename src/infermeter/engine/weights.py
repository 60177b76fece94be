"""Weights: random initialisation on the device, or a local Hugging Face checkpoint.

Both go through one seam, `assign(model, name, full)`, which takes a *logical* tensor (the whole,
unsharded, unfused weight of the spec, e.g. "layers.3.wk" [kv_dim, h]) and copies the slice this
rank owns into the fused local parameter. So a random model is identical for every tensor-
parallel degree: each logical tensor is drawn from its own generator, seeded by (seed, name),
on the device, then sliced.

Logical names (all shapes [out, in] like nn.Linear), present as the spec says:
  embed [V, h], embed_norm.{weight,bias}, pos_embed [max_context + offset, h],
  layers.i.{attn_norm,ffn_norm}.{weight,bias}, layers.i.{wq,wk,wv,wo}, layers.i.{bq,bk,bv,bo},
  layers.i.{w_gate,w_up,w_down}, layers.i.{b_gate,b_up,b_down} (no gate without SwiGLU),
  norm.{weight,bias}, lm_head [V, h] (untied only), lm_head_bias [V].
"""

from __future__ import annotations

import json
import math
import warnings
import zlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import Tensor

from infermeter.engine.model import Arch, Decoder, rotary_dim
from infermeter.errors import UserError
from infermeter.spec import ModelSpec

STD = 0.02


def logical_tensors(spec: ModelSpec) -> Iterator[tuple[str, tuple[int, ...], float]]:
    """(name, full shape, init std) of every weight; std 0 means ones (norm scale) or zeros."""
    h, v, f = spec.hidden_size, spec.vocab_size, spec.ffn_dim
    q, kv = spec.q_dim, spec.kv_dim
    # GPT-2's scaled init: output projections add to the residual stream 2·layers times, so
    # scale them by 1/sqrt(2·layers) to keep activations O(1) (and finite in bf16).
    out_std = STD / math.sqrt(2 * spec.num_layers)
    layernorm = spec.norm == "layernorm"
    arch = Arch.of(spec)
    has_bias = {"q": arch.qkv_bias, "k": arch.qkv_bias, "v": arch.qkv_bias, "o": arch.out_bias}

    def norm(prefix: str) -> Iterator[tuple[str, tuple[int, ...], float]]:
        yield f"{prefix}.weight", (h,), 0.0
        if layernorm:
            yield f"{prefix}.bias", (h,), 0.0

    yield "embed", (v, h), STD
    if arch.embedding_norm:
        yield from norm("embed_norm")
    if spec.position == "learned":
        yield "pos_embed", (spec.max_context + arch.position_offset, h), STD
    for i in range(spec.num_layers):
        p = f"layers.{i}"
        yield from norm(f"{p}.attn_norm")
        if arch.ffn_norm:
            yield from norm(f"{p}.ffn_norm")
        shapes = [("wq", (q, h), STD), ("wk", (kv, h), STD), ("wv", (kv, h), STD)]
        shapes += [("wo", (h, q), out_std)]
        if spec.ffn_kind == "swiglu":
            shapes += [("w_gate", (f, h), STD)]
        shapes += [("w_up", (f, h), STD), ("w_down", (h, f), out_std)]
        for name, shape, std in shapes:
            yield f"{p}.{name}", shape, std
            if has_bias.get(name[1:], arch.mlp_bias):
                yield f"{p}.b{name[1:]}", shape[:1], 0.0  # wq -> bq, w_up -> b_up
    yield from norm("norm")
    if not spec.tie_embeddings:
        yield "lm_head", (v, h), STD
    if arch.lm_head_bias:
        yield "lm_head_bias", (v,), 0.0


def _targets(model: Decoder, name: str) -> list[tuple[Tensor, tuple[slice, ...]]]:
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
        gated = spec.ffn_kind == "swiglu"
        start = lay.ffn if gated and what == "up" else 0
        return [(dst[start : start + lay.ffn], (ffn_rows,))]
    if what == "o":  # row-parallel: this rank's input columns; the bias is whole
        return [(blk.wo, (slice(None), q_rows))] if kind == "w" else [(blk.bo, everything)]
    if what == "down":
        if kind == "w":
            return [(blk.w_down, (slice(None), ffn_rows))]
        return [(blk.b_down, everything)]
    raise KeyError(name)


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


# ---- Hugging Face checkpoints (LLaMA family) -------------------------------------------------

_HF_LLAMA = {
    "self_attn.q_proj": "q",
    "self_attn.k_proj": "k",
    "self_attn.v_proj": "v",
    "self_attn.o_proj": "o",
    "mlp.gate_proj": "_gate",
    "mlp.up_proj": "_up",
    "mlp.down_proj": "_down",
}


def _hf_llama_name(key: str) -> str | None:
    if key == "model.embed_tokens.weight":
        return "embed"
    if key == "model.norm.weight":
        return "norm.weight"
    if key == "lm_head.weight":
        return "lm_head"
    parts = key.split(".")
    if len(parts) < 5 or parts[:2] != ["model", "layers"]:
        return None
    i, module, kind = parts[2], ".".join(parts[3:-1]), parts[-1]
    if module == "input_layernorm":
        return f"layers.{i}.attn_norm.{kind}"
    if module == "post_attention_layernorm":
        return f"layers.{i}.ffn_norm.{kind}"
    if module in _HF_LLAMA:
        return f"layers.{i}.{'w' if kind == 'weight' else 'b'}{_HF_LLAMA[module]}"
    return None


def half_to_interleaved(t: Tensor, heads: int, rot: int) -> Tensor:
    """Reorder each head's first `rot` rows from rotate-half (i, i+rot/2) to pairs (2i, 2i+1).

    Applied to Q and K alike, it permutes the dimensions of every q·k product identically, so
    attention is unchanged while the engine can rotate with one complex multiply.
    """
    x = t.reshape(heads, -1, *t.shape[1:])
    head = x[:, :rot].unflatten(1, (2, rot // 2)).transpose(1, 2).flatten(1, 2)
    return torch.cat([head, x[:, rot:]], dim=1).reshape(t.shape)


def _check_config(spec: ModelSpec, path: Path) -> None:
    config_path = path / "config.json"
    if not config_path.exists():
        return
    config = json.loads(config_path.read_text())
    family = config.get("model_type")
    if family not in ("llama", "mistral"):
        raise UserError(f"engine: checkpoint {path} is a {family!r}; only LLaMA-family loads")
    expected = {
        "hidden_size": spec.hidden_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.kv_heads,
        "intermediate_size": spec.ffn_dim,
        "vocab_size": spec.vocab_size,
    }
    wrong = {k: (config.get(k, v), v) for k, v in expected.items() if config.get(k, v) != v}
    if wrong:
        raise UserError(f"engine: checkpoint {path} does not match spec {spec.name}: {wrong}")
    if config.get("rope_scaling"):
        warnings.warn("engine: rope_scaling in the checkpoint is not applied", stacklevel=2)


@torch.inference_mode()
def load_checkpoint(model: Decoder, path: str | Path) -> None:
    """Load a local LLaMA-family safetensors checkpoint into the fused, sharded layout."""
    from safetensors import safe_open

    spec = model.spec
    path = Path(path).expanduser()
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        raise UserError(f"engine: no *.safetensors files in checkpoint directory {path}")
    _check_config(spec, path)
    rot = rotary_dim(spec)
    heads = {"wq": spec.num_heads, "bq": spec.num_heads, "wk": spec.kv_heads, "bk": spec.kv_heads}
    expected = {name for name, _, _ in logical_tensors(spec)}
    loaded: set[str] = set()
    device = "cpu" if model.device.type == "cpu" else str(model.device)
    for file in files:
        with safe_open(str(file), framework="pt", device=device) as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                name = _hf_llama_name(key)
                if name is None or name not in expected:
                    continue
                tensor = f.get_tensor(key).to(model.dtype)
                short = name.rsplit(".", 1)[-1]
                if rot and short in heads:
                    tensor = half_to_interleaved(tensor, heads[short], rot)
                assign(model, name, tensor)
                loaded.add(name)
    missing = sorted(expected - loaded)
    if missing:
        raise UserError(f"engine: checkpoint {path} lacks {', '.join(missing[:5])}")
