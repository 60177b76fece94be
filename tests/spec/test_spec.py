"""ModelSpec: the paper's FLOP formulas, parameter counts, KV-cache bytes, validation."""

from __future__ import annotations

import json
from dataclasses import fields, replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infermeter.spec.model import _LATER_FIELDS, MLA, ModelSpec, MoE


def gpt3_style(
    h: int, layers: int, n: int, vocab: int = 50257, max_context: int = 2048
) -> ModelSpec:
    return ModelSpec(
        name=f"gpt3-{h}-{layers}-{n}",
        hidden_size=h,
        num_layers=layers,
        num_heads=n,
        vocab_size=vocab,
        max_context=max_context,
        tie_embeddings=True,
    )


# h is built as heads x head_dim so every drawn spec is valid; l of the paper is `layers`
shapes = st.tuples(
    st.integers(1, 64),  # heads
    st.integers(1, 256),  # head_dim
    st.integers(1, 128),  # layers
)


@given(shapes, st.integers(1, 8192), st.integers(1, 64))
def test_prefill_flops_match_appendix_a1(shape: tuple[int, int, int], s: int, b: int) -> None:
    n, d, layers = shape
    h = n * d
    spec = gpt3_style(h, layers, n)
    assert spec.prefill_flops(s, b) == 24 * b * s * h * h * layers + 4 * b * s * s * h * layers


@given(shapes, st.integers(0, 8192), st.integers(1, 64))
def test_decode_flops_match_appendix_a2(shape: tuple[int, int, int], i: int, b: int) -> None:
    n, d, layers = shape
    h = n * d
    spec = gpt3_style(h, layers, n)
    assert spec.decode_flops(i, b) == 24 * b * h * h * layers + 4 * b * i * h * layers


def test_lm_head_flops_are_added_only_on_request() -> None:
    spec = gpt3_style(768, 12, 12)
    head = 2 * 3 * 768 * 50257
    assert spec.prefill_flops(128, 3, lm_head=True) - spec.prefill_flops(128, 3) == head
    assert spec.decode_flops(128, 3, lm_head=True) - spec.decode_flops(128, 3) == head


def test_gpt2_small_params_exact() -> None:
    # Hugging Face GPT2LMHeadModel("gpt2") has 124,439,808 parameters
    spec = gpt3_style(768, 12, 12, max_context=1024)
    assert spec.num_params == 124_439_808
    assert spec.non_embedding_params == 12 * (12 * 768 * 768 + 13 * 768)


def test_swiglu_and_gqa_param_counts() -> None:
    # Llama-2-7B: 6,738,415,616 parameters in Hugging Face
    llama = ModelSpec(
        name="llama-2-7b",
        hidden_size=4096,
        num_layers=32,
        num_heads=32,
        vocab_size=32000,
        ffn_size=11008,
        ffn_kind="swiglu",
        position="rotary",
        norm="rmsnorm",
        bias=False,
    )
    assert llama.num_params == 6_738_415_616
    gqa = replace(llama, num_kv_heads=8)
    assert gqa.attention_matmul_params == 4096 * (4096 + 2 * 1024) + 4096 * 4096
    assert gqa.num_params < llama.num_params


def test_kv_cache_bytes() -> None:
    spec = gpt3_style(1024, 24, 16)
    # K and V, per layer, per sequence, per token, h values of 2 bytes (bfloat16)
    assert spec.kv_cache_bytes(100, 4) == 2 * 24 * 4 * 100 * 1024 * 2
    assert spec.with_dtype("float32").kv_cache_bytes(100, 4) == 2 * spec.kv_cache_bytes(100, 4)
    assert spec.kv_cache_bytes(0, 4) == 0


