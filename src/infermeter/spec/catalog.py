"""The built-in catalog of model architectures, each with the source of its numbers.

Three groups: the ten models of Table 1 of the idealized-runtime paper (h, l, n exactly as
printed there), LLaMA / Llama-3 / GPT-2 as published, and tiny specs for fast CPU tests.
Names are looked up case-insensitively, with spaces and underscores read as hyphens, so the
paper's display names ("OpenAI/davinci", "AI21/J1-Large v1") work as well as canonical ones.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pandas as pd

from infermeter.errors import UserError
from infermeter.spec.hfconfig import spec_from_hf_config
from infermeter.spec.model import ModelSpec
from infermeter.units import bytes_text, count_text, plural, to_giga

_PAPER = "Narayanan et al., idealized-runtime paper, Table 1"


@dataclass(frozen=True)
class Table1Row:
    """One row of the paper's Table 1, as printed."""

    display: str
    name: str  # canonical catalog name
    hidden_size: int
    num_layers: int
    num_heads: int
    params_b: float


TABLE1: tuple[Table1Row, ...] = (
    Table1Row("OpenAI/davinci", "openai/davinci", 12288, 96, 96, 175),
    Table1Row("AI21/J1-Large v1", "ai21/j1-large-v1", 4096, 32, 32, 6.7),
    Table1Row("AI21/J1-Grande v1", "ai21/j1-grande-v1", 5120, 50, 40, 17),
    Table1Row("AI21/J1-Jumbo v1", "ai21/j1-jumbo-v1", 13824, 76, 96, 178),
    Table1Row("Cohere/XL v20220609", "cohere/xl-v20220609", 8192, 64, 64, 52),
    Table1Row("Anthropic/v4-s3", "anthropic/v4-s3", 8192, 64, 64, 52),
    Table1Row("Microsoft+NV/TNLG v2", "microsoft/tnlg-v2", 20480, 105, 128, 530),
    Table1Row("EleutherAI/GPT-J", "eleutherai/gpt-j", 4096, 28, 16, 6),
    Table1Row("Yandex/YaLM", "yandex/yalm", 10240, 80, 128, 100),
    Table1Row("BigScience/BLOOM", "bigscience/bloom", 14336, 70, 112, 176),
)

_ROWS = {row.name: row for row in TABLE1}


def _table1(name: str, source: str, **fields: Any) -> ModelSpec:
    """A Table 1 model: h, l, n from the table; the rest from `fields`."""
    row = _ROWS[name]
    return ModelSpec(
        name=name,
        hidden_size=row.hidden_size,
        num_layers=row.num_layers,
        num_heads=row.num_heads,
        source=f"{_PAPER} (h, l, n); {source}",
        extra={"paper_name": row.display, "paper_params_b": row.params_b},
        **fields,
    )


def _gpt3_style(name: str, vocab_size: int, source: str) -> ModelSpec:
    """GPT-2/GPT-3 layout: learned positions, pre-LN layernorm, 4h GELU FFN, biases, tied."""
    return _table1(
        name,
        source,
        vocab_size=vocab_size,
        position="learned",
        norm="layernorm",
        ffn_kind="gelu",
        bias=True,
        tie_embeddings=True,
        max_context=2048,
        family="gpt2",
    )


_J1_SOURCE = (
    "AI21 'Jurassic-1: Technical Details and Evaluation' (2021): GPT-3-style decoder, "
    "256K vocabulary, 2048-token context"
)

