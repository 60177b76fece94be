"""ModelSpec from a Hugging Face `config.json`, without importing transformers.

Each supported `model_type` names its shape keys differently (GPT-2's `n_embd`, Llama's
`hidden_size`, ...); this module maps them onto ModelSpec fields. Optional keys that are
missing (older or hand-written configs; `save_pretrained` drops generic keys equal to their
defaults) take the defaults of the family's transformers config class. The shape keys (hidden
size, layers, heads, vocab, FFN size where the family has no 4h rule) are required: guessing
them would silently describe another model.

The per-family details are kept exactly, so parameter counts match transformers' models:
Qwen2's q/k/v-only biases, GPT-J's MLP-only biases and LM-head bias, GPT-NeoX's two norms per
parallel layer, OPT's two extra position rows and BLOOM's embedding layernorm.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from infermeter.errors import UserError
from infermeter.spec.model import DTYPE_BYTES, MLA, ModelSpec, MoE
from infermeter.workloads.queries import MAX_TOKENS
from infermeter.workloads.queries import flag as strict_flag

DEFAULT_DTYPE = "bfloat16"

_DTYPE_ALIASES = {
    "fp32": "float32",
    "float": "float32",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
}


class _Reader:
    """Reads keys from one config, collecting every missing required key before failing."""

    def __init__(self, config: dict[str, Any], where: str, family: str) -> None:
        self.config = config
        self.where = where
        self.family = family
        self.missing: list[str] = []

    def _first(self, names: tuple[str, ...]) -> Any:
        for key in names:
            if self.config.get(key) is not None:
                return self.config[key]
        return None

    def req(self, *names: str) -> Any:
        value = self._first(names)
        if value is None:
            self.missing.append(" or ".join(names))
        return value

    def opt(self, *names: str, default: Any = None) -> Any:
        value = self._first(names)
        return default if value is None else value

    def flag(self, *names: str, default: bool) -> bool:
        """A true/false key, strictly: the text "false" is not read as true."""
        for key in names:
            if self.config.get(key) is not None:
                return strict_flag(self.config[key], f"{self.where}: {key}")
        return default

    def check(self) -> None:
        if self.missing:
            raise UserError(
                f"{self.where}: {self.family} config lacks required key(s) "
                f"{', '.join(self.missing)}; add them to the config.json"
            )


def _ffn_activation(act: Any) -> str:
    """Ungated FFNs: only relu vs gelu matters to ModelSpec (same FLOPs either way)."""
    return "relu" if isinstance(act, str) and "relu" in act.lower() else "gelu"


def _rope_theta(r: _Reader, *names: str, default: float = 10000.0) -> Any:
    # transformers >= 4.56 may nest it as rope_parameters.rope_theta
    params = r.config.get("rope_parameters")
    if isinstance(params, dict) and params.get("rope_theta") is not None:
        return params["rope_theta"]
    return r.opt(*names, default=default)


def _gpt2(r: _Reader) -> dict[str, Any]:
    act = r.opt("activation_function", default="gelu_new")
    return {
        "hidden_size": r.req("n_embd", "hidden_size"),
        "num_layers": r.req("n_layer", "num_hidden_layers"),
        "num_heads": r.req("n_head", "num_attention_heads"),
        "vocab_size": r.req("vocab_size"),
        "ffn_size": r.opt("n_inner"),  # None: 4h
        "ffn_kind": _ffn_activation(act),
        "position": "learned",
        "norm": "layernorm",
        "norm_eps": r.opt("layer_norm_epsilon", default=1e-5),
        "bias": True,
        "tie_embeddings": r.flag("tie_word_embeddings", default=True),
        "max_context": r.opt("n_positions", "n_ctx", "max_position_embeddings", default=1024),
        "extra": {"hidden_act": act},
    }


def _gptj(r: _Reader) -> dict[str, Any]:
    hidden = r.req("n_embd", "hidden_size")
    heads = r.req("n_head", "num_attention_heads")
    rotary_dim = r.opt("rotary_dim")
    fraction = 1.0
    numbers = all(isinstance(v, int) and v > 0 for v in (rotary_dim, hidden, heads))
    if numbers and hidden >= heads:  # otherwise ModelSpec reports the bad shape
        fraction = rotary_dim / (hidden // heads)
    act = r.opt("activation_function", default="gelu_new")
    return {
        "hidden_size": hidden,
        "num_layers": r.req("n_layer", "num_hidden_layers"),
        "num_heads": heads,
        "vocab_size": r.req("vocab_size"),
        "ffn_size": r.opt("n_inner"),
        "ffn_kind": _ffn_activation(act),
        "position": "rotary",
        "rotary_fraction": fraction,
        "norm": "layernorm",
        "norm_eps": r.opt("layer_norm_epsilon", default=1e-5),
        "parallel_attn_ffn": True,
        "bias": False,  # q/k/v/out have none; the MLP and the LM head do
        "mlp_bias": True,
        "lm_head_bias": True,
        "tie_embeddings": r.flag("tie_word_embeddings", default=False),
        "max_context": r.opt("n_positions", "max_position_embeddings", default=2048),
        "extra": {"hidden_act": act},
    }


def _gpt_neox(r: _Reader) -> dict[str, Any]:
    act = r.opt("hidden_act", default="gelu")
    return {
        "hidden_size": r.req("hidden_size"),
        "num_layers": r.req("num_hidden_layers"),
        "num_heads": r.req("num_attention_heads"),
        "vocab_size": r.req("vocab_size"),
        "ffn_size": r.req("intermediate_size"),
        "ffn_kind": _ffn_activation(act),
        "position": "rotary",
        "rotary_fraction": r.opt("rotary_pct", default=0.25),
        "rope_theta": _rope_theta(r, "rotary_emb_base", "rope_theta"),
        "norm": "layernorm",
        "norm_eps": r.opt("layer_norm_eps", default=1e-5),
        "parallel_attn_ffn": r.opt("use_parallel_residual", default=True),
        "parallel_norms": 2,  # NeoX keeps both layernorms even with the parallel residual
        "bias": r.opt("attention_bias", default=True),
        "tie_embeddings": r.flag("tie_word_embeddings", default=False),
        "max_context": r.opt("max_position_embeddings", default=2048),
        "extra": {"hidden_act": act},
    }


def _bloom(r: _Reader) -> dict[str, Any]:
    return {
        "hidden_size": r.req("hidden_size", "n_embed"),
        "num_layers": r.req("n_layer", "num_hidden_layers"),
        "num_heads": r.req("n_head", "num_attention_heads"),
        "vocab_size": r.req("vocab_size"),
        "ffn_kind": "gelu",
        "position": "alibi",
        "norm": "layernorm",
        "norm_eps": r.opt("layer_norm_epsilon", default=1e-5),
        "bias": True,
        "embedding_norm": True,  # word_embeddings_layernorm
        "tie_embeddings": r.flag("tie_word_embeddings", default=True),
        # ALiBi has no position table; BLOOM was trained on 2048-token sequences
        "max_context": r.opt("seq_length", "max_position_embeddings", default=2048),
    }


def _opt(r: _Reader) -> dict[str, Any]:
    hidden = r.req("hidden_size")
    proj = r.opt("word_embed_proj_dim", default=hidden)
    if hidden is not None and proj != hidden:
        raise UserError(
            f"{r.where}: opt config has word_embed_proj_dim={proj} != hidden_size={hidden} "
            "(OPT-350m-style embedding projections), which ModelSpec cannot describe; "
            "use another OPT size or a catalog model"
        )
    act = r.opt("activation_function", default="relu")
    return {
        "hidden_size": hidden,
        "num_layers": r.req("num_hidden_layers"),
        "num_heads": r.req("num_attention_heads"),
        "vocab_size": r.req("vocab_size"),
        "ffn_size": r.req("ffn_dim"),
        "ffn_kind": _ffn_activation(act),
        "position": "learned",
        "norm": "layernorm",
        "bias": r.opt("enable_bias", default=True),
        "position_offset": 2,  # OPT's learned positions start at row 2
        "tie_embeddings": r.flag("tie_word_embeddings", default=True),
        "max_context": r.opt("max_position_embeddings", default=2048),
        "extra": {"hidden_act": act},
    }


def _rope_scaling(r: _Reader) -> dict[str, Any] | None:
    """The rope scaling parameters (type, factor, ...) without the base, or None (plain)."""
    params = r.config.get("rope_parameters")
    if isinstance(params, dict) and isinstance(params.get("full_attention"), dict):
        params = params["full_attention"]  # per-layer-type rope parameters (Gemma-3)
    if not isinstance(params, dict):
        params = r.config.get("rope_scaling")
    if not isinstance(params, dict):
        return None
    scaling = {k: v for k, v in params.items() if k != "rope_theta"}
    kind = scaling.pop("type", None) or scaling.get("rope_type")
    if kind in (None, "default"):
        return None
    scaling["rope_type"] = kind
    return scaling


def _windows(r: _Reader, layers: Any, *, default_pattern: int = 0) -> dict[str, Any]:
    """sliding_window and layer_types from a config: its own layer_types, else every
    `default_pattern`-th layer full and the others sliding (Gemma, gpt-oss), else every layer
    sliding (Mistral, Phi-3: a window and no pattern)."""
    window = r.opt("sliding_window")
    if r.family in ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe") and not r.opt(
        "use_sliding_window", default=False
    ):
        window = None  # Qwen configs name a window they do not use
    if window is None or not isinstance(layers, int):
        return {}
    names = r.opt("layer_types")
    if isinstance(names, list):
        types = tuple("sliding" if "sliding" in str(t) else "full" for t in names)
    elif default_pattern:
        types = tuple(
            "full" if (i + 1) % default_pattern == 0 else "sliding" for i in range(layers)
        )
    else:
        types = ()
    if types and "sliding" not in types:
        return {}
    return {"sliding_window": window, "layer_types": types}


def _decoder(r: _Reader, *, max_context: int) -> dict[str, Any]:
    """The shared layout of the Llama line: RMSNorm, gated FFN, RoPE, GQA, no biases."""
    heads = r.req("num_attention_heads")
    extra: dict[str, Any] = {"hidden_act": r.opt("hidden_act", "hidden_activation", default="silu")}
    bias = r.flag("attention_bias", default=False)
    return {
        "hidden_size": r.req("hidden_size"),
        "num_layers": r.req("num_hidden_layers"),
        "num_heads": heads,
        "num_kv_heads": r.opt("num_key_value_heads", default=heads),
        "vocab_size": r.req("vocab_size"),
        "ffn_size": r.req("intermediate_size"),
        "ffn_kind": "swiglu",
        "head_dim": r.opt("head_dim"),
        "position": "rotary",
        "rope_theta": _rope_theta(r, "rope_theta"),
        "rope_scaling": _rope_scaling(r),
        "norm": "rmsnorm",
        "norm_eps": r.opt("rms_norm_eps", default=1e-6),
        "bias": False,
        "qkv_bias": bias,  # Llama's attention_bias covers q/k/v and o
        "out_bias": bias,
        "mlp_bias": r.flag("mlp_bias", default=False),
        "tie_embeddings": r.flag("tie_word_embeddings", default=False),
        "max_context": r.opt("max_position_embeddings", default=max_context),
        "extra": extra,
    }


def _llama_like(max_context: int) -> Callable[[_Reader], dict[str, Any]]:
    """Llama, Mistral, Qwen2, Qwen3, Phi-3 and OLMo-2 share one layout: RMSNorm, gated SiLU
    FFN, RoPE, GQA; Qwen2 biases q/k/v, Qwen3 norms q and k per head, OLMo-2 norms the whole
    q and k projections and puts its norms after each sublayer, Phi-3 fuses qkv (a checkpoint
    matter only) and windows every layer."""

    def parse(r: _Reader) -> dict[str, Any]:
        fields = _decoder(r, max_context=max_context)
        fields.update(_windows(r, fields["num_layers"]))
        if r.family == "qwen2":  # Qwen2 biases q/k/v only
            fields["qkv_bias"], fields["out_bias"] = True, False
        if r.family == "qwen3":
            fields["qk_norm"] = "head"
        if r.family == "olmo2":
            fields["qk_norm"], fields["norm_placement"] = "full", "post"
        if r.family == "phi3":
            partial = r.opt("partial_rotary_factor", default=1.0)
            fields["rotary_fraction"] = partial
        return fields

    return parse


def _moe_layers(r: _Reader) -> dict[str, Any]:
    """Which layers are MoE: Qwen's decoder_sparse_step / mlp_only_layers, DeepSeek's
    first_k_dense_replace."""
    return {
        "layer_step": r.opt("decoder_sparse_step", default=1),
        "dense_layers": tuple(r.opt("mlp_only_layers", default=())),
        "first_dense_layers": r.opt("first_k_dense_replace", default=0),
    }


def _mixtral(r: _Reader) -> dict[str, Any]:
    fields = _decoder(r, max_context=4096 * 32)
    fields.update(_windows(r, fields["num_layers"]))
    fields["moe"] = {
        "num_experts": r.req("num_local_experts"),
        "experts_per_token": r.opt("num_experts_per_tok", default=2),
        "expert_ffn_size": fields["ffn_size"],
    }
    return fields


def _qwen_moe(r: _Reader) -> dict[str, Any]:
    """Qwen2-MoE (q/k/v biases, a gated shared expert) and Qwen3-MoE (qk-norm, no shared)."""
    fields = _decoder(r, max_context=32768)
    fields.update(_windows(r, fields["num_layers"]))
    moe = {
        "num_experts": r.req("num_experts", "num_local_experts"),
        "experts_per_token": r.req("num_experts_per_tok"),
        "expert_ffn_size": r.req("moe_intermediate_size"),
        "normalize": r.flag("norm_topk_prob", default=False),
        **_moe_layers(r),
    }
    if r.family == "qwen2_moe":
        fields["qkv_bias"], fields["out_bias"] = r.flag("qkv_bias", default=True), False
        shared = r.opt("shared_expert_intermediate_size", default=5632)
        moe.update(shared_ffn_size=shared, num_shared_experts=1 if shared else 0)
        moe["shared_gate"] = bool(shared)
    else:
        fields["qk_norm"] = "head"
    fields["moe"] = moe
    return fields


def _deepseek(r: _Reader) -> dict[str, Any]:
    """DeepSeek-V2/V3: MLA attention and a MoE of routed + shared experts after the first
    dense layers. V2 routes by softmax (never renormalised, as transformers does), V3 by
    sigmoid with a selection bias and group-limited top-k."""
    fields = _decoder(r, max_context=2048 if r.family == "deepseek_v2" else 4096)
    heads = fields["num_heads"]
    fields["num_kv_heads"] = heads  # MLA: every head has its own (expanded) K/V
    fields["head_dim"] = None
    for key in ("kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim"):
        if key in r.config and r.config[key] is None:  # absent takes transformers' default
            raise UserError(
                f"{r.where}: {key} is null, but multi-head latent attention needs it; give "
                f"the checkpoint's value (DeepSeek-V2/V3 ship kv_lora_rank 512, "
                f"qk_nope_head_dim 128, qk_rope_head_dim 64, v_head_dim 128)"
            )
    nope, rope = r.opt("qk_nope_head_dim", default=128), r.opt("qk_rope_head_dim", default=64)
    q_lora = r.config.get("q_lora_rank", 1536)  # null: queries without a LoRA (V2-Lite)
    fields["mla"] = {
        "kv_lora_rank": r.opt("kv_lora_rank", default=512),
        "qk_nope_dim": nope,
        "qk_rope_dim": rope,
        "v_head_dim": r.opt("v_head_dim", default=128),
        "q_lora_rank": q_lora,
    }
    scale = _yarn_mscale(fields["rope_scaling"], nope, rope)
    if scale is not None:
        fields["attn_scale"] = scale
    experts = r.opt("n_routed_experts", "num_local_experts", default=64)
    moe_size = r.opt("moe_intermediate_size", default=1407)
    shared = r.opt("n_shared_experts", default=2 if r.family == "deepseek_v2" else 1) or 0
    v3 = r.family == "deepseek_v3"
    method = r.opt("topk_method", default="noaux_tc" if v3 else "greedy")
    grouped = v3 or method == "group_limited_greedy"
    fields["moe"] = {
        "num_experts": experts,
        "experts_per_token": r.opt("num_experts_per_tok", default=8 if v3 else 6),
        "expert_ffn_size": moe_size,
        "shared_ffn_size": shared * moe_size,
        "num_shared_experts": shared,
        "scoring": "sigmoid" if v3 else "softmax",
        "normalize": r.flag("norm_topk_prob", default=True) if v3 else False,
        "scale": float(r.opt("routed_scaling_factor", default=2.5 if v3 else 1.0)),
        "groups": (r.opt("n_group", default=8 if v3 else 1) or 1) if grouped else 1,
        "top_groups": (r.opt("topk_group", default=4 if v3 else 1) or 1) if grouped else 1,
        "group_score": "top2" if v3 else "max",
        "score_correction": v3,
        **_moe_layers(r),
    }
    fields["extra"]["rope_interleave"] = r.flag("rope_interleave", default=True) or not v3
    return fields


def _yarn_mscale(scaling: dict[str, Any] | None, nope: Any, rope: Any) -> float | None:
    """DeepSeek's softmax scale under YaRN: (nope + rope)^-1/2 · mscale(factor, all_dim)²."""
    if not scaling or scaling.get("rope_type") != "yarn" or not scaling.get("mscale_all_dim"):
        return None
    if not (isinstance(nope, int) and isinstance(rope, int)):
        return None
    factor = float(scaling.get("factor") or 1.0)
    mscale = 1.0 if factor <= 1 else 0.1 * scaling["mscale_all_dim"] * math.log(factor) + 1.0
    return (nope + rope) ** -0.5 * mscale * mscale


