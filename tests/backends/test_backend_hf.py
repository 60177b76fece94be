"""The hf backend on tiny random models, CPU only (seconds)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from infermeter.backends import Measurement, Point, available_backends, get_backend
from infermeter.backends.hf import HFBackend, hf_family
from infermeter.errors import UserError
from infermeter.spec.model import ModelSpec
from specs import LLAMA_LAYOUT, TINY_DIMS

TINY: dict[str, Any] = {**TINY_DIMS}
TINY["max_context"] = 256  # spec dtype stays the default bfloat16: CPU must switch to float32

SPECS: dict[str, ModelSpec] = {
    "llama": ModelSpec(
        name="tiny-llama",
        num_kv_heads=2,
        ffn_size=128,
        **LLAMA_LAYOUT,
        **TINY,
    ),
    # q/k/v biases only, no family given: the layout alone must pick qwen2
    "qwen2": ModelSpec(
        name="tiny-qwen2",
        num_kv_heads=2,
        ffn_size=128,
        **LLAMA_LAYOUT,
        qkv_bias=True,
        tie_embeddings=True,
        **TINY,
    ),
    "mistral": ModelSpec(
        name="tiny-mistral",
        num_kv_heads=1,
        head_dim=32,  # != hidden/heads: head_dim must reach the config
        ffn_size=96,
        **LLAMA_LAYOUT,
        family="mistral",
        **TINY,
    ),
    "gpt2": ModelSpec(name="tiny-gpt2", tie_embeddings=True, **TINY),
    "gptj": ModelSpec(
        name="tiny-gptj",
        position="rotary",
        rotary_fraction=0.25,
        parallel_attn_ffn=True,
        bias=False,  # GPT-J: biases in the MLP and the LM head only
        mlp_bias=True,
        lm_head_bias=True,
        **TINY,
    ),
    "gpt_neox": ModelSpec(
        name="tiny-neox",
        position="rotary",
        rotary_fraction=0.25,
        parallel_attn_ffn=True,
        parallel_norms=2,
        **TINY,
    ),
    "bloom": ModelSpec(
        name="tiny-bloom", position="alibi", embedding_norm=True, tie_embeddings=True, **TINY
    ),
    "opt": ModelSpec(
        name="tiny-opt", ffn_kind="relu", position_offset=2, tie_embeddings=True, **TINY
    ),
}


def _needs_torch() -> None:
    pytest.importorskip("torch")
    pytest.importorskip("transformers")


@pytest.fixture(scope="module", params=sorted(SPECS))
def prepared(request: pytest.FixtureRequest) -> Iterator[tuple[str, HFBackend]]:
    _needs_torch()
    backend = HFBackend(device="cpu", seed=1)
    backend.prepare(SPECS[request.param])
    yield request.param, backend
    backend.close()


def _check(m: Measurement, point: Point) -> None:
    assert m.status == "ok", m.detail
    assert m.ttft_s is not None
    assert m.runtime_s > m.ttft_s > 0
    assert m.output_tokens_actual == point.output_tokens


# ---- family mapping (no torch needed) ----------------------------------------------------


def test_family_mapping() -> None:
    assert {name: hf_family(spec) for name, spec in SPECS.items()} == {name: name for name in SPECS}


def test_unsupported_combination_is_a_user_error() -> None:
    spec = ModelSpec(name="odd", norm="rmsnorm", ffn_kind="gelu", position="learned", **TINY)
    with pytest.raises(UserError, match="position=learned, norm=rmsnorm, ffn_kind=gelu"):
        hf_family(spec)


def test_family_that_cannot_hold_the_layout_is_a_user_error() -> None:
    spec = ModelSpec(name="odd-gpt2", norm="rmsnorm", family="gpt2", **TINY)
    with pytest.raises(UserError, match=r"transformers' gpt2 has .*norm=layernorm"):
        hf_family(spec)


def test_family_constraint_is_a_user_error() -> None:
    spec = ModelSpec(name="gqa-gpt2", num_kv_heads=2, **TINY)
    with pytest.raises(UserError, match="grouped-query"):
        hf_family(spec)


def test_newer_layouts_are_refused_not_run_as_llama() -> None:
    from infermeter.spec.catalog import get_spec

    for name in ("mixtral-8x7b", "deepseek-v2-lite", "gpt-oss-20b", "gemma-2-9b"):
        with pytest.raises(UserError, match="use --backend engine"):
            hf_family(get_spec(name))


# ---- registry ------------------------------------------------------------------------------


def test_registry() -> None:
    assert available_backends() == ["engine", "hf", "openai"]
    backend = get_backend("hf", device="cpu", warmup=0)
    assert isinstance(backend, HFBackend)
    assert backend.name == "hf"


def test_unknown_backend_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"unknown backend 'nope'; available: engine, hf"):
        get_backend("nope")


def test_unknown_option_is_a_user_error() -> None:
    with pytest.raises(UserError, match=r"no option.*devcie"):
        get_backend("hf", devcie="cpu")


def test_backends_import_without_torch() -> None:
    code = "import sys, infermeter.backends; assert 'torch' not in sys.modules, 'torch imported'"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# ---- tiny models -------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "point",
    [Point(16, 8, 1), Point(8, 4, 2)],
    ids=lambda pt: f"p{pt.prompt_tokens}-o{pt.output_tokens}-b{pt.batch_size}",
)
def test_measure(prepared: tuple[str, HFBackend], point: Point) -> None:
    _, backend = prepared
    _check(backend.measure(point), point)


@pytest.mark.slow
def test_forced_length_one_token(prepared: tuple[str, HFBackend]) -> None:
    _, backend = prepared
    point = Point(4, 1, 1)
    _check(backend.measure(point), point)


@pytest.mark.slow
def test_param_count_matches_spec(prepared: tuple[str, HFBackend]) -> None:
    family, backend = prepared
    info = backend.describe()
    assert info["num_params"] == SPECS[family].num_params
    assert info["param_gap"] == 0


@pytest.mark.slow
def test_bias_mismatch_builds_and_reports_the_gap() -> None:
    """A GPT-J spec that says 'biases everywhere' still runs; describe() shows the gap."""
    _needs_torch()
    spec = ModelSpec(
        name="naive-gptj", position="rotary", rotary_fraction=0.25, parallel_attn_ffn=True, **TINY
    )
    backend = HFBackend(device="cpu", warmup=0)
    backend.prepare(spec)
    info = backend.describe()
    backend.close()
    hidden, layers, vocab = TINY["hidden_size"], TINY["num_layers"], TINY["vocab_size"]
    # transformers' GPT-J: no q/k/v/out biases (4h a layer) but an LM-head bias (vocab)
    assert info["param_gap"] == vocab - layers * 4 * hidden


@pytest.mark.slow
def test_context_limit(prepared: tuple[str, HFBackend]) -> None:
    _, backend = prepared
    with pytest.raises(UserError, match="context limit of 256"):
        backend.measure(Point(250, 7, 1))


@pytest.mark.slow
def test_describe(prepared: tuple[str, HFBackend]) -> None:
    family, backend = prepared
    info = backend.describe()
    assert info["backend"] == "hf"
    assert info["torch"] and info["transformers"]
    assert info["device"] == "cpu" and info["device_name"]
    assert info["dtype"] == "float32" and "bfloat16" in info["dtype_note"]
    assert info["hf_model_type"] == family
    # GPT-J and BLOOM have no SDPA path in transformers: the fallback is recorded.
    assert info["attn_implementation_used"] in ("sdpa", "eager")


@pytest.mark.slow
def test_out_of_memory_is_a_measurement(monkeypatch: pytest.MonkeyPatch) -> None:
    _needs_torch()
    import torch

    backend = HFBackend(device="cpu", warmup=0)
    backend.prepare(SPECS["llama"])

    def boom(*args: Any, **kwargs: Any) -> Any:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")

    monkeypatch.setattr(backend.model, "generate", boom)
    m = backend.measure(Point(8, 4, 1))
    backend.close()
    assert m.status == "error"
    assert m.detail is not None and m.detail.startswith("out of memory")


@pytest.mark.slow
def test_local_checkpoint_ignores_its_eos(tmp_path: Any) -> None:
    """Every id is an eos in the saved checkpoint: only a forced length reaches o tokens."""
    _needs_torch()
    from transformers import AutoModelForCausalLM

    from infermeter.backends.hf import hf_config

    spec = SPECS["llama"]
    model = AutoModelForCausalLM.from_config(hf_config(spec))
    model.generation_config.eos_token_id = list(range(spec.vocab_size))
    model.save_pretrained(tmp_path)

    backend = HFBackend(device="cpu", warmup=0, checkpoint=tmp_path)
    backend.prepare(spec)
    point = Point(8, 6, 2)
    m = backend.measure(point)
    info = backend.describe()
    backend.close()
    _check(m, point)
    assert info["checkpoint"] == str(tmp_path)
    assert info["num_params"] == spec.num_params


def test_checkpoint_must_be_a_local_directory(tmp_path: Any) -> None:
    _needs_torch()
    backend = HFBackend(device="cpu", checkpoint=tmp_path / "meta-llama/Llama-3-8B")
    with pytest.raises(UserError, match="not a local directory"):
        backend.prepare(SPECS["llama"])