def test_gqa_reduces_kv_bytes_by_group_size() -> None:
    mha = ModelSpec(name="m", hidden_size=4096, num_layers=32, num_heads=32, vocab_size=32000)
    gqa = replace(mha, num_kv_heads=8)
    assert gqa.kv_cache_bytes(2048, 8) * 4 == mha.kv_cache_bytes(2048, 8)
    assert gqa.decode_bytes(2048, 8) < mha.decode_bytes(2048, 8)
    # queries keep all heads, so the attention FLOPs do not shrink
    assert gqa.decode_flops(2048) - 2 * gqa.layer_matmul_params * 32 == (
        mha.decode_flops(2048) - 2 * mha.layer_matmul_params * 32
    )


def test_decode_bytes_is_weights_plus_kv_cache() -> None:
    spec = gpt3_style(768, 12, 12, max_context=1024)
    # untied-equivalent head read once; input embedding (a gather) and positions left out
    weights = (spec.non_embedding_params + spec.final_norm_params + 50257 * 768) * 2
    assert spec.decode_weight_bytes == weights
    assert spec.decode_bytes(512, 2) == weights + spec.kv_cache_bytes(512, 2)


def test_round_trip_through_dict_and_json() -> None:
    spec = ModelSpec(
        name="rt",
        hidden_size=256,
        num_layers=3,
        num_heads=8,
        num_kv_heads=2,
        vocab_size=1000,
        ffn_size=512,
        ffn_kind="swiglu",
        head_dim=64,
        position="rotary",
        rotary_fraction=0.5,
        rope_theta=5e5,
        norm="rmsnorm",
        bias=False,
        dtype="float16",
        family="llama",
        source="test",
        extra={"note": "kept"},
    )
    again = ModelSpec.from_dict(spec.to_dict())
    assert again == spec
    assert again.extra == {"note": "kept"}
    assert ModelSpec.from_dict(json.loads(spec.to_json())) == spec


def test_from_dict_rejects_unknown_fields() -> None:
    data = gpt3_style(64, 2, 4).to_dict() | {"bogus": 1}
    with pytest.raises(ValueError, match="bogus"):
        ModelSpec.from_dict(data)


@pytest.mark.parametrize(
    "changes",
    [
        {"hidden_size": 0},
        {"num_layers": -1},
        {"num_heads": 0},
        {"vocab_size": 0},
        {"max_context": 0},
        {"hidden_size": 2.5},
        {"num_kv_heads": 3},  # 8 heads are not a multiple of 3
        {"num_kv_heads": 0},
        {"hidden_size": 100},  # not divisible by 8 heads, no head_dim
        {"dtype": "int4"},
        {"rotary_fraction": 0.0},
        {"rotary_fraction": 1.5},
    ],
)
def test_invalid_specs_raise_value_error(changes: dict) -> None:
    base = {"name": "bad", "hidden_size": 64, "num_layers": 2, "num_heads": 8, "vocab_size": 10}
    with pytest.raises(ValueError):
        ModelSpec(**(base | changes))


def test_explicit_head_dim_allows_indivisible_hidden_size() -> None:
    spec = ModelSpec(
        name="hd", hidden_size=100, num_layers=1, num_heads=8, head_dim=16, vocab_size=10
    )
    assert spec.q_dim == 128
    assert spec.attention_matmul_params == 100 * 3 * 128 + 128 * 100


# ---- today's layouts: mixture of experts, latent attention, windows ------------------------
LLAMA_LAYOUT = {"ffn_kind": "swiglu", "position": "rotary", "norm": "rmsnorm", "bias": False}


def moe_spec(**moe_fields) -> ModelSpec:
    moe = MoE(num_experts=8, experts_per_token=2, expert_ffn_size=256, **moe_fields)
    shape = {"hidden_size": 128, "num_layers": 4, "num_heads": 4, "num_kv_heads": 2}
    return ModelSpec(name="moe", **shape, vocab_size=1000, ffn_size=512, **LLAMA_LAYOUT, moe=moe)