def _gpt_oss(r: _Reader) -> dict[str, Any]:
    """gpt-oss: attention with biases and sinks, alternating 128-token windows, and a MoE
    whose router and experts have biases and whose SwiGLU is clamped."""
    fields = _decoder(r, max_context=131072)
    fields.update(_windows(r, fields["num_layers"], default_pattern=2))
    bias = r.flag("attention_bias", default=True)
    fields.update(qkv_bias=bias, out_bias=bias, attention_sinks=True, ffn_kind="clamped_swiglu")
    fields["head_dim"] = r.opt("head_dim", default=64)
    fields["extra"].update(
        swiglu_limit=r.opt("swiglu_limit", default=7.0),
        swiglu_alpha=r.opt("swiglu_alpha", default=1.702),
    )
    fields["moe"] = {
        "num_experts": r.req("num_local_experts"),
        "experts_per_token": r.opt("num_experts_per_tok", "experts_per_token", default=4),
        "expert_ffn_size": fields["ffn_size"],
        "router_bias": True,
        "expert_bias": True,
    }
    return fields


def _gemma(r: _Reader) -> dict[str, Any]:
    """Gemma-2/3: GeGLU, sandwich norms, embeddings scaled by sqrt(h), tied head; Gemma-2
    soft-caps scores and logits and alternates 4096-token windows; Gemma-3 norms q and k,
    keeps 5 windowed layers of 6 with their own rotary base. A Gemma-3 multimodal config is
    read through its text_config (the vision tower is not counted)."""
    gemma3 = r.family in ("gemma3", "gemma3_text")
    fields = _decoder(r, max_context=131072 if gemma3 else 8192)
    pattern = r.opt("sliding_window_pattern", "_sliding_window_pattern", default=6 if gemma3 else 2)
    fields.update(_windows(r, fields["num_layers"], default_pattern=pattern))
    head_dim = r.opt("head_dim", default=256)
    fields.update(
        ffn_kind="geglu",
        head_dim=head_dim,
        norm_placement="sandwich",
        tie_embeddings=r.flag("tie_word_embeddings", default=True),
        attn_scale=float(r.opt("query_pre_attn_scalar", default=256)) ** -0.5,
    )
    hidden = fields["hidden_size"]
    if isinstance(hidden, int):
        fields["embedding_multiplier"] = math.sqrt(hidden)
    fields["attn_softcap"] = r.opt("attn_logit_softcapping", default=None if gemma3 else 50.0)
    fields["final_softcap"] = r.opt("final_logit_softcapping", default=None if gemma3 else 30.0)
    if gemma3:
        fields["qk_norm"] = "head"
        local = r.opt("rope_local_base_freq", default=10000.0)
        params = r.config.get("rope_parameters")
        if isinstance(params, dict) and isinstance(params.get("sliding_attention"), dict):
            local = params["sliding_attention"].get("rope_theta", local)
        if isinstance(params, dict) and isinstance(params.get("full_attention"), dict):
            fields["rope_theta"] = params["full_attention"].get("rope_theta", 1e6)
        elif fields["rope_theta"] == 10000.0 and r.config.get("rope_theta") is None:
            fields["rope_theta"] = 1e6  # Gemma3TextConfig's global base
        fields["local_rope_theta"] = local
    return fields


