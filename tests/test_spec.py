"""ModelSpec: the paper's FLOP formulas, parameter counts, KV-cache bytes, validation."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st

from infermeter.spec import ModelSpec


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
