"""ModelSpec from real Hugging Face config.json files, and every error as a UserError."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest

from infermeter.errors import UserError
from infermeter.spec.hfconfig import SUPPORTED_FAMILIES, load_hf_config, spec_from_hf_config
from paths import DATA

CONFIGS = DATA / "hf_configs"

# Parameter counts of the Hugging Face *ForCausalLM models built from these configs.
KNOWN_PARAMS = {
    "gpt2.json": 124_439_808,
    "llama-2-7b.json": 6_738_415_616,
    "mistral-7b-v0.1.json": 7_241_732_096,
    "qwen2-7b.json": 7_615_616_512,
    "gpt-j-6b.json": 6_050_882_784,
    "gpt-neox-20b.json": 20_554_567_680,
    "bloom-560m.json": 559_214_592,
    "opt-1.3b.json": 1_315_758_080,
}


def _config(file: str) -> dict:
    return json.loads((CONFIGS / file).read_text())


@pytest.mark.parametrize(("file", "params"), KNOWN_PARAMS.items())
def test_params_match_known_counts(file: str, params: int) -> None:
    spec = load_hf_config(CONFIGS / file)
    # every bias, norm and position row is mirrored, so the count is exact
    assert spec.num_params == params
    assert spec.family == _config(file)["model_type"]


# Published config.json files of today's families (architecture keys as released), counted
# against the transformers model built from the same file on the meta device (no memory).
REAL_CONFIGS = [
    "mixtral-8x7b-v0.1.json",
    "qwen1.5-moe-a2.7b.json",
    "qwen3-30b-a3b.json",
    "qwen3-8b.json",
    "deepseek-v2-lite.json",
    "deepseek-v3.json",
    "gpt-oss-20b.json",
    "gemma-2-9b.json",
    "gemma-3-27b-pt.json",
    "phi-3-mini-4k-instruct.json",
    "falcon-7b.json",
    "olmo-2-1124-7b.json",
    "llama-4-scout-17b-16e.json",
]


def _transformers_count(config: dict) -> int:
    transformers = pytest.importorskip("transformers")
    torch = pytest.importorskip("torch")
    if config["model_type"] == "gemma3":  # the language model of the multimodal config
        built = transformers.Gemma3TextConfig(**config["text_config"])
    elif config["model_type"] == "llama4":
        built = transformers.Llama4TextConfig(**config["text_config"])
    else:
        built = transformers.AutoConfig.for_model(**config)
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(built)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("file", REAL_CONFIGS)
def test_real_configs_count_what_transformers_builds(file: str) -> None:
    spec = load_hf_config(CONFIGS / file)
    assert spec.num_params == _transformers_count(_config(file))


def test_every_supported_family_has_a_real_config() -> None:
    families = {_config(file)["model_type"] for file in [*KNOWN_PARAMS, *REAL_CONFIGS]}
    assert families | {"gemma3_text", "llama4_text"} == set(SUPPORTED_FAMILIES)


def test_mixture_of_experts_fields() -> None:
    mixtral = load_hf_config(CONFIGS / "mixtral-8x7b-v0.1.json")
    assert mixtral.moe is not None and mixtral.num_moe_layers == 32
    assert (mixtral.moe.num_experts, mixtral.moe.experts_per_token) == (8, 2)
    assert mixtral.moe.expert_ffn_size == 14336 and mixtral.moe.normalize
    qwen = load_hf_config(CONFIGS / "qwen1.5-moe-a2.7b.json")
    assert qwen.moe is not None and qwen.moe.shared_gate and not qwen.moe.normalize
    assert qwen.moe.shared_ffn_size == 5632 and qwen.has_qkv_bias and not qwen.has_out_bias
    assert qwen.sliding_window is None  # use_sliding_window is false
    qwen3 = load_hf_config(CONFIGS / "qwen3-30b-a3b.json")
    assert qwen3.qk_norm == "head" and qwen3.dim_head == 128 and qwen3.moe is not None
    assert qwen3.moe.normalize and qwen3.moe.shared_ffn_size == 0


def test_deepseek_mla_and_routing() -> None:
    lite = load_hf_config(CONFIGS / "deepseek-v2-lite.json")
    assert lite.mla is not None and lite.mla.q_lora_rank is None
    assert lite.mla.cache_dim == 512 + 64
    assert lite.moe is not None and lite.moe.first_dense_layers == 1
    assert lite.num_moe_layers == 26 and lite.moe.shared_ffn_size == 2 * 1408
    assert lite.moe.scoring == "softmax" and lite.moe.groups == 1
    # YaRN with mscale_all_dim: the softmax scale grows by mscale² (transformers' formula)
    mscale = 0.1 * 0.707 * math.log(40) + 1.0
    assert lite.attn_scale == pytest.approx(192**-0.5 * mscale**2)
    assert lite.rope_scaling is not None and lite.rope_scaling["rope_type"] == "yarn"
    v3 = load_hf_config(CONFIGS / "deepseek-v3.json")
    assert v3.mla is not None and v3.mla.q_lora_rank == 1536
    assert v3.moe is not None and v3.moe.scoring == "sigmoid" and v3.moe.score_correction
    assert (v3.moe.groups, v3.moe.top_groups, v3.moe.scale) == (8, 4, 2.5)


@pytest.mark.parametrize("key", ["kv_lora_rank", "qk_rope_head_dim"])
def test_a_null_latent_attention_size_is_refused_not_defaulted(key: str) -> None:
    """kv_lora_rank: null was read as 512 without a word (a user review); an absent key
    still takes transformers' default."""
    config = json.loads((CONFIGS / "deepseek-v3.json").read_text())
    config[key] = None
    with pytest.raises(UserError, match=f"{key} is null, but multi-head latent attention"):
        spec_from_hf_config(config, name="v3-null")
    del config[key]
    assert spec_from_hf_config(config, name="v3-absent").mla is not None