def _llama4(r: _Reader) -> dict[str, Any]:
    """Llama-4 (text): a MoE of top-1 routed experts plus a shared expert, on every or every
    other layer, dense layers of their own width; the routing weight (a sigmoid) scales the
    expert's input. The rotary layers attend within aligned chunks (chunked_attention, the
    chunk as sliding_window) and L2-norm q and k without weights; the other layers (every
    no_rope_layer_interval-th: nope_layers) have no rotary positions, attend globally and,
    with attn_temperature_tuning, scale their queries by position (transformers'
    Llama4TextAttention)."""
    fields = _decoder(r, max_context=4096 * 32)
    layers = fields["num_layers"]
    expert = fields["ffn_size"]
    fields["ffn_size"] = r.opt("intermediate_size_mlp", default=16384)
    fields["head_dim"] = r.opt("head_dim", default=128)
    moe_layers = r.opt("moe_layers")
    listed = isinstance(moe_layers, list) and isinstance(layers, int)
    fields["moe"] = {
        "num_experts": r.opt("num_local_experts", default=16),
        "experts_per_token": r.opt("num_experts_per_tok", default=1),
        "expert_ffn_size": expert,
        "shared_ffn_size": expert,
        "num_shared_experts": 1,
        "layer_step": 1 if listed else r.opt("interleave_moe_layer_step", default=1),
        "dense_layers": tuple(i for i in range(layers) if i not in moe_layers) if listed else (),
        "scoring": "sigmoid",
        "normalize": False,
        "input_scaled": True,
    }
    # absent: 8192 (transformers' default); null: no chunks, every layer attends globally
    chunk = r.config.get("attention_chunk_size", 8192)
    rope = r.opt("no_rope_layers")  # 1: a rope (chunked) layer, 0: a NoPE (global) layer
    interval = r.opt("no_rope_layer_interval", default=4)
    if isinstance(layers, int):
        if not isinstance(rope, list) or not rope:
            rope = [int((i + 1) % interval != 0) for i in range(layers)]
        fields["nope_layers"] = tuple(i for i, flag in enumerate(rope) if not flag)
        if chunk is not None:
            fields["sliding_window"] = chunk
            fields["chunked_attention"] = True
            fields["layer_types"] = tuple("sliding" if flag else "full" for flag in rope)
    if r.flag("use_qk_norm", default=True):
        fields["qk_norm"] = "l2"
    if r.flag("attn_temperature_tuning", default=True):
        fields["attn_temperature"] = (
            r.opt("floor_scale", default=8192),
            r.opt("attn_scale", default=0.1),
        )
    fields["extra"]["attention_chunk_size"] = chunk
    return fields