_SPECS: list[ModelSpec] = [
    # ---- the ten models of the idealized-runtime paper, Table 1 --------------------------
    _gpt3_style(
        "openai/davinci",
        50257,
        "Brown et al. 2020 (GPT-3 175B, Table 2.1): GPT-2 layout and 50257-token BPE, "
        "2048 context; dense attention assumed (GPT-3's alternating sparse layers ignored)",
    ),
    _gpt3_style(
        "ai21/j1-large-v1",
        256000,
        f"{_J1_SOURCE}. With that vocabulary the count is 7.5B, AI21's own figure; Table 1's "
        "6.7B matches GPT-3 6.7B and cannot be reached with a 256K vocabulary",
    ),
    _gpt3_style("ai21/j1-grande-v1", 256000, _J1_SOURCE),
    _gpt3_style("ai21/j1-jumbo-v1", 256000, _J1_SOURCE),
    _gpt3_style(
        "cohere/xl-v20220609",
        50257,
        "architecture beyond h, l, n not public: GPT-3-style layout and 50257 vocabulary assumed",
    ),
    _gpt3_style(
        "anthropic/v4-s3",
        65536,
        "shape as Askell et al. 2021's 52B model; GPT-3-style layout and a 2^16 vocabulary assumed",
    ),
    _gpt3_style(
        "microsoft/tnlg-v2",
        50257,
        "Smith et al. 2022 (Megatron-Turing NLG 530B): Megatron GPT layout, GPT-2 tokenizer "
        "(50257), 2048 context",
    ),
    _table1(
        "eleutherai/gpt-j",
        "Hugging Face EleutherAI/gpt-j-6b config.json: rotary_dim 64 of head_dim 256, "
        "parallel attention/FFN, vocab 50400, untied LM head, n_positions 2048",
        vocab_size=50400,
        position="rotary",
        rotary_fraction=0.25,
        parallel_attn_ffn=True,
        bias=False,  # attention has no biases; the MLP and the LM head do
        mlp_bias=True,
        lm_head_bias=True,
        tie_embeddings=False,
        max_context=2048,
        family="gptj",
    ),
    _table1(
        "yandex/yalm",
        "github.com/yandex/YaLM-100B examples/generate_*.sh: GeGLU FFN of 27308 (gated, "
        "so ffn_kind swiglu), rotary positions, vocab 128000; its 2048-d factorised "
        "embedding is counted as a plain tied vocab x h matrix (~1% high); max_context 2048 "
        "as in the paper's runs (rotary sets no hard limit)",
        vocab_size=128000,
        ffn_size=27308,
        ffn_kind="swiglu",
        position="rotary",
        bias=True,
        tie_embeddings=True,
        max_context=2048,
        family="custom",
    ),
    _table1(
        "bigscience/bloom",
        "Hugging Face bigscience/bloom config.json and Scao et al. 2022: ALiBi, vocab "
        "250880, tied embeddings, 2048-token training sequences",
        vocab_size=250880,
        position="alibi",
        bias=True,
        embedding_norm=True,
        tie_embeddings=True,
        max_context=2048,
        family="bloom",
    ),
]


def _llama(
    name: str, h: int, layers: int, heads: int, ffn: int, source: str, **fields: Any
) -> ModelSpec:
    """A LLaMA-architecture entry (SwiGLU, rotary, RMSNorm, no biases, untied embeddings);
    LLaMA-1's vocabulary, norm epsilon and context unless `fields` say otherwise."""
    llama1 = {"vocab_size": 32000, "norm_eps": 1e-6, "max_context": 2048}
    return ModelSpec(
        name=name,
        hidden_size=h,
        num_layers=layers,
        num_heads=heads,
        ffn_size=ffn,
        ffn_kind="swiglu",
        position="rotary",
        norm="rmsnorm",
        bias=False,
        tie_embeddings=False,
        family="llama",
        source=source,
        **(llama1 | fields),
    )


def _llama3(name: str, h: int, layers: int, heads: int, ffn: int, source: str) -> ModelSpec:
    return _llama(
        name,
        h,
        layers,
        heads,
        ffn,
        source,
        num_kv_heads=8,
        vocab_size=128256,
        rope_theta=500000.0,
        norm_eps=1e-5,
        max_context=8192,
    )


_TOUVRON = "Touvron et al. 2023 (LLaMA), Table 2, and the Hugging Face conversion's config"
_META3 = "Hugging Face meta-llama/Meta-Llama-3-{} config.json"

_SPECS += [
    _llama("llama-7b", 4096, 32, 32, 11008, _TOUVRON),
    _llama("llama-13b", 5120, 40, 40, 13824, _TOUVRON),
    _llama("llama-65b", 8192, 80, 64, 22016, _TOUVRON),
    _llama3("llama-3-8b", 4096, 32, 32, 14336, _META3.format("8B")),
    _llama3("llama-3-70b", 8192, 80, 64, 28672, _META3.format("70B")),
    ModelSpec(
        name="gpt2",
        hidden_size=768,
        num_layers=12,
        num_heads=12,
        vocab_size=50257,
        tie_embeddings=True,
        max_context=1024,
        family="gpt2",
        source="Hugging Face openai-community/gpt2 config.json (GPT-2 small, 124M)",
    ),
]


def _published(
    name: str,
    config: dict[str, Any],
    source: str,
    params_b: float,
    active_b: float | None = None,
    *,
    active_with_embedding: bool = True,
    note: str = "",
) -> ModelSpec:
    """A current open model: the architecture keys of its published config.json, read by the
    same code as a user's config (hfconfig), and the counts its publisher states.

    `params_b`/`active_b` are the published total and active parameters (billions);
    `active_with_embedding` says whether the publisher counts the input embedding among the
    active parameters (Mistral, Qwen: yes; OpenAI, DeepSeek: no). tests/spec/test_catalog.py holds
    every entry to its published counts.
    """
    spec = spec_from_hf_config({**config, "torch_dtype": "bfloat16"}, name)
    published = {"published_params_b": params_b, "published_source": source}
    if active_b is not None:
        published |= {
            "published_active_b": active_b,
            "active_with_embedding": active_with_embedding,
        }
    if note:
        published["note"] = note
    family = str(config["model_type"])
    return replace(spec, source=source, family=family, extra={**spec.extra, **published})


