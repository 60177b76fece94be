"""The engine on today's families (issue 20), CPU, float32, against transformers.

For each family of tests/hf_tiny.py: a tiny transformers model with random weights is saved
as safetensors and loaded through the engine's checkpoint loader; then
- the spec read from the saved config.json counts exactly transformers' parameters;
- the engine's prefill logits match transformers' forward: relative L2 error < 1e-5
  (observed <= 1e-6; float32 sums in another order);
- greedy generation through the engine's KV cache (ring buffers that wrap for the windowed
  layers: prompts of 9 tokens, windows of 8; MLA's absorbed decode; top-k routing per token)
  gives exactly the tokens of greedy decoding by recomputation with transformers' forward;
- a single decode step's logits match the full forward's last row (rel. error < 1e-5): the
  decode-only paths (MLA absorption, ring slots) against the prefill ones.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from hf_tiny import FAMILIES, WINDOW, tiny_config  # noqa: E402
from infermeter.engine import Engine, attention  # noqa: E402
from infermeter.spec.hfconfig import load_hf_config  # noqa: E402

PROMPTS = [
    [3, 17, 99, 5, 250, 42, 7, 7, 128, 9, 11, 200, 31, 64, 2, 90, 77, 13, 8, 1],
    [200, 1, 64, 33, 90, 12, 8, 255, 0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15],
]
NEW_TOKENS = 12


def _randomize(model: Any, gemma: bool) -> None:
    """Weights large enough that every part (router choices included) matters."""
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim > 1:
                p.copy_(noise * 0.9 / math.sqrt(p.shape[-1]))
            elif "norm" in name:
                p.copy_((0.0 if gemma else 1.0) + 0.2 * noise)  # Gemma stores scale − 1
            else:  # biases, sinks
                p.copy_(0.5 * noise)
        for name, b in model.named_buffers():
            if "e_score_correction_bias" in name:
                b.copy_(0.1 * torch.randn(b.shape, generator=gen))


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def pair(request: Any, tmp_path_factory: Any) -> tuple[str, Any, Engine, Path]:
    family = request.param
    torch.manual_seed(0)
    config = tiny_config(family)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    _randomize(model.eval(), family.startswith("gemma"))
    path = tmp_path_factory.mktemp(family)
    model.save_pretrained(path)
    engine = Engine(load_hf_config(path), checkpoint=str(path))
    return family, model, engine, path


def rel_error(a: Any, b: Any) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.slow
def test_spec_counts_the_parameters_transformers_holds(pair: Any) -> None:
    _, model, engine, _ = pair
    assert engine.spec.num_params == sum(p.numel() for p in model.parameters())


@pytest.mark.slow
def test_prefill_logits_match_transformers(pair: Any) -> None:
    _, model, engine, _ = pair
    tokens = torch.tensor(PROMPTS)
    with torch.no_grad():
        want = model(tokens).logits
    assert rel_error(engine.score(tokens), want) < 1e-5


@pytest.mark.slow
@pytest.mark.parametrize("least", [1, 12])
def test_prefill_in_blocks_matches_transformers(pair: Any, least: int) -> None:
    """The prefill's blocks of queries (blocked_attend) small enough that the 20-token prompts
    cross several (the defaults put any prompt of these tests in one block): a window's
    block one window (least 1) or two (least 12: a block across chunks), a global block
    16 queries."""
    _, model, engine, _ = pair
    tokens = torch.tensor(PROMPTS)
    with torch.no_grad():
        want = model(tokens).logits
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(attention, "LOCAL_BLOCK", least)
        patch.setattr(attention, "SCORE_BUDGET", 1)
        got = engine.score(tokens)
    assert rel_error(got, want) < 1e-5


def _greedy_by_recompute(model: Any, prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt) :]


@pytest.mark.slow
def test_greedy_tokens_match_transformers(pair: Any) -> None:
    _, model, engine, _ = pair
    prompts = [PROMPTS[0][:9], PROMPTS[1][:5]]  # one longer than the windows, one shorter
    assert len(prompts[0]) > WINDOW
    run = engine.generate(prompts, NEW_TOKENS)
    for prompt, tokens in zip(prompts, run.tokens, strict=True):
        assert tokens == _greedy_by_recompute(model, prompt, NEW_TOKENS)


def decode_logits(engine: Engine, sequence: list[int]) -> Any:
    """Logits of the last token of `sequence` computed as one decode step after a prefill of
    the others (masked sdpa decode: the CPU path)."""
    model, n = engine.model, len(sequence)
    tokens = torch.tensor([sequence])
    with torch.inference_mode():
        engine._ensure_state(1, n + 1)
        model(tokens[:, :-1], model.prefill_context(1, n - 1))
        span = engine._state.length
        ctx = model.decode_context(torch.tensor([n - 1]), span, "sdpa")
        return model.logits(model(tokens[:, -1:], ctx))[0]


@pytest.mark.slow
def test_one_decode_step_matches_the_full_forward(pair: Any) -> None:
    _, _, engine, _ = pair
    sequence = PROMPTS[0][:14]  # past the windows: the decode reads a wrapped ring buffer
    want = engine.score(torch.tensor([sequence]))[0, -1]
    assert rel_error(decode_logits(engine, sequence), want) < 1e-5