def _falcon(r: _Reader) -> dict[str, Any]:
    """Falcon: parallel attention + FFN, multi-query (7B) or grouped (new_decoder_architecture,
    40B/180B) attention, LayerNorm, exact GELU, fused qkv."""
    heads = r.req("num_attention_heads", "n_head")
    new = r.flag("new_decoder_architecture", default=False)
    if new:
        kv = r.opt("num_kv_heads", default=heads)
    else:
        kv = 1 if r.opt("multi_query", default=True) else heads
    hidden = r.req("hidden_size")
    if r.opt("alibi", default=False):
        raise UserError(f"{r.where}: falcon with alibi=true is not supported; use a rotary Falcon")
    parallel = r.flag("parallel_attn", default=True)
    norms = r.opt("num_ln_in_parallel_attn", default=2 if new else 1)
    act = r.opt("activation", default="gelu")
    return {
        "hidden_size": hidden,
        "num_layers": r.req("num_hidden_layers", "n_layer"),
        "num_heads": heads,
        "num_kv_heads": kv,
        "vocab_size": r.req("vocab_size"),
        "ffn_size": r.opt("ffn_hidden_size"),
        "ffn_kind": "relu" if "relu" in str(act) else "gelu_exact",
        "position": "rotary",
        "rope_theta": _rope_theta(r, "rope_theta"),
        "rope_scaling": _rope_scaling(r),
        "norm": "layernorm",
        "norm_eps": r.opt("layer_norm_epsilon", default=1e-5),
        "parallel_attn_ffn": parallel or new,
        "parallel_norms": 2 if (new and norms == 2) else 1,
        "bias": r.flag("bias", default=False),
        "tie_embeddings": r.flag("tie_word_embeddings", default=True),
        "max_context": r.opt("max_position_embeddings", default=2048),
        "extra": {"hidden_act": act, "new_decoder_architecture": new},
    }