_HF = "https://huggingface.co/"
_L31 = {
    "model_type": "llama",
    "num_key_value_heads": 8,
    "vocab_size": 128256,
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "rope_type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
    },
    "tie_word_embeddings": False,
}
_L70 = {**_L31, "hidden_size": 8192, "intermediate_size": 28672, "num_hidden_layers": 80}
_QWEN25 = {"model_type": "qwen2", "vocab_size": 152064, "rope_theta": 1e6, "rms_norm_eps": 1e-6}
_QWEN3 = {
    "model_type": "qwen3",
    "head_dim": 128,
    "num_key_value_heads": 8,
    "vocab_size": 151936,
    "max_position_embeddings": 40960,
    "rope_theta": 1e6,
    "rms_norm_eps": 1e-6,
    "tie_word_embeddings": False,
}
_QWEN3_MOE = {
    **_QWEN3,
    "model_type": "qwen3_moe",
    "num_key_value_heads": 4,
    "num_experts": 128,
    "num_experts_per_tok": 8,
    "norm_topk_prob": True,
}
_MIXTRAL = {
    "model_type": "mixtral",
    "num_key_value_heads": 8,
    "num_local_experts": 8,
    "num_experts_per_tok": 2,
    "rope_theta": 1e6,
    "rms_norm_eps": 1e-5,
}
_MLA = {"kv_lora_rank": 512, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64, "v_head_dim": 128}
_YARN_DS = {
    "rope_type": "yarn",
    "factor": 40,
    "original_max_position_embeddings": 4096,
    "beta_fast": 32,
    "beta_slow": 1,
    "mscale": 1.0,
    "mscale_all_dim": 1.0,
}
_GPT_OSS = {
    "model_type": "gpt_oss",
    "hidden_size": 2880,
    "intermediate_size": 2880,
    "num_attention_heads": 64,
    "num_key_value_heads": 8,
    "head_dim": 64,
    "num_experts_per_tok": 4,
    "vocab_size": 201088,
    "sliding_window": 128,
    "max_position_embeddings": 131072,
    "rope_theta": 150000.0,
    "rope_scaling": {
        "rope_type": "yarn",
        "factor": 32.0,
        "beta_fast": 32.0,
        "beta_slow": 1.0,
        "truncate": False,
        "original_max_position_embeddings": 4096,
    },
}
_GPT_OSS_CARD = (
    "gpt-oss model card (arXiv 2508.10925), Table 1: {} total, {} active (active counts the "
    "unembedding, not the embedding); architecture from " + _HF + "openai/{}/blob/main/config.json"
    "; weights counted at bf16 (the release stores experts in MXFP4)"
)
_GEMMA2 = {
    "model_type": "gemma2",
    "vocab_size": 256000,
    "sliding_window": 4096,
    "hidden_activation": "gelu_pytorch_tanh",
}