def test_windows_sinks_softcaps_and_norms() -> None:
    oss = load_hf_config(CONFIGS / "gpt-oss-20b.json")
    assert oss.attention_sinks and oss.sliding_window == 128
    assert oss.layer_types[:2] == ("sliding", "full") and oss.layer_window(1) is None
    assert oss.ffn_kind == "clamped_swiglu" and oss.has_qkv_bias and oss.has_out_bias
    assert oss.moe is not None and oss.moe.router_bias and oss.moe.expert_bias
    assert oss.extra["quantization"] == "mxfp4"
    gemma = load_hf_config(CONFIGS / "gemma-2-9b.json")
    assert (gemma.attn_softcap, gemma.final_softcap) == (50.0, 30.0)
    assert gemma.norm_placement == "sandwich" and gemma.ffn_kind == "geglu"
    assert gemma.layer_types[:2] == ("sliding", "full") and gemma.tie_embeddings
    assert gemma.embedding_multiplier == pytest.approx(3584**0.5)
    gemma3 = load_hf_config(CONFIGS / "gemma-3-27b-pt.json")
    assert gemma3.qk_norm == "head" and gemma3.attn_softcap is None
    assert gemma3.local_rope_theta == 10000.0 and gemma3.rope_theta == 1e6
    assert gemma3.layer_types[:6] == ("sliding",) * 5 + ("full",)
    assert gemma3.attn_scale == pytest.approx(168**-0.5)
    phi = load_hf_config(CONFIGS / "phi-3-mini-4k-instruct.json")
    assert phi.sliding_window == 2047 and phi.layer_types == ()  # every layer windowed
    olmo = load_hf_config(CONFIGS / "olmo-2-1124-7b.json")
    assert olmo.qk_norm == "full" and olmo.norm_placement == "post"
    falcon = load_hf_config(CONFIGS / "falcon-7b.json")
    assert falcon.kv_heads == 1 and falcon.parallel_attn_ffn and falcon.dim_head == 64
    assert falcon.ffn_kind == "gelu_exact" and falcon.tie_embeddings


def test_llama4_fields() -> None:
    """Llama-4 Scout: 16 experts top-1 (input-scaled) plus a shared expert on every layer,
    chunked attention on 3 of 4 layers (counted as an 8192-token window), the 4th without
    rotary positions and with the query temperature, the weightless qk-norm; Meta's 17B active
    parameters. The engine takes it (its layers: tests/engine/test_engine_families.py)."""
    spec = load_hf_config(CONFIGS / "llama-4-scout-17b-16e.json")
    assert spec.moe is not None and spec.moe.shared_ffn_size == 8192 and spec.moe.input_scaled
    assert spec.num_moe_layers == 48 and spec.layer_types[:4] == ("sliding",) * 3 + ("full",)
    assert spec.chunked_attention and spec.sliding_window == 8192
    assert spec.nope_layers == tuple(range(3, 48, 4)) and spec.qk_norm == "l2"
    assert spec.attn_temperature == (8192.0, 0.1)
    assert spec.active_params() / 1e9 == pytest.approx(17.0, rel=0.015)
    assert "vision tower not counted" in spec.extra["note"]
    from infermeter.engine.parallel import check_tp

    check_tp(spec, 2)  # no refusal: 40 heads and 8 KV heads split over two ranks
    again = type(spec).from_dict(json.loads(spec.to_json()))
    assert again == spec and again.nope_layers == spec.nope_layers