# max_context defaults are those of the transformers config classes
_FAMILIES: dict[str, Callable[[_Reader], dict[str, Any]]] = {
    "bloom": _bloom,
    "deepseek_v2": _deepseek,
    "deepseek_v3": _deepseek,
    "falcon": _falcon,
    "gemma2": _gemma,
    "gemma3": _gemma,
    "gemma3_text": _gemma,
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "gpt_oss": _gpt_oss,
    "gptj": _gptj,
    "llama": _llama_like(2048),
    "llama4": _llama4,
    "llama4_text": _llama4,
    "mistral": _llama_like(4096 * 32),
    "mixtral": _mixtral,
    "olmo2": _llama_like(2048),
    "opt": _opt,
    "phi3": _llama_like(4096),
    "qwen2": _llama_like(32768),
    "qwen2_moe": _qwen_moe,
    "qwen3": _llama_like(32768),
    "qwen3_moe": _qwen_moe,
}

# Not transformers: no attention and no KV cache, so neither the runtime model's prefill/decode
# split by context nor the engine describes them.
_NOT_TRANSFORMERS = {
    "mamba": "a state-space model",
    "mamba2": "a state-space model",
    "falcon_mamba": "a state-space model",
    "rwkv": "a linear-attention RNN",
    "rwkv5": "a linear-attention RNN",
    "rwkv6": "a linear-attention RNN",
    "rwkv7": "a linear-attention RNN",
}

