"""Run the engine's Triton decode kernels in Triton's CPU interpreter and compare them with
plain PyTorch; prints one JSON object. Run by tests/test_kernels.py with TRITON_INTERPRET=1
(the interpreter is chosen when the kernels are defined, so this needs its own process)."""

from __future__ import annotations

import json

import torch

from infermeter.catalog import get_spec
from infermeter.engine import kernels, moe_kernels
from infermeter.engine.generate import Engine

DENSE = ("tiny-llama", "tiny-gptj", "tiny-bloom")
# MoE routing, latent attention, windows + sinks + biased experts, windows + soft-caps
NEWER = ("tiny-qwen3-moe", "tiny-deepseek-v2", "tiny-gpt-oss", "tiny-gemma2")


def gemv_errors(dtype: torch.dtype) -> dict[str, float]:
    """Largest error of each small_linear mode relative to the output's largest value."""
    torch.manual_seed(0)
    m, k, n = 3, 320, 100  # ragged against the 32 x 64 tiles on purpose
    x = torch.randn(m, k, dtype=dtype)
    w = torch.randn(n, k, dtype=dtype) / k**0.5
    bias = torch.randn(n, dtype=dtype)
    res = torch.randn(m, n, dtype=dtype)
    cases = {
        "plain": (kernels.small_linear(x, w), x.float() @ w.float().T),
        "bias_residual": (
            kernels.small_linear(x, w, bias, res),
            x.float() @ w.float().T + bias.float() + res.float(),
        ),
    }
    return {
        name: float((got.float() - want).abs().max() / want.abs().max())
        for name, (got, want) in cases.items()
    }


def decode_tokens(name: str, path: str) -> list[list[int]]:
    """Greedy tokens of a float32 tiny model with decode attention `path` (sdpa or triton);
    the triton path also runs its MoE layers through the grouped GEMM."""
    engine = Engine(get_spec(name), device="cpu", dtype=torch.float32, cuda_graphs=False)
    if path != "sdpa":
        engine.model.kernels = kernels
        engine.attention = "triton"
        for block in engine.model.layers:
            if block.moe is not None:
                block.moe.path, block.moe.kernels = "triton", moe_kernels
    # two lengths (per-sequence slots); 20 + 6 tokens pass the 16-token windows (ring wraps)
    prompts = [[5, 9, 3, 7, 11, 2, 8, 4, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12], [6, 1, 12, 3]]
    return engine.generate(prompts, 6).tokens


def moe_errors() -> dict[str, float]:
    """Grouped-GEMM MoE layer (decode and prefill block sizes) against the per-expert loop,
    relative to the output's largest value."""
    engine = Engine(get_spec("tiny-gpt-oss"), device="cpu", dtype=torch.float32, seed=3)
    moe = next(b.moe for b in engine.model.layers if b.moe is not None)
    moe.kernels = moe_kernels
    out = {}
    for tokens in (3, 40):
        x = torch.randn(tokens, engine.spec.hidden_size, generator=torch.Generator().manual_seed(1))
        ids, weights = moe.route(x)
        want = moe._loop(x, ids, weights)
        got = moe._triton(x, ids, weights)
        out[f"tokens_{tokens}"] = float((got - want).abs().max() / want.abs().max())
    return out


def attention_errors() -> dict[str, float]:
    """Flash-decoding with a custom scale, soft-capped scores and sink logits, against float
    math; and the rotary + cache write at ring slots against indexing."""
    gen = torch.Generator().manual_seed(2)
    b, nq, nkv, d, length = 2, 4, 2, 16, 100
    q = torch.randn(b, nq, d, generator=gen)
    cache = torch.randn(b, length, 2, nkv, d, generator=gen)
    lens = torch.tensor([37, 100], dtype=torch.int32)
    sinks = torch.randn(nq, generator=gen)
    got = kernels.decode_attention(q, cache, lens, None, 0.3, 5.0, sinks)
    rows = []
    for i, n in enumerate(lens.tolist()):
        k = cache[i, :n, 0].repeat_interleave(nq // nkv, 1)
        v = cache[i, :n, 1].repeat_interleave(nq // nkv, 1)
        scores = torch.einsum("hd,nhd->hn", q[i], k) * 0.3
        scores = torch.tanh(scores / 5.0) * 5.0
        probs = torch.cat([scores, sinks[:, None]], -1).softmax(-1)[:, :-1]
        rows.append(torch.einsum("hn,nhd->hd", probs, v))
    want = torch.stack(rows)
    qkv = torch.randn(b, nq + 2 * nkv, d, generator=gen)
    ring = torch.zeros(b, 8, 2, nkv, d)
    pos, slots = torch.tensor([3, 21]), torch.tensor([3, 5])
    kernels.rope_store(qkv, ring, pos, None, None, nq, slots)
    stored = ring[torch.arange(b), slots]
    expected = qkv[:, nq:].view(b, 2, nkv, d)
    return {
        "sinks_softcap_scale": float((got - want).abs().max() / want.abs().max()),
        "ring_slots": float((stored - expected).abs().max()),
    }


def main() -> None:
    assert kernels.INTERPRETED, "run with TRITON_INTERPRET=1"
    result = {
        "gemv_float32": gemv_errors(torch.float32),
        "gemv_float16": gemv_errors(torch.float16),
        "tokens": {
            name: {path: decode_tokens(name, path) for path in ("sdpa", "triton")}
            for name in (*DENSE, *NEWER)
        },
        "moe": moe_errors(),
        "attention": attention_errors(),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
