"""Tiny transformers configs of today's families (issue 20), for CPU tests of the spec reader
and the engine. Each keeps the family's distinguishing parts switched on (experts, shared
experts, dense first layers, latent attention, windows shorter than the test prompts, sinks,
soft-caps, qk-norm, fused projections) at sizes that build and run in well under a second."""

from __future__ import annotations

from typing import Any

SHAPE: dict[str, Any] = {
    "hidden_size": 64,
    "num_hidden_layers": 3,
    "num_attention_heads": 4,
    "vocab_size": 256,
    "max_position_embeddings": 256,
}
WINDOW = 8  # shorter than the test prompts, so the ring buffers wrap

FAMILIES: dict[str, tuple[str, dict[str, Any]]] = {
    "mixtral": (
        "MixtralConfig",
        {"intermediate_size": 96, "num_key_value_heads": 2, "num_local_experts": 4,
         "num_experts_per_tok": 2},
    ),
    "qwen2_moe": (
        "Qwen2MoeConfig",
        {"intermediate_size": 96, "moe_intermediate_size": 32,
         "shared_expert_intermediate_size": 48, "num_key_value_heads": 2, "num_experts": 8,
         "num_experts_per_tok": 2, "mlp_only_layers": [1]},
    ),
    "qwen3_moe": (
        "Qwen3MoeConfig",
        {"intermediate_size": 96, "moe_intermediate_size": 32, "num_key_value_heads": 2,
         "num_experts": 8, "num_experts_per_tok": 2, "head_dim": 16, "norm_topk_prob": True},
    ),
    "deepseek_v2": (
        "DeepseekV2Config",
        {"intermediate_size": 96, "moe_intermediate_size": 32, "num_key_value_heads": 4,
         "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 2,
         "first_k_dense_replace": 1, "kv_lora_rank": 32, "q_lora_rank": None,
         "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
         "topk_method": "group_limited_greedy", "n_group": 4, "topk_group": 2,
         "routed_scaling_factor": 1.5},
    ),
    "deepseek_v3": (
        "DeepseekV3Config",
        {"intermediate_size": 96, "moe_intermediate_size": 32, "num_key_value_heads": 4,
         "n_routed_experts": 8, "num_experts_per_tok": 2, "n_shared_experts": 1,
         "first_k_dense_replace": 1, "kv_lora_rank": 32, "q_lora_rank": 24,
         "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16, "n_group": 4,
         "topk_group": 2},
    ),
    "gpt_oss": (
        "GptOssConfig",
        {"intermediate_size": 96, "num_key_value_heads": 2, "head_dim": 16,
         "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": WINDOW},
    ),
    "gemma2": (
        "Gemma2Config",
        {"intermediate_size": 96, "num_key_value_heads": 2, "head_dim": 16,
         "sliding_window": WINDOW, "query_pre_attn_scalar": 24},
    ),
    "gemma3": (
        "Gemma3TextConfig",
        {"intermediate_size": 96, "num_key_value_heads": 2, "head_dim": 16,
         "sliding_window": WINDOW, "query_pre_attn_scalar": 24, "sliding_window_pattern": 2},
    ),
    "phi3": (
        "Phi3Config",
        {"intermediate_size": 96, "num_key_value_heads": 2, "sliding_window": WINDOW,
         "pad_token_id": 0},
    ),
    "falcon": (
        "FalconConfig",
        {"new_decoder_architecture": False, "multi_query": True, "parallel_attn": True,
         "bias": False},
    ),
    "falcon_new": (
        "FalconConfig",
        {"num_kv_heads": 2, "new_decoder_architecture": True, "bias": True},
    ),
    "qwen3": ("Qwen3Config", {"intermediate_size": 96, "num_key_value_heads": 2, "head_dim": 16}),
    "olmo2": (
        "Olmo2Config", {"intermediate_size": 96, "num_key_value_heads": 2, "pad_token_id": 0}
    ),
    # Llama-4: layer 1 without rotary (global, query temperature from position 3 on: floor
    # scale 4), layers 0 and 2 chunked (chunks of WINDOW) with the weightless qk-norm; MoE
    # (top-1, input-scaled, shared expert) on layers 0 and 1, a dense FFN of its own width on 2
    "llama4": (
        "Llama4TextConfig",
        {"intermediate_size": 32, "intermediate_size_mlp": 96, "num_key_value_heads": 2,
         "head_dim": 16, "num_local_experts": 4, "num_experts_per_tok": 1,
         "moe_layers": [0, 1], "no_rope_layers": [1, 0, 1], "attention_chunk_size": WINDOW,
         "floor_scale": 4, "attn_scale": 0.5, "use_qk_norm": True},
    ),
}  # fmt: skip


def tiny_config(family: str) -> Any:
    """The transformers config object of `family`'s tiny test model."""
    import transformers

    cls, fields = FAMILIES[family]
    return getattr(transformers, cls)(**SHAPE, **fields)
