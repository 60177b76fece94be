"""FlexAttention prefill (engine/flex.py): the same attention as the explicit path for every
mask kind, size and head grouping; a self-check that fails where the math is wrong; the
engine's choice and its switch. On a CPU flex runs unfused (compiled flex serves CUDA only):
the math is what is checked here; its speed and its compiled kernels need a GPU
(benchmarks/flex_prefill.py)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
import torch
from hypothesis import example, given, settings
from hypothesis import strategies as st
from test_attention import reference

from infermeter.engine.attention import chunk_mask, window_mask
from infermeter.engine.flex import (
    FlexPrefill,
    choose_prefill,
    flex_problem,
    prefill_mode,
)
from infermeter.engine.generate import Engine
from infermeter.errors import UserError
from infermeter.spec.catalog import get_spec

pytestmark = pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
CPU = torch.device("cpu")


@settings(max_examples=30, deadline=None)
@given(
    s=st.integers(1, 70),
    window=st.one_of(st.none(), st.integers(1, 40)),
    chunked=st.booleans(),
    kind=st.sampled_from(["softcap", "sinks", "both"]),
    group=st.sampled_from([1, 2, 4]),
    scale=st.one_of(st.none(), st.floats(0.05, 0.5)),
)
@example(s=37, window=None, chunked=False, kind="sinks", group=4, scale=None)
@example(s=33, window=8, chunked=True, kind="softcap", group=2, scale=0.1)
def test_flex_prefill_is_attention_under_the_layers_mask(
    s: int, window: int | None, chunked: bool, kind: str, group: int, scale: float | None
) -> None:
    gen = torch.Generator().manual_seed(s * 7 + (window or 0))
    b, nkv, d = 2, 2, 8
    q = torch.randn(b, nkv * group, s, d, generator=gen)
    k, v = (torch.randn(b, nkv, s, d, generator=gen) for _ in range(2))
    softcap = 20.0 if kind in ("softcap", "both") else None
    sinks = torch.randn(nkv * group, generator=gen) if kind in ("sinks", "both") else None
    pos = torch.arange(s)
    chunk = chunked and window is not None
    mask = chunk_mask(pos, pos, window) if chunk else window_mask(pos, pos, window)
    got = FlexPrefill(compiled=False)(q, k, v, window, chunked, scale, softcap, sinks)
    want = reference(q, k, v, mask, softcap, sinks, scale)
    assert got.shape == (b, nkv * group, s, d)
    assert torch.allclose(got.double(), want, atol=1e-5), (got.double() - want).abs().max()


def test_block_masks_are_kept_for_the_latest_length_only() -> None:
    flex = FlexPrefill(compiled=False)
    first = flex.block_mask(40, None, False, CPU)
    assert flex.block_mask(40, None, False, CPU) is first  # made once a length
    local = flex.block_mask(40, 8, False, CPU)
    assert local is not first and len(flex._masks) == 2
    flex.block_mask(41, None, False, CPU)  # another length: the prefill graph of 40 is gone
    assert list(flex._masks) == [(41, None, False)]


class NoSinks(FlexPrefill):
    """Forgets the sinks (their softmax column)."""

    def __call__(self, q: Any, k: Any, v: Any, window: Any, chunked: Any = False,
                 scale: Any = None, softcap: Any = None, sinks: Any = None) -> Any:  # fmt: skip
        return super().__call__(q, k, v, window, chunked, scale, softcap, None)


class GlobalChunks(FlexPrefill):
    """Attends across chunks (a chunked layer read as windowed)."""

    def __call__(self, q: Any, k: Any, v: Any, window: Any, chunked: Any = False,
                 scale: Any = None, softcap: Any = None, sinks: Any = None) -> Any:  # fmt: skip
        return super().__call__(q, k, v, window, False, scale, softcap, sinks)


class Broken(FlexPrefill):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("triton: out of resources")


def test_the_self_check_passes_flex_and_names_what_is_wrong() -> None:
    assert flex_problem(FlexPrefill(compiled=False), CPU, torch.float32) is None
    assert "window of 128, sinks" in (
        flex_problem(NoSinks(compiled=False), CPU, torch.float32) or ""
    )
    assert "chunks of 128" in (flex_problem(GlobalChunks(compiled=False), CPU, torch.float32) or "")
    assert flex_problem(Broken(compiled=False), CPU, torch.float32) == (
        "RuntimeError: triton: out of resources"
    )


def _model(name: str) -> Any:
    spec = replace(get_spec(name), max_context=128)
    return Engine(spec, device="cpu", cuda_graphs=False).model


def test_the_engine_takes_flex_only_for_capped_or_sink_layers_on_cuda(monkeypatch: Any) -> None:
    assert choose_prefill(_model("tiny-llama"), CPU, torch.float32, "auto") == (None, None)
    model = _model("tiny-gpt-oss")
    choice, why = choose_prefill(model, CPU, torch.float32, "auto")
    assert choice == "explicit" and "not CUDA" in (why or "") and model.flex_prefill is None
    assert choose_prefill(model, CPU, torch.float32, "explicit") == (
        "explicit", "INFERMETER_PREFILL_ATTENTION=explicit"
    )  # fmt: skip
    with pytest.raises(UserError, match="INFERMETER_PREFILL_ATTENTION=flex cannot run: not CUDA"):
        choose_prefill(model, CPU, torch.float32, "flex")


@pytest.mark.parametrize("value", ["", "auto", "explicit", "flex", "Flex", "fused"])
def test_the_switch_takes_its_three_values_and_refuses_others(monkeypatch: Any, value: str) -> None:
    monkeypatch.setenv("INFERMETER_PREFILL_ATTENTION", value)
    if value in ("", "auto", "explicit", "flex"):
        assert prefill_mode() == (value or "auto")
    else:
        with pytest.raises(UserError, match="must be auto, explicit or flex"):
            prefill_mode()
        with pytest.raises(UserError, match="INFERMETER_PREFILL_ATTENTION"):
            Engine(get_spec("tiny-gpt-oss"), device="cpu")  # refused before the weights


@pytest.mark.parametrize("name", ["tiny-gpt-oss", "tiny-gemma2"])
def test_the_engine_generates_the_same_tokens_through_flex(name: str) -> None:
    spec = replace(get_spec(name), max_context=128)
    engine = Engine(spec, device="cpu", cuda_graphs=False)
    assert engine.describe()["prefill_attention"] == "explicit"
    prompts = [[(7 * i + 3) % spec.vocab_size for i in range(40)]]
    want = engine.generate(prompts, 6)
    logits = engine.score(torch.tensor(prompts))
    engine.model.flex_prefill = FlexPrefill(compiled=False)  # as choose_prefill sets it on CUDA
    assert engine.generate(prompts, 6).tokens == want.tokens
    assert torch.allclose(engine.score(torch.tensor(prompts)), logits, atol=1e-4)