def test_llama4_without_chunks_attends_globally() -> None:
    # A review: a null attention_chunk_size read as 8192 (transformers: full attention).
    config = _config("llama-4-scout-17b-16e.json")
    config["text_config"]["attention_chunk_size"] = None
    spec = spec_from_hf_config(config, "scout-unchunked")
    assert not spec.chunked_attention and spec.sliding_window is None and not spec.layer_types
    assert spec.nope_layers == tuple(range(3, 48, 4))  # still no rotary on every 4th layer
    del config["text_config"]["attention_chunk_size"]  # absent: transformers' 8192
    assert spec_from_hf_config(config, "scout").sliding_window == 8192


def test_state_space_models_are_refused_in_one_line() -> None:
    message = _error(lambda: load_hf_config(CONFIGS / "mamba-130m.json"))
    assert "'mamba'" in message and "state-space" in message and "KV cache" in message
    rwkv = _error(lambda: spec_from_hf_config({"model_type": "rwkv"}, "x"))
    assert "not a transformer" in rwkv


def test_gpt2_fields() -> None:
    spec = load_hf_config(CONFIGS / "gpt2.json")
    assert (spec.hidden_size, spec.num_layers, spec.num_heads) == (768, 12, 12)
    assert spec.position == "learned" and spec.tie_embeddings and spec.bias
    assert spec.max_context == 1024
    assert spec.dtype == "bfloat16"  # no torch_dtype in the file
    assert spec.name == "gpt2"


def test_llama_fields() -> None:
    spec = load_hf_config(CONFIGS / "llama-2-7b.json")
    assert spec.name == "meta-llama/Llama-2-7b-hf"  # from _name_or_path
    assert spec.ffn_kind == "swiglu" and spec.norm == "rmsnorm" and not spec.bias
    assert spec.ffn_dim == 11008 and spec.kv_heads == 32
    assert spec.max_context == 4096 and spec.dtype == "float16"
    assert not spec.tie_embeddings


def test_mistral_gqa_and_sliding_window() -> None:
    spec = load_hf_config(CONFIGS / "mistral-7b-v0.1.json")
    assert spec.kv_heads == 8 and spec.dim_head == 128
    assert spec.sliding_window == 4096 and spec.layer_types == ()  # every layer windowed
    assert spec.max_context == 32768


def test_qwen2_biases_q_k_v_only() -> None:
    spec = load_hf_config(CONFIGS / "qwen2-7b.json")
    assert spec.kv_heads == 4 and spec.rope_theta == 1e6
    assert spec.has_qkv_bias and not spec.has_out_bias and not spec.has_mlp_bias


def test_gptj_rotary_fraction_and_parallel_block() -> None:
    spec = load_hf_config(CONFIGS / "gpt-j-6b.json")
    assert spec.rotary_fraction == 0.25  # rotary_dim 64 of head_dim 256
    assert spec.parallel_attn_ffn and spec.position == "rotary"
    assert spec.ffn_dim == 4 * 4096 and not spec.tie_embeddings


def test_gpt_neox_fields() -> None:
    spec = load_hf_config(CONFIGS / "gpt-neox-20b.json")
    assert spec.rotary_fraction == 0.25 and spec.parallel_attn_ffn
    assert spec.ffn_dim == 24576
    assert isinstance(spec.rope_theta, float)


def test_bloom_fields() -> None:
    spec = load_hf_config(CONFIGS / "bloom-560m.json")
    assert spec.position == "alibi" and spec.tie_embeddings
    assert (spec.hidden_size, spec.num_layers, spec.num_heads) == (1024, 24, 16)


def test_bloom_accepts_num_hidden_layers_spelling() -> None:
    config = _config("bloom-560m.json")
    config["num_hidden_layers"] = config.pop("n_layer")
    config["num_attention_heads"] = config.pop("n_head")
    assert spec_from_hf_config(config, "bloom").num_layers == 24