@given(st.integers(1, 256), st.integers(1, 256), st.integers(0, 4096))
def test_distinct_experts_formula(experts: int, k: int, batch: int) -> None:
    k = min(k, experts)
    spec = MoE(num_experts=experts, experts_per_token=k, expert_ffn_size=8)
    touched = spec.expected_distinct(batch)
    assert touched == pytest.approx(experts * (1 - (1 - k / experts) ** batch))
    assert 0 <= touched <= experts
    if batch >= 1:
        assert touched >= k - 1e-9  # one token already touches k distinct experts
    assert spec.expected_distinct(1) == pytest.approx(k)


def test_moe_params_total_active_and_decode_bytes() -> None:
    spec = moe_spec()
    h, f = 128, 256
    expert = 3 * h * f
    attention = h * (128 + 2 * 64) + 128 * h
    norms = 2 * h
    router = 8 * h
    layer_total = attention + norms + router + 8 * expert
    assert spec.non_embedding_params == 4 * layer_total
    assert spec.num_params == 4 * layer_total + 2 * 1000 * h + h
    active = 4 * (attention + norms + router + 2 * expert) + 2 * 1000 * h + h
    assert spec.active_params() == active
    assert spec.active_params(include_embedding=False) == active - 1000 * h
    # batch 1 reads the k experts; a huge batch reads every expert once
    assert spec.decode_weight_bytes == (active - 1000 * h) * 2
    assert spec.decode_weight_bytes_at(10**6) == pytest.approx((spec.num_params - 1000 * h) * 2)
    b = 16
    touched = 8 * (1 - (1 - 2 / 8) ** b)
    expected = (4 * (attention + norms + router + touched * expert) + 1000 * h + h) * 2
    assert spec.decode_bytes(100, b) == round(expected) + spec.kv_cache_bytes(100, b)
    # FLOPs count the k experts of each token, not the experts a batch touches
    dense_equivalent = replace(spec, moe=None, ffn_size=2 * f)
    extra = 2 * router * 4  # the router's matmul per token and layer
    assert spec.decode_flops(50, 3) == dense_equivalent.decode_flops(50, 3) + 3 * extra
    assert spec.prefill_flops(64, 2) == dense_equivalent.prefill_flops(64, 2) + 128 * extra


def test_moe_layer_placement() -> None:
    spec = moe_spec(first_dense_layers=1, layer_step=2)
    assert [spec.is_moe_layer(i) for i in range(4)] == [False, True, False, True]
    assert replace(spec, moe=MoE(8, 2, 256, dense_layers=(1,))).num_moe_layers == 3
    dense_layer = spec.ffn_matmul_params
    assert spec.non_embedding_params == moe_spec().non_embedding_params - 2 * (
        8 * spec.expert_params + 8 * 128 - dense_layer
    )


def test_mla_cache_is_the_latent() -> None:
    mla = MLA(kv_lora_rank=512, qk_nope_dim=128, qk_rope_dim=64, v_head_dim=128)
    shape = {"hidden_size": 2048, "num_layers": 27, "num_heads": 16, "vocab_size": 102400}
    spec = ModelSpec(name="mla", **shape, ffn_size=10944, **LLAMA_LAYOUT, mla=mla)
    assert spec.kv_bytes_per_token == 576 * 2
    assert spec.kv_cache_bytes(1000, 3) == 27 * 3 * 1000 * 576 * 2
    mha = replace(spec, mla=None, head_dim=192)
    assert mha.kv_cache_bytes(1000, 3) > 10 * spec.kv_cache_bytes(1000, 3)
    n, h = 16, 2048
    assert spec.attention_matmul_params == (
        h * n * 192 + h * 576 + 512 * n * (128 + 128) + n * 128 * h
    )
    # decode attends in the latent space: (512 + 64) for scores, 512 for values, per head
    layer_matmul = spec.layer_matmul_params
    per_layer = 2 * 2 * layer_matmul + 2 * 2 * 300 * n * (576 + 512)
    assert spec.decode_flops(300, 2) == 27 * per_layer
    # prefill expands keys/values: 192 for scores, 128 for values
    assert spec.prefill_flops(100) == 27 * (2 * 100 * layer_matmul + 2 * 100 * 100 * n * 320)