_SPECS += [
    _published(
        "llama-3.1-8b",
        {
            **_L31,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
        },
        _HF + "meta-llama/Llama-3.1-8B/blob/main/config.json (8.03B params on the model page)",
        8.03,
    ),
    _published(
        "llama-3.1-70b",
        {**_L70, "num_attention_heads": 64},
        _HF + "meta-llama/Llama-3.1-70B/blob/main/config.json (70.6B params on the model page)",
        70.6,
    ),
    _published(
        "llama-3.1-405b",
        {
            **_L31,
            "hidden_size": 16384,
            "intermediate_size": 53248,
            "num_hidden_layers": 126,
            "num_attention_heads": 128,
        },
        _HF + "meta-llama/Llama-3.1-405B/blob/main/config.json (406B params on the model page)",
        406.0,
    ),
    _published(
        "llama-3.3-70b",
        {**_L70, "num_attention_heads": 64},
        _HF + "meta-llama/Llama-3.3-70B-Instruct/blob/main/config.json (70.6B params)",
        70.6,
    ),
    _published(
        "qwen2.5-7b",
        {
            **_QWEN25,
            "hidden_size": 3584,
            "intermediate_size": 18944,
            "num_hidden_layers": 28,
            "num_attention_heads": 28,
            "num_key_value_heads": 4,
            "max_position_embeddings": 131072,
            "tie_word_embeddings": False,
        },
        _HF + "Qwen/Qwen2.5-7B (model card: 7.61B parameters, 6.53B non-embedding) and its "
        "config.json",
        7.61,
    ),
    _published(
        "qwen2.5-72b",
        {
            **_QWEN25,
            "hidden_size": 8192,
            "intermediate_size": 29568,
            "num_hidden_layers": 80,
            "num_attention_heads": 64,
            "num_key_value_heads": 8,
            "max_position_embeddings": 131072,
            "tie_word_embeddings": False,
        },
        _HF + "Qwen/Qwen2.5-72B (model card: 72.7B parameters, 70.0B non-embedding) and its "
        "config.json",
        72.7,
    ),
    _published(
        "qwen3-8b",
        {
            **_QWEN3,
            "hidden_size": 4096,
            "intermediate_size": 12288,
            "num_hidden_layers": 36,
            "num_attention_heads": 32,
        },
        _HF + "Qwen/Qwen3-8B (model card: 8.2B parameters, 6.95B non-embedding) and its "
        "config.json",
        8.2,
    ),
    _published(
        "qwen3-32b",
        {
            **_QWEN3,
            "hidden_size": 5120,
            "intermediate_size": 25600,
            "num_hidden_layers": 64,
            "num_attention_heads": 64,
        },
        _HF + "Qwen/Qwen3-32B (model card: 32.8B parameters, 31.2B non-embedding) and its "
        "config.json",
        32.8,
    ),
    _published(
        "qwen3-30b-a3b",
        {
            **_QWEN3_MOE,
            "hidden_size": 2048,
            "intermediate_size": 6144,
            "moe_intermediate_size": 768,
            "num_hidden_layers": 48,
            "num_attention_heads": 32,
        },
        _HF + "Qwen/Qwen3-30B-A3B (model card: 30.5B total, 3.3B activated, 29.9B "
        "non-embedding) and its config.json",
        30.5,
        3.3,
        note="the derived active count is 3.35B with the embedding (3.04B without): Qwen's "
        "3.3B is that figure truncated to two digits",
    ),
    _published(
        "qwen3-235b-a22b",
        {
            **_QWEN3_MOE,
            "hidden_size": 4096,
            "intermediate_size": 12288,
            "moe_intermediate_size": 1536,
            "num_hidden_layers": 94,
            "num_attention_heads": 64,
        },
        _HF + "Qwen/Qwen3-235B-A22B (model card: 235B total, 22B activated, 234B "
        "non-embedding) and its config.json",
        235.0,
        22.0,
    ),
    _published(
        "mixtral-8x7b",
        {
            **_MIXTRAL,
            "hidden_size": 4096,
            "intermediate_size": 14336,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "vocab_size": 32000,
            "max_position_embeddings": 32768,
        },
        "https://mistral.ai/news/mixtral-of-experts/ (46.7B total, 12.9B per token) and "
        + _HF
        + "mistralai/Mixtral-8x7B-v0.1/blob/main/config.json",
        46.7,
        12.9,
    ),
    _published(
        "mixtral-8x22b",
        {
            **_MIXTRAL,
            "hidden_size": 6144,
            "intermediate_size": 16384,
            "num_hidden_layers": 56,
            "num_attention_heads": 48,
            "vocab_size": 32000,
            "max_position_embeddings": 65536,
        },
        "https://mistral.ai/news/mixtral-8x22b/ (141B total, 39B active) and "
        + _HF
        + "mistralai/Mixtral-8x22B-v0.1/blob/main/config.json",
        141.0,
        39.0,
    ),
    _published(
        "deepseek-v2-lite",
        {
            "model_type": "deepseek_v2",
            **_MLA,
            "hidden_size": 2048,
            "intermediate_size": 10944,
            "moe_intermediate_size": 1408,
            "num_hidden_layers": 27,
            "num_attention_heads": 16,
            "num_key_value_heads": 16,
            "n_routed_experts": 64,
            "n_shared_experts": 2,
            "num_experts_per_tok": 6,
            "first_k_dense_replace": 1,
            "q_lora_rank": None,
            "topk_method": "greedy",
            "vocab_size": 102400,
            "max_position_embeddings": 163840,
            "rope_scaling": {**_YARN_DS, "mscale": 0.707, "mscale_all_dim": 0.707},
        },
        _HF + "deepseek-ai/DeepSeek-V2-Lite (model card: 15.7B total, 2.4B activated) and its "
        "config.json",
        15.7,
        2.4,
        active_with_embedding=False,
        note="the derived active count is 2.45B without the embedding: DeepSeek's 2.4B is "
        "that figure truncated to two digits",
    ),
    _published(
        "deepseek-v3",
        {
            "model_type": "deepseek_v3",
            **_MLA,
            "hidden_size": 7168,
            "intermediate_size": 18432,
            "moe_intermediate_size": 2048,
            "num_hidden_layers": 61,
            "num_attention_heads": 128,
            "num_key_value_heads": 128,
            "n_routed_experts": 256,
            "n_shared_experts": 1,
            "num_experts_per_tok": 8,
            "first_k_dense_replace": 3,
            "q_lora_rank": 1536,
            "n_group": 8,
            "topk_group": 4,
            "routed_scaling_factor": 2.5,
            "vocab_size": 129280,
            "max_position_embeddings": 163840,
            "rope_scaling": _YARN_DS,
        },
        "DeepSeek-V3 technical report (arXiv 2412.19437): 671B total, 37B activated (the "
        "14B multi-token-prediction module excluded, as here); architecture from "
        + _HF
        + "deepseek-ai/DeepSeek-V3/blob/main/config.json",
        671.0,
        37.0,
        active_with_embedding=False,
    ),
    *(
        _published(
            name,
            {**_GPT_OSS, "num_hidden_layers": layers, "num_local_experts": experts},
            _GPT_OSS_CARD.format(f"{total}B", f"{active}B", name),
            total,
            active,
            active_with_embedding=False,
        )
        for name, layers, experts, total, active in [
            ("gpt-oss-20b", 24, 32, 20.91, 3.61),
            ("gpt-oss-120b", 36, 128, 116.83, 5.13),
        ]
    ),
    _published(
        "gemma-2-9b",
        {
            **_GEMMA2,
            "hidden_size": 3584,
            "intermediate_size": 14336,
            "num_hidden_layers": 42,
            "num_attention_heads": 16,
            "num_key_value_heads": 8,
            "head_dim": 256,
            "query_pre_attn_scalar": 256,
        },
        _HF + "google/gemma-2-9b/blob/main/config.json (9.24B params on the model page)",
        9.24,
    ),
    _published(
        "gemma-2-27b",
        {
            **_GEMMA2,
            "hidden_size": 4608,
            "intermediate_size": 36864,
            "num_hidden_layers": 46,
            "num_attention_heads": 32,
            "num_key_value_heads": 16,
            "head_dim": 128,
            "query_pre_attn_scalar": 144,
        },
        _HF + "google/gemma-2-27b/blob/main/config.json (27.2B params on the model page)",
        27.2,
    ),
    _published(
        "gemma-3-27b",
        {
            "model_type": "gemma3_text",
            "hidden_activation": "gelu_pytorch_tanh",
            "hidden_size": 5376,
            "intermediate_size": 21504,
            "num_hidden_layers": 62,
            "num_attention_heads": 32,
            "num_key_value_heads": 16,
            "head_dim": 128,
            "vocab_size": 262208,
            "query_pre_attn_scalar": 168,
            "sliding_window": 1024,
            "rope_scaling": {"rope_type": "linear", "factor": 8.0},
            "max_position_embeddings": 131072,
        },
        "Gemma 3 technical report (arXiv 2503.19786), Table 1: 1,416M embedding + 25,600M "
        "non-embedding parameters for the language model (its 417M vision encoder is not "
        "counted here); architecture from " + _HF + "google/gemma-3-27b-pt config.json "
        "(text_config)",
        27.016,
    ),
    _published(
        "phi-3-mini",
        {
            "model_type": "phi3",
            "hidden_size": 3072,
            "intermediate_size": 8192,
            "num_hidden_layers": 32,
            "num_attention_heads": 32,
            "num_key_value_heads": 32,
            "vocab_size": 32064,
            "max_position_embeddings": 4096,
            "sliding_window": 2047,
            "rms_norm_eps": 1e-5,
        },
        _HF + "microsoft/Phi-3-mini-4k-instruct/blob/main/config.json (3.82B params on the "
        "model page)",
        3.82,
    ),
]

