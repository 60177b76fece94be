"""Local Hugging Face safetensors checkpoints -> the engine's logical tensors (weights.py).

Each checkpoint key is mapped to one or more logical tensors, per family:

- the Llama line (llama, mistral, qwen2, qwen3, olmo2, phi3, gemma2, gemma3): `model.layers.i.
  self_attn.{q,k,v,o}_proj`, `mlp.{gate,up,down}_proj`; Phi-3's fused `qkv_proj` and
  `gate_up_proj` are split; `post_attention_layernorm` is the pre-FFN norm of a pre-norm
  layer and the post-attention norm of OLMo-2's and Gemma's; Gemma's RMSNorm weights are
  stored as w with the scale 1 + w, so 1 is added;
- MoE: Mixtral's `block_sparse_moe.experts.j.w1/w3/w2` (gate, up, down), Qwen/DeepSeek's
  `mlp.experts.j.{gate,up,down}_proj`, shared experts and gates, routers; fused expert tensors
  (`mlp.experts.gate_up_proj` [E, 2f, h]; gpt-oss's [E, h, 2f] with gate and up
  interleaved, transposed, with biases; Llama-4's `feed_forward.experts.gate_up_proj` [E, h,
  2f] and `down_proj` [E, f, h], transposed, its `router` and `shared_expert`);
- MLA (DeepSeek-V2/V3): q_proj or q_a_proj/q_a_layernorm/q_b_proj, kv_a_proj_with_mqa,
  kv_a_layernorm, kv_b_proj;
- Falcon: `transformer.h.i.self_attention.query_key_value` split by its layout (multi-query,
  grouped for new_decoder_architecture, or per-head q/k/v).

Rotary layout: checkpoints that rotate halves (i, i + rot/2) have the rotated rows of every
Q and K head (and of per-head qk-norm weights) permuted to the engine's interleaved pairs;
DeepSeek's rope parts are already interleaved (V3: unless rope_interleave is false), and so
are Llama-4's (it rotates complex pairs, as Meta's LLaMA code did).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from infermeter.engine.model import Decoder, rotary_dim
from infermeter.engine.weights import assign, logical_tensors
from infermeter.errors import UserError
from infermeter.spec.model import ModelSpec

LOADABLE = (
    "deepseek_v2",
    "deepseek_v3",
    "falcon",
    "gemma2",
    "gemma3",
    "gemma3_text",
    "gpt_oss",
    "llama",
    "llama4",
    "llama4_text",
    "mistral",
    "mixtral",
    "olmo2",
    "phi3",
    "qwen2",
    "qwen2_moe",
    "qwen3",
    "qwen3_moe",
)

_PROJ = {"q_proj": "q", "k_proj": "k", "v_proj": "v", "o_proj": "o"}
_MLP = {"gate_proj": "_gate", "up_proj": "_up", "down_proj": "_down"}
_MIXTRAL = {"w1": "w_gate", "w3": "w_up", "w2": "w_down"}
_MLA = {
    "q_proj": "wq",
    "q_a_proj": "wq_a",
    "q_b_proj": "wq_b",
    "kv_a_proj_with_mqa": "wkv_a",
    "kv_b_proj": "wkv_b",
    "o_proj": "wo",
    "q_a_layernorm": "q_a_norm.weight",
    "kv_a_layernorm": "kv_a_norm.weight",
}
_PREFIXES = ("model.language_model.", "language_model.model.", "model.", "transformer.")


def half_to_interleaved(t: Tensor, heads: int, rot: int) -> Tensor:
    """Reorder each head's first `rot` rows from rotate-half (i, i+rot/2) to pairs (2i, 2i+1).

    Applied to Q and K alike, it permutes the dimensions of every q·k product identically, so
    attention is unchanged while the engine can rotate with one complex multiply.
    """
    x = t.reshape(heads, -1, *t.shape[1:])
    head = x[:, :rot].unflatten(1, (2, rot // 2)).transpose(1, 2).flatten(1, 2)
    return torch.cat([head, x[:, rot:]], dim=1).reshape(t.shape)


def _layer_key(key: str) -> tuple[int, str] | None:
    """'model.layers.3.self_attn.q_proj.weight' -> (3, 'self_attn.q_proj.weight')."""
    for prefix in _PREFIXES:
        if key.startswith(prefix):
            match = re.match(r"(?:layers|h)\.(\d+)\.(.+)", key[len(prefix) :])
            return (int(match[1]), match[2]) if match else None
    return None


class _Mapper:
    """Checkpoint key + tensor -> [(logical name, tensor)] for one spec."""

    def __init__(self, spec: ModelSpec, config: dict[str, Any]) -> None:
        self.spec, self.config = spec, config
        self.family = str(config.get("model_type", spec.family))
        self.gemma = self.family in ("gemma2", "gemma3", "gemma3_text")
        self.rot = rotary_dim(spec)
        deepseek = self.family in ("deepseek_v2", "deepseek_v3")
        self.llama4 = self.family in ("llama4", "llama4_text")
        interleaved = self.llama4 or (deepseek and bool(config.get("rope_interleave", True)))
        self.permute = spec.position == "rotary" and not interleaved

    def __call__(self, key: str, t: Tensor) -> list[tuple[str, Tensor]]:
        if key.endswith(("_blocks", "_scales")):
            raise UserError(
                f"engine: checkpoint tensor {key} is quantized (MXFP4); save a bf16 copy "
                "(transformers: from_pretrained with dequantize) and load that"
            )
        top = self._top(key, t)
        if top is not None:
            return top
        found = _layer_key(key)
        if found is None:
            return []
        i, rest = found
        named = [(f"layers.{i}.{n}", x) for n, x in self._layer(i, rest, t)]
        return [(n, self._fix(n, x)) for n, x in named]

    def _top(self, key: str, t: Tensor) -> list[tuple[str, Tensor]] | None:
        short = key
        for prefix in _PREFIXES:
            short = short.removeprefix(prefix)
        if short in ("embed_tokens.weight", "word_embeddings.weight"):
            return [("embed", t)]
        if key in ("lm_head.weight", "language_model.lm_head.weight"):
            return [] if self.spec.tie_embeddings else [("lm_head", t)]
        if short in ("norm.weight", "ln_f.weight"):
            return [("norm.weight", self._gemma_norm(t))]
        if short == "ln_f.bias":
            return [("norm.bias", t)]
        return None

    def _gemma_norm(self, t: Tensor) -> Tensor:
        return t + 1.0 if self.gemma else t

    def _fix(self, name: str, t: Tensor) -> Tensor:
        """Rotary permutation of q/k rows and Gemma's 1 + w norms."""
        short = name.split(".", 2)[2]
        if short.endswith("norm.weight"):
            t = self._gemma_norm(t)
        if not self.permute or not self.rot:
            return t
        spec = self.spec
        heads = {"wq": spec.num_heads, "bq": spec.num_heads, "wk": spec.kv_heads}
        heads["bk"] = spec.kv_heads
        if spec.qk_norm == "head":
            heads |= {"q_norm.weight": 1, "k_norm.weight": 1}
        elif spec.qk_norm == "full":
            heads |= {"q_norm.weight": spec.num_heads, "k_norm.weight": spec.kv_heads}
        if spec.mla is not None:
            return self._fix_mla(short, t)
        if short in heads:
            return half_to_interleaved(t, heads[short], self.rot)
        return t

    def _fix_mla(self, short: str, t: Tensor) -> Tensor:
        """DeepSeek-V3 with rope_interleave false: permute the rope rows of q and kv_a."""
        mla = self.spec.mla
        assert mla is not None
        if short in ("wq", "wq_b"):
            x = t.view(self.spec.num_heads, mla.qk_head_dim, -1)
            rope = half_to_interleaved(x[:, mla.qk_nope_dim :].reshape(-1, x.shape[-1]),
                                       self.spec.num_heads, self.rot)  # fmt: skip
            x = torch.cat([x[:, : mla.qk_nope_dim], rope.view(x.shape[0], -1, x.shape[-1])], 1)
            return x.reshape(t.shape)
        if short == "wkv_a":
            rope = half_to_interleaved(t[mla.kv_lora_rank :], 1, self.rot)
            return torch.cat([t[: mla.kv_lora_rank], rope])
        return t

    def _layer(self, i: int, rest: str, t: Tensor) -> Iterator[tuple[str, Tensor]]:
        spec = self.spec
        if rest.startswith("feed_forward."):  # Llama-4's name for the FFN
            rest = "mlp." + rest.removeprefix("feed_forward.")
        module, _, kind = rest.rpartition(".")
        w = "w" if kind == "weight" else "b"
        if self.family == "falcon":
            yield from self._falcon(module, kind, t)
            return
        post_attn = "ffn_norm" if spec.norm_placement == "pre" else "post_attn_norm"
        norms = {
            "input_layernorm": "attn_norm",
            "post_attention_layernorm": post_attn,
            "pre_feedforward_layernorm": "ffn_norm",
            "post_feedforward_layernorm": "post_ffn_norm",
            "self_attn.q_norm": "q_norm",
            "self_attn.k_norm": "k_norm",
        }  # fmt: skip
        if module in norms:
            yield f"{norms[module]}.{kind}", t
        elif rest == "self_attn.sinks":
            yield "sinks", t
        elif spec.mla is not None and module.startswith("self_attn."):
            name = _MLA[module.removeprefix("self_attn.")]
            yield name, t
        elif module.startswith("self_attn.") and module[10:] in _PROJ:
            yield f"{w}{_PROJ[module[10:]]}", t
        elif module == "self_attn.qkv_proj":  # Phi-3
            q, kv = spec.q_dim, spec.kv_dim
            for part, x in zip("qkv", t.split([q, kv, kv]), strict=True):
                yield f"{w}{part}", x
        elif module == "mlp.gate_up_proj" and not spec.is_moe_layer(i):  # Phi-3
            gate, up = t.chunk(2)
            yield f"{w}_gate", gate
            yield f"{w}_up", up
        elif spec.is_moe_layer(i):
            yield from self._moe(rest, t)
        elif module.startswith("mlp.") and module[4:] in _MLP:
            yield f"{w}{_MLP[module[4:]]}", t

    def _moe(self, rest: str, t: Tensor) -> Iterator[tuple[str, Tensor]]:
        rest = rest.replace("block_sparse_moe.", "mlp.")
        if rest in ("mlp.gate.weight", "mlp.router.weight"):
            yield "router", t
        elif rest == "mlp.router.bias":
            yield "router_bias", t
        elif rest == "mlp.gate.e_score_correction_bias":
            yield "score_bias", t
        elif rest == "mlp.shared_expert_gate.weight":
            yield "shared_gate", t
        elif match := re.fullmatch(r"mlp\.shared_experts?\.(\w+)_proj\.weight", rest):
            yield f"shared.w_{match[1]}", t
        elif match := re.fullmatch(r"mlp\.experts\.(\d+)\.(\w+)\.weight", rest):
            leaf = _MIXTRAL.get(match[2]) or "w_" + match[2].removesuffix("_proj")
            yield f"experts.{match[1]}.{leaf}", t
        elif rest.startswith("mlp.experts."):
            yield from self._fused_experts(rest.removeprefix("mlp.experts."), t)

    def _fused_experts(self, leaf: str, t: Tensor) -> Iterator[tuple[str, Tensor]]:
        oss = self.family == "gpt_oss"  # [E, h, 2f] with gate/up interleaved, and biases
        if leaf == "gate_up_proj":
            if self.llama4:  # [E, h, 2f]: gate then up along the last dimension
                gate, up = t.chunk(2, dim=-1)
                yield "experts.w_gate", gate.transpose(1, 2)
                yield "experts.w_up", up.transpose(1, 2)
            elif oss:
                yield "experts.w_gate", t[..., ::2].transpose(1, 2)
                yield "experts.w_up", t[..., 1::2].transpose(1, 2)
            else:
                gate, up = t.chunk(2, dim=1)
                yield "experts.w_gate", gate
                yield "experts.w_up", up
        elif leaf == "gate_up_proj_bias":
            yield "experts.b_gate", t[:, ::2]
            yield "experts.b_up", t[:, 1::2]
        elif leaf == "down_proj":
            yield "experts.w_down", t.transpose(1, 2) if oss or self.llama4 else t
        elif leaf == "down_proj_bias":
            yield "experts.b_down", t

    def _falcon(self, module: str, kind: str, t: Tensor) -> Iterator[tuple[str, Tensor]]:
        spec = self.spec
        w = "w" if kind == "weight" else "b"
        norms = {"input_layernorm": "attn_norm", "ln_attn": "attn_norm", "ln_mlp": "ffn_norm"}
        norms["post_attention_layernorm"] = "ffn_norm"
        if module in norms:
            yield f"{norms[module]}.{kind}", t
        elif module == "self_attention.query_key_value":
            yield from zip((f"{w}q", f"{w}k", f"{w}v"), _split_falcon(spec, t), strict=True)
        elif module == "self_attention.dense":
            yield f"{w}o", t
        elif module == "mlp.dense_h_to_4h":
            yield f"{w}_up", t
        elif module == "mlp.dense_4h_to_h":
            yield f"{w}_down", t