def test_windows_cap_the_cache_and_the_attention() -> None:
    base = gpt3_style(256, 4, 4)
    windowed = replace(base, sliding_window=100, layer_types=("sliding", "full") * 2)
    assert windowed.layer_window(0) == 100 and windowed.layer_window(1) is None
    per_token = 2 * 256 * 2
    assert windowed.kv_cache_bytes(60, 2) == base.kv_cache_bytes(60, 2)
    assert windowed.kv_cache_bytes(1000, 2) == 2 * per_token * (2 * 1000 + 2 * 100)
    every = replace(base, sliding_window=100)  # no layer_types: every layer windowed
    assert every.kv_cache_bytes(1000, 1) == 4 * 100 * per_token
    assert windowed.decode_flops(1000) == base.decode_flops(1000) - 2 * 4 * (1000 - 100) * 256
    assert windowed.prefill_flops(50) == base.prefill_flops(50)
    assert windowed.decode_bytes(1000) < base.decode_bytes(1000)


def test_sinks_qk_norm_and_sandwich_norms_are_counted() -> None:
    base = replace(gpt3_style(256, 2, 4), norm="rmsnorm", bias=False)
    assert replace(base, attention_sinks=True).num_params == base.num_params + 2 * 4
    assert replace(base, qk_norm="head").num_params == base.num_params + 2 * 2 * 64
    assert replace(base, qk_norm="full").num_params == base.num_params + 2 * 2 * 256
    assert replace(base, norm_placement="sandwich").num_params == base.num_params + 2 * 2 * 256
    assert replace(base, norm_placement="post").num_params == base.num_params


def test_new_fields_leave_old_dicts_unchanged_and_round_trip() -> None:
    old_keys = {f.name for f in fields(ModelSpec)} - set(_LATER_FIELDS)
    assert set(gpt3_style(64, 2, 4).to_dict()) == old_keys  # profile keys of older stores hold
    spec = replace(
        moe_spec(first_dense_layers=1, dense_layers=(3,), scoring="sigmoid"),
        sliding_window=64,
        layer_types=("sliding", "full", "sliding", "full"),
        attention_sinks=True,
        rope_scaling={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64},
        mla=MLA(kv_lora_rank=32, qk_nope_dim=16, qk_rope_dim=8, v_head_dim=16),
    )
    again = ModelSpec.from_dict(json.loads(spec.to_json()))
    assert again == spec and again.moe == spec.moe and again.mla == spec.mla
    assert again.num_params == spec.num_params


@pytest.mark.parametrize(
    "changes",
    [
        {"layer_types": ("full",)},  # one entry per layer
        {"layer_types": ("sliding", "full")},  # sliding layers need a window
        {"sliding_window": 0},
        {"qk_norm": "both"},
        {"ffn_kind": "swish"},
        {"attn_softcap": -1.0},
    ],
)
def test_invalid_newer_fields(changes: dict) -> None:
    base = {"name": "bad", "hidden_size": 64, "num_layers": 2, "num_heads": 8, "vocab_size": 10}
    with pytest.raises(ValueError):
        ModelSpec(**(base | changes))


def test_invalid_moe_and_mla() -> None:
    with pytest.raises(ValueError):
        MoE(num_experts=4, experts_per_token=5, expert_ffn_size=8)
    with pytest.raises(ValueError):
        MoE(num_experts=6, experts_per_token=2, expert_ffn_size=8, groups=4)
    with pytest.raises(ValueError):
        MLA(kv_lora_rank=32, qk_nope_dim=16, qk_rope_dim=7, v_head_dim=16)