def test_opt_fields() -> None:
    spec = load_hf_config(CONFIGS / "opt-1.3b.json")
    assert spec.ffn_kind == "relu" and spec.ffn_dim == 8192
    assert spec.position == "learned" and spec.tie_embeddings


def test_opt_350m_projection_is_rejected() -> None:
    with pytest.raises(UserError, match="word_embed_proj_dim"):
        load_hf_config(CONFIGS / "opt-350m.json")


def test_directory_with_config_json(tmp_path: Path) -> None:
    model = tmp_path / "bloom-small"
    model.mkdir()
    (model / "config.json").write_text((CONFIGS / "bloom-560m.json").read_text())
    spec = load_hf_config(model)
    assert spec.name == "bloom-small"
    assert str(model / "config.json") in spec.source


@pytest.mark.parametrize(
    ("raw", "dtype"),
    [
        ("float32", "float32"),
        ("torch.float16", "float16"),
        ("bfloat16", "bfloat16"),
        ("auto", "bfloat16"),
        (None, "bfloat16"),
    ],
)
def test_dtype(raw: str | None, dtype: str) -> None:
    config = _config("llama-2-7b.json")
    config["torch_dtype"] = raw
    assert spec_from_hf_config(config, "x").dtype == dtype


def test_newer_dtype_key_and_rope_parameters() -> None:
    config = _config("llama-2-7b.json")
    del config["torch_dtype"]
    config["dtype"] = "float32"
    config["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}
    spec = spec_from_hf_config(config, "x")
    assert spec.dtype == "float32" and spec.rope_theta == 500000.0


# ---- errors: each one line, naming the problem and the fix --------------------------------
def _error(call) -> str:
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path: Path) -> None:
    message = _error(lambda: load_hf_config(tmp_path / "nope.json"))
    assert "no such file" in message and "config.json" in message


def test_directory_without_config(tmp_path: Path) -> None:
    assert "no config.json" in _error(lambda: load_hf_config(tmp_path))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file(tmp_path: Path) -> None:
    file = tmp_path / "config.json"
    file.write_text("{}")
    file.chmod(0)
    try:
        assert "cannot read" in _error(lambda: load_hf_config(file))
    finally:
        file.chmod(0o644)


def test_binary_file_is_unreadable_text(tmp_path: Path) -> None:
    file = tmp_path / "config.json"
    file.write_bytes(b"\xff\xfe\x00binary")
    assert "cannot read" in _error(lambda: load_hf_config(file))


def test_not_json(tmp_path: Path) -> None:
    file = tmp_path / "config.json"
    file.write_text('{"model_type": "llama",\n  oops}')
    message = _error(lambda: load_hf_config(file))
    assert "not valid JSON" in message and "line 2" in message


def test_json_but_not_an_object(tmp_path: Path) -> None:
    file = tmp_path / "config.json"
    file.write_text("[1, 2]")
    assert "not an object" in _error(lambda: load_hf_config(file))


def test_missing_model_type() -> None:
    config = _config("gpt2.json")
    del config["model_type"]
    message = _error(lambda: spec_from_hf_config(config, "x"))
    assert "model_type" in message and "llama" in message


def test_unsupported_model_type() -> None:
    message = _error(lambda: spec_from_hf_config({"model_type": "t5"}, "x"))
    assert "'t5'" in message
    for family in SUPPORTED_FAMILIES:
        assert family in message


def test_missing_required_keys_are_all_named() -> None:
    config = _config("llama-2-7b.json")
    del config["hidden_size"], config["intermediate_size"]
    message = _error(lambda: spec_from_hf_config(config, "x"))
    assert "hidden_size" in message and "intermediate_size" in message
    assert "num_hidden_layers" not in message


def test_missing_key_names_the_alternative_spellings() -> None:
    config = _config("gpt2.json")
    del config["n_layer"]
    assert "n_layer or num_hidden_layers" in _error(lambda: spec_from_hf_config(config, "x"))


def test_inconsistent_shape_is_a_user_error() -> None:
    config = _config("mistral-7b-v0.1.json")
    config["num_key_value_heads"] = 5  # 32 heads are not a multiple of 5
    message = _error(lambda: spec_from_hf_config(config, "x"))
    assert "num_kv_heads" in message and "fix the config" in message


def test_unsupported_dtype() -> None:
    config = _config("gpt2.json")
    config["torch_dtype"] = "int8"
    assert "unsupported dtype" in _error(lambda: spec_from_hf_config(config, "x"))