SUPPORTED_FAMILIES: tuple[str, ...] = tuple(sorted(_FAMILIES))


def _dtype(config: dict[str, Any], where: str) -> str:
    raw = config.get("torch_dtype", config.get("dtype"))
    if raw is None or raw == "auto":
        return DEFAULT_DTYPE
    text = str(raw).lower().removeprefix("torch.")
    text = _DTYPE_ALIASES.get(text, text)
    if text.startswith("float8"):
        text = "float8"
    if text not in DTYPE_BYTES:
        raise UserError(
            f"{where}: unsupported dtype {raw!r}; set torch_dtype to one of "
            f"{', '.join(sorted(DTYPE_BYTES))}"
        )
    return text


def spec_from_hf_config(
    config: dict[str, Any], name: str, *, source: str | None = None
) -> ModelSpec:
    """Build a ModelSpec from a parsed Hugging Face config (a dict, as in config.json).

    `source` (default: `name`) says where the config came from, e.g. its path; error messages
    and the spec's `source` field refer to the config by it.
    """
    where = source or name
    if not isinstance(config, dict):
        raise UserError(
            f"{where}: config is a JSON {type(config).__name__}, not an object; "
            "pass a Hugging Face config.json"
        )
    family = config.get("model_type")
    if family is not None and not isinstance(family, str):
        raise UserError(f'{where}: model_type is {family!r}; it must be a name, e.g. "llama"')
    if not family:
        raise UserError(
            f"{where}: config has no model_type; add it (one of "
            f"{', '.join(SUPPORTED_FAMILIES)}) or pick a catalog model"
        )
    if family in _NOT_TRANSFORMERS:
        raise UserError(
            f"{where}: model_type {family!r} is {_NOT_TRANSFORMERS[family]}, not a transformer "
            "(no attention, no KV cache), so infermeter's prefill/decode model and engine do "
            "not describe it; pick a transformer"
        )
    # multimodal configs: the language model is the text_config (save_pretrained drops its
    # keys equal to the text config class's defaults; the vocabulary is one of them)
    inner_type = {"gemma3": ("gemma3_text", 262208), "llama4": ("llama4_text", 202048)}
    if family in inner_type and isinstance(config.get("text_config"), dict):
        text_type, vocab = inner_type[family]
        inner = {"vocab_size": vocab, **config["text_config"], "model_type": text_type}
        for key in ("torch_dtype", "dtype", "_name_or_path"):
            inner.setdefault(key, config.get(key))
        spec = spec_from_hf_config(inner, name, source=source)
        note = f"{family}: the language model of a multimodal config (vision tower not counted)"
        return replace(spec, extra={**spec.extra, "model_type": family, "note": note})
    if family not in _FAMILIES:
        raise UserError(
            f"{where}: unsupported model_type {family!r}; supported: "
            f"{', '.join(SUPPORTED_FAMILIES)} (or pick a catalog model, see `infermeter models`)"
        )
    reader = _Reader(config, where, family)
    try:
        fields = _FAMILIES[family](reader)
    except UserError:
        raise
    except (TypeError, ValueError, OverflowError, ZeroDivisionError, AttributeError) as error:
        # arithmetic on a key of the wrong type (text where a number goes, a list, ...)
        raise UserError(
            f"{where}: invalid {family} config ({str(error).splitlines()[0]}); check the "
            "types of its keys (numbers, true/false) in the config.json"
        ) from error
    reader.check()
    _check_sizes(fields, where)
    fields["extra"] = {"model_type": family, **fields.get("extra", {})}
    if isinstance(config.get("quantization_config"), dict):
        fields["extra"]["quantization"] = config["quantization_config"].get("quant_method")
    try:
        # JSON writes 10000 for 10000.0; ModelSpec's float fields should hold floats
        for key in ("rope_theta", "norm_eps", "rotary_fraction", "local_rope_theta"):
            if fields.get(key) is not None:
                if isinstance(fields[key], bool) or not math.isfinite(float(fields[key])):
                    raise ValueError(f"{key} must be a finite number, got {fields[key]!r}")
                fields[key] = float(fields[key])
        if isinstance(fields.get("moe"), dict):
            fields["moe"] = MoE(**fields["moe"])
        if isinstance(fields.get("mla"), dict):
            fields["mla"] = MLA(**fields["mla"])
        return ModelSpec(
            name=name,
            dtype=_dtype(config, where),
            family=family,
            source=f"Hugging Face config.json: {where}",
            **fields,
        )
    except (TypeError, ValueError, OverflowError) as error:
        # ModelSpec validates shapes (divisibility, positive ints); relay as a user mistake
        message = str(error).removeprefix(f"{name}: ")
        raise UserError(f"{where}: invalid config: {message}; fix the config.json") from error