# Tiny specs: a CPU forward of 64 tokens takes milliseconds. Each exercises one family's
# features (learned/rotary/ALiBi positions, parallel blocks, GQA, ReLU) for the backends' tests.
_TINY = {
    "hidden_size": 64,
    "num_layers": 2,
    "num_heads": 4,
    "vocab_size": 256,
    "max_context": 512,
    "dtype": "float32",
    "source": "synthetic, for tests",
}

_SPECS += [
    ModelSpec(
        name="tiny-llama",
        **_TINY,
        num_kv_heads=2,
        ffn_size=128,
        ffn_kind="swiglu",
        position="rotary",
        norm="rmsnorm",
        norm_eps=1e-6,
        bias=False,
        tie_embeddings=False,
        family="llama",
    ),
    ModelSpec(name="tiny-gpt2", **_TINY, tie_embeddings=True, family="gpt2"),
    ModelSpec(
        name="tiny-gptj",
        **_TINY,
        position="rotary",
        rotary_fraction=0.25,
        parallel_attn_ffn=True,
        bias=False,
        mlp_bias=True,
        lm_head_bias=True,
        tie_embeddings=False,
        family="gptj",
    ),
    ModelSpec(
        name="tiny-bloom",
        **_TINY,
        position="alibi",
        embedding_norm=True,
        tie_embeddings=True,
        family="bloom",
    ),
    ModelSpec(
        name="tiny-opt",
        **_TINY,
        ffn_kind="relu",
        position_offset=2,
        tie_embeddings=True,
        family="opt",
    ),
]