def _split_falcon(spec: ModelSpec, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Falcon's fused query_key_value rows -> q, k, v (weight [rows, h] or bias [rows])."""
    n, kv, d = spec.num_heads, spec.kv_heads, spec.dim_head
    tail = t.shape[1:]
    if spec.extra.get("new_decoder_architecture"):  # [kv groups × (n/kv queries + k + v)]
        x = t.view(kv, n // kv + 2, d, *tail)
        q = x[:, :-2].reshape(n * d, *tail)
        return q, x[:, -2].reshape(kv * d, *tail), x[:, -1].reshape(kv * d, *tail)
    if kv == 1:  # multi-query: n query heads, then one key and one value head
        x = t.view(n + 2, d, *tail)
        return x[:n].reshape(n * d, *tail), x[n], x[n + 1]
    x = t.view(n, 3, d, *tail)  # per head: q, k, v
    return tuple(x[:, j].reshape(n * d, *tail) for j in range(3))  # type: ignore[return-value]


def _config(path: Path) -> dict[str, Any]:
    file = path / "config.json"
    return json.loads(file.read_text()) if file.exists() else {}


def _check_config(spec: ModelSpec, path: Path, config: dict[str, Any]) -> None:
    """The checkpoint's config.json must describe the spec's shapes."""
    from infermeter.spec.hfconfig import spec_from_hf_config

    if not config:
        return
    family = config.get("model_type")
    if family not in LOADABLE:
        raise UserError(
            f"engine: checkpoint {path} is a {family!r}; loadable: {', '.join(LOADABLE)}"
        )
    theirs = spec_from_hf_config(config, spec.name, source=str(path))
    fields = ["hidden_size", "num_layers", "num_heads", "kv_heads", "ffn_dim", "vocab_size"]
    fields += ["dim_head", "moe", "mla", "gated", "tie_embeddings"]
    wrong = {
        name: (getattr(theirs, name), getattr(spec, name))
        for name in fields
        if getattr(theirs, name) != getattr(spec, name)
    }
    if wrong:
        raise UserError(f"engine: checkpoint {path} does not match spec {spec.name}: {wrong}")


@torch.inference_mode()
def load_hf_checkpoint(model: Decoder, path: str | Path) -> None:
    """Load a local safetensors checkpoint into the fused, sharded layout; every logical
    tensor of the spec must be found."""
    from safetensors import safe_open

    spec = model.spec
    path = Path(path).expanduser()
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else []
    if not files:
        raise UserError(f"engine: no *.safetensors files in checkpoint directory {path}")
    config = _config(path)
    _check_config(spec, path, config)
    mapper = _Mapper(spec, config)
    expected = {name for name, _, _ in logical_tensors(spec)}
    loaded: set[str] = set()
    experts: dict[str, set[int]] = {}  # "layers.i.experts.w_gate" -> experts loaded one by one
    device = "cpu" if model.device.type == "cpu" else str(model.device)
    for file in files:
        with safe_open(str(file), framework="pt", device=device) as f:
            for key in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                for name, tensor in mapper(key, f.get_tensor(key)):
                    whole = re.sub(r"\.experts\.(\d+)\.", ".experts.", name)
                    if whole not in expected:
                        continue
                    assign(model, name, tensor.to(model.dtype))
                    if whole != name:
                        experts.setdefault(whole, set()).add(int(name.split(".")[3]))
                    else:
                        loaded.add(name)
    count = spec.moe.num_experts if spec.moe is not None else 0
    loaded |= {name for name, got in experts.items() if len(got) == count}
    missing = sorted(expected - loaded)
    if missing:
        raise UserError(f"engine: checkpoint {path} lacks {', '.join(missing[:5])}")