# Shapes past these are typos (or hostile files), and their products overflow: the largest
# dimension of any model today is far below 2**31, and no context reaches MAX_TOKENS.
_MAX_DIMENSION = 2**31 - 1


def _check_sizes(fields: dict[str, Any], where: str) -> None:
    """Refuse whole numbers too large to be a model's shape, and non-finite float keys."""
    groups = [("", fields)] + [
        (f"{name}.", fields[name]) for name in ("moe", "mla") if isinstance(fields.get(name), dict)
    ]
    for prefix, group in groups:
        for key, value in group.items():
            limit = MAX_TOKENS if key == "max_context" else _MAX_DIMENSION
            if isinstance(value, int) and not isinstance(value, bool) and abs(value) > limit:
                raise UserError(
                    f"{where}: {prefix}{key} = {value} is too large for a model's shape (at "
                    f"most {limit:,}); fix the config.json"
                )
            if isinstance(value, float) and not math.isfinite(value):
                raise UserError(f"{where}: {prefix}{key} = {value} is not finite; fix it")


def _name_for(config: dict[str, Any], path: Path) -> str:
    hub_id = config.get("_name_or_path")
    # a hub id ("meta-llama/Llama-2-7b-hf") names the model better than a file name;
    # a local path recorded by save_pretrained does not
    if isinstance(hub_id, str) and hub_id and not hub_id.startswith(("/", ".", "~")):
        return hub_id
    return path.parent.name if path.name == "config.json" else path.stem


def load_hf_config(path: str | os.PathLike[str]) -> ModelSpec:
    """ModelSpec from a config.json file, or from a directory holding one."""
    file = Path(path).expanduser()
    if file.is_dir():
        if not (file / "config.json").is_file():
            raise UserError(
                f"{file}: directory has no config.json; pass a Hugging Face model directory "
                "or the path of its config.json"
            )
        file = file / "config.json"
    if not file.exists():
        raise UserError(
            f"{file}: no such file; pass the path of a Hugging Face config.json "
            "(or a catalog name, see `infermeter models`)"
        )
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise UserError(
            f"{file}: cannot read the file ({reason}); check the path and its permissions"
        ) from error
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(
            f"{file}: not valid JSON ({error.msg} at line {error.lineno}, column "
            f"{error.colno}); pass a Hugging Face config.json"
        ) from error
    if not isinstance(config, dict):
        raise UserError(
            f"{file}: JSON {type(config).__name__}, not an object; pass a Hugging Face config.json"
        )
    return spec_from_hf_config(config, _name_for(config, file), source=str(file))