# Tiny specs of the newer layouts, read from tiny configs of each family: MoE routing
# (Mixtral, Qwen3-MoE), MLA with a MoE (DeepSeek-V2), windows + sinks + a biased MoE
# (gpt-oss), windows + soft-capping + sandwich norms (Gemma-2), chunked attention + a layer
# without rotary (its query temperature from position 7 on) + input-scaled top-1 routing
# (Llama-4).
_TINY_HF = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 256,
    "max_position_embeddings": 512,
    "intermediate_size": 96,
    "torch_dtype": "float32",
}
_TINY_CONFIGS: dict[str, dict[str, Any]] = {
    "tiny-mixtral": {"model_type": "mixtral", "num_local_experts": 8, "num_experts_per_tok": 2},
    "tiny-qwen3-moe": {
        "model_type": "qwen3_moe",
        "head_dim": 16,
        "moe_intermediate_size": 32,
        "num_experts": 16,
        "num_experts_per_tok": 4,
        "norm_topk_prob": True,
    },
    "tiny-deepseek-v2": {
        "model_type": "deepseek_v2",
        "num_key_value_heads": 4,
        "moe_intermediate_size": 32,
        "n_routed_experts": 8,
        "n_shared_experts": 1,
        "num_experts_per_tok": 2,
        "first_k_dense_replace": 1,
        "kv_lora_rank": 32,
        "q_lora_rank": None,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 8,
        "v_head_dim": 16,
    },
    "tiny-gpt-oss": {
        "model_type": "gpt_oss",
        "head_dim": 16,
        "num_local_experts": 8,
        "num_experts_per_tok": 2,
        "sliding_window": 16,
    },
    "tiny-gemma2": {
        "model_type": "gemma2",
        "head_dim": 16,
        "sliding_window": 16,
        "query_pre_attn_scalar": 16,
    },
    "tiny-llama4": {
        "model_type": "llama4_text",
        "head_dim": 16,
        "intermediate_size": 32,
        "intermediate_size_mlp": 96,
        "num_local_experts": 4,
        "num_experts_per_tok": 1,
        "moe_layers": [0],
        "no_rope_layers": [1, 0],
        "attention_chunk_size": 16,
        "floor_scale": 8,
    },
}
_SPECS += [
    replace(spec_from_hf_config({**_TINY_HF, **config}, name), source="synthetic, for tests")
    for name, config in _TINY_CONFIGS.items()
]

CATALOG: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def _normalize(name: str) -> str:
    return re.sub(r"[\s_]+", "-", name.strip().lower())


# Other spellings users type: the paper's display names, Hub ids, common short names.
_ALIASES: dict[str, str] = {
    **{_normalize(row.display): row.name for row in TABLE1},
    "bigscience/bl00m": "bigscience/bloom",  # as the paper's text spells it (zeros)
    "bloom": "bigscience/bloom",
    "davinci": "openai/davinci",
    "gpt-j": "eleutherai/gpt-j",
    "gpt-j-6b": "eleutherai/gpt-j",
    "eleutherai/gpt-j-6b": "eleutherai/gpt-j",
    "gpt2-small": "gpt2",
    "gpt-2": "gpt2",
    "openai-community/gpt2": "gpt2",
    "llama3-8b": "llama-3-8b",
    "llama3-70b": "llama-3-70b",
    "meta-llama/meta-llama-3-8b": "llama-3-8b",
    "meta-llama/meta-llama-3-70b": "llama-3-70b",
    **{
        hub.lower(): name
        for name, hub in {
            "llama-3.1-8b": "meta-llama/Llama-3.1-8B",
            "llama-3.1-70b": "meta-llama/Llama-3.1-70B",
            "llama-3.1-405b": "meta-llama/Llama-3.1-405B",
            "llama-3.3-70b": "meta-llama/Llama-3.3-70B-Instruct",
            "qwen2.5-7b": "Qwen/Qwen2.5-7B",
            "qwen2.5-72b": "Qwen/Qwen2.5-72B",
            "qwen3-8b": "Qwen/Qwen3-8B",
            "qwen3-32b": "Qwen/Qwen3-32B",
            "qwen3-30b-a3b": "Qwen/Qwen3-30B-A3B",
            "qwen3-235b-a22b": "Qwen/Qwen3-235B-A22B",
            "mixtral-8x7b": "mistralai/Mixtral-8x7B-v0.1",
            "mixtral-8x22b": "mistralai/Mixtral-8x22B-v0.1",
            "deepseek-v2-lite": "deepseek-ai/DeepSeek-V2-Lite",
            "deepseek-v3": "deepseek-ai/DeepSeek-V3",
            "gpt-oss-20b": "openai/gpt-oss-20b",
            "gpt-oss-120b": "openai/gpt-oss-120b",
            "gemma-2-9b": "google/gemma-2-9b",
            "gemma-2-27b": "google/gemma-2-27b",
            "gemma-3-27b": "google/gemma-3-27b-pt",
            "phi-3-mini": "microsoft/Phi-3-mini-4k-instruct",
        }.items()
    },
}
_LOOKUP: dict[str, str] = {**{_normalize(n): n for n in CATALOG}, **_ALIASES}


def get_spec(name: str) -> ModelSpec:
    """The catalog spec called `name` (case-insensitive; paper display names accepted)."""
    canonical = _LOOKUP.get(_normalize(name))
    if canonical is not None:
        return CATALOG[canonical]
    close = difflib.get_close_matches(_normalize(name), list(_LOOKUP), n=6, cutoff=0.5)
    suggestions = list(dict.fromkeys(_LOOKUP[c] for c in close))[:3]
    hint = f"did you mean {', '.join(suggestions)}? " if suggestions else ""
    raise UserError(
        f"unknown model {name!r}; {hint}run `infermeter models` for the catalog, "
        "or pass the path of a Hugging Face config.json"
    )


def resolve_spec(name_or_path: str) -> ModelSpec:
    """A catalog name, a config.json path, or a directory holding a config.json."""
    from infermeter.spec.hfconfig import load_hf_config  # only path inputs need it

    path = Path(name_or_path).expanduser()
    # an existing config the user points at wins over a catalog name of the same spelling
    if path.is_file() or (path.is_dir() and (path / "config.json").is_file()):
        return load_hf_config(path)
    if _normalize(name_or_path) in _LOOKUP:
        return get_spec(name_or_path)
    if path.exists() or name_or_path.endswith(".json"):
        return load_hf_config(path)  # raises the precise file error
    return get_spec(name_or_path)


def _billions(count: float) -> float:
    """A count in billions for the catalog's table: to 2 decimals, or 3 significant digits
    below 1 B (a tiny test model's 0.00009 B is not 0)."""
    value = to_giga(count)
    return round(value, 2) if value >= 1 else float(f"{value:.3g}")


def catalog_table() -> pd.DataFrame:
    """One row per catalog model, in catalog order."""
    rows = [
        {
            "name": s.name,
            "family": s.family,
            "hidden_size": s.hidden_size,
            "num_layers": s.num_layers,
            "num_heads": s.num_heads,
            "num_kv_heads": s.kv_heads,
            "ffn_size": s.ffn_dim,
            "vocab_size": s.vocab_size,
            "params_b": _billions(s.num_params),
            "active_b": _billions(s.active_params()),
            "max_context": s.max_context,
            "source": s.source,
        }
        for s in CATALOG.values()
    ]
    return pd.DataFrame(rows)


def _active_text(spec: ModelSpec) -> str:
    """Active parameters with and without the input embedding (a token reads one row of
    it; publishers differ on counting it), so a source line quoting either can be matched."""
    with_embedding = spec.active_params()
    without = spec.active_params(include_embedding=False)
    if with_embedding == without:
        return count_text(with_embedding)
    return f"{count_text(with_embedding)} ({count_text(without)} without the input embedding)"


def _attention_text(spec: ModelSpec) -> str:
    if spec.mla is not None:
        m = spec.mla
        q = f"q_lora {m.q_lora_rank}" if m.q_lora_rank else "full-rank q"
        return (
            f"multi-head latent: {plural(spec.num_heads, 'head')}, kv_lora {m.kv_lora_rank}, "
            f"rope {m.qk_rope_dim}, nope {m.qk_nope_dim}, v {m.v_head_dim}, {q}"
        )
    kind = "MHA" if spec.kv_heads == spec.num_heads else "MQA" if spec.kv_heads == 1 else "GQA"
    heads = f"{plural(spec.num_heads, 'head')}, {plural(spec.kv_heads, 'KV head')}"
    return f"{kind}: {heads}, head_dim {spec.dim_head}"


def _variants_text(spec: ModelSpec) -> str:
    parts = []
    if spec.sliding_window is not None:
        sliding = sum(spec.layer_window(i) is not None for i in range(spec.num_layers))
        kind = "chunks of" if spec.chunked_attention else "window"
        parts.append(f"{kind} {spec.sliding_window} on {sliding}/{spec.num_layers} layers")
    if spec.nope_layers:
        parts.append(f"no rotary on {len(spec.nope_layers)}/{spec.num_layers} layers")
    if spec.attn_temperature is not None:
        floor, scale = spec.attn_temperature
        parts.append(f"query temperature (floor {floor:g}, scale {scale:g})")
    if spec.attention_sinks:
        parts.append("sinks")
    if spec.attn_softcap:
        parts.append(f"score soft-cap {spec.attn_softcap:g}")
    if spec.final_softcap:
        parts.append(f"logit soft-cap {spec.final_softcap:g}")
    if spec.qk_norm != "none":
        parts.append(f"qk-norm ({spec.qk_norm})")
    if spec.norm_placement != "pre":
        parts.append(f"{spec.norm_placement} norms")
    if spec.parallel_attn_ffn:
        parts.append("parallel attention + FFN")
    if spec.rope_scaling:
        parts.append(f"rope {spec.rope_scaling.get('rope_type')}")
    return ", ".join(parts) or "-"


def _ffn_text(spec: ModelSpec) -> str:
    moe = spec.moe
    dense = f"{spec.ffn_kind} {spec.ffn_dim}"
    if moe is None:
        return dense
    shared = f" + shared {moe.shared_ffn_size}" if moe.shared_ffn_size else ""
    text = (
        f"MoE on {spec.num_moe_layers}/{spec.num_layers} layers: top-{moe.experts_per_token} of "
        f"{moe.num_experts} experts of {spec.ffn_kind} {moe.expert_ffn_size}{shared}"
    )
    if moe.input_scaled:
        text += " (routing weight scales the expert's input)"
    return text + (f"; dense layers {dense}" if spec.num_moe_layers < spec.num_layers else "")


# Cached tokens of the decode step `models --show` describes, where the model's context allows.
SHOW_CONTEXT = 2048


def decode_context(spec: ModelSpec, context: int | None = None) -> int:
    """The cached tokens of `models --show`'s decode step: `context`, or by default
    SHOW_CONTEXT, at most the model's own context. UserError for a context that is not
    positive or exceeds the model's."""
    if context is None:
        return min(SHOW_CONTEXT, spec.max_context)
    if context <= 0:
        raise UserError(f"--context must be positive, got {context}")
    if context > spec.max_context:
        raise UserError(
            f"--context {context} exceeds {spec.name}'s context of {spec.max_context} tokens; "
            f"pass --context {spec.max_context} or less"
        )
    return context


def spec_report(
    spec: ModelSpec, context: int | None = None, batches: tuple[int, ...] = (1, 8, 64, 256)
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """What infermeter derives from a spec, for `infermeter models --show`.

    Returns (facts, per_batch): facts is a two-column table (figure, value) of the layout,
    total and active parameters, weight bytes at the spec's dtype and KV-cache bytes; per_batch
    has, for one decode step at `context` cached tokens (decode_context: by default 2048, or
    the model's context where shorter) and each batch size, the expected distinct experts per
    MoE layer (E·(1 − (1 − k/E)^b)), FLOPs, bytes read and FLOPs/byte. UserError for a batch
    size or context that is not positive, or a context beyond the model's.
    """
    bad = [b for b in batches if b <= 0]
    if bad:
        raise UserError(f"batch sizes must be positive, got {bad[0]}; e.g. --batch-sizes 1,8")
    context = decode_context(spec, context)
    facts = [
        ("name", spec.name),
        ("family", spec.family),
        ("layers / hidden / vocab", f"{spec.num_layers} / {spec.hidden_size} / {spec.vocab_size}"),
        ("attention", _attention_text(spec)),
        ("attention variants", _variants_text(spec)),
        ("FFN", _ffn_text(spec)),
        ("total parameters", count_text(spec.num_params)),
        ("active parameters per token", _active_text(spec)),
        ("weights", f"{bytes_text(spec.weight_bytes, 2)} at {spec.dtype}"),
        ("KV cache per token", f"{bytes_text(spec.kv_cache_bytes(1))} (all layers)"),
        (f"KV cache at {plural(context, 'token')}", bytes_text(spec.kv_cache_bytes(context))),
        ("max context", str(spec.max_context)),
        ("source", spec.source),
    ]
    rows = [
        {
            "batch": b,
            "distinct experts/layer": spec.expected_distinct_experts(b) if spec.moe else None,
            "decode GFLOP": to_giga(spec.decode_flops(context, b, lm_head=True)),
            "decode GB read": to_giga(spec.decode_bytes(context, b)),
            "FLOP/byte": spec.decode_flops(context, b, lm_head=True)
            / spec.decode_bytes(context, b),
        }
        for b in batches
    ]
    per_batch = pd.DataFrame(rows)
    if spec.moe is None:
        per_batch = per_batch.drop(columns=["distinct experts/layer"])
    return pd.DataFrame(facts, columns=["figure", "value"]), per_batch
