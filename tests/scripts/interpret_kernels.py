"""Run the engine's Triton decode kernels in Triton's CPU interpreter and compare them with
plain PyTorch; prints one JSON object. Run by tests/test_kernels.py with TRITON_INTERPRET=1
(the interpreter is chosen when the kernels are defined, so this needs its own process)."""

from __future__ import annotations

import json

import torch

from infermeter.catalog import get_spec
from infermeter.engine import kernels
from infermeter.engine.generate import Engine


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
    """Greedy tokens of a float32 tiny model with decode attention `path` (sdpa or triton)."""
    engine = Engine(get_spec(name), device="cpu", dtype=torch.float32, cuda_graphs=False)
    if path != "sdpa":
        engine.model.kernels = kernels
        engine.attention = "triton"
    prompts = [[5, 9, 3, 7, 11, 2, 8, 4], [6, 1, 12, 3]]  # two lengths: per-sequence slots
    return engine.generate(prompts, 6).tokens


def main() -> None:
    assert kernels.INTERPRETED, "run with TRITON_INTERPRET=1"
    result = {
        "gemv_float32": gemv_errors(torch.float32),
        "gemv_float16": gemv_errors(torch.float16),
        "tokens": {
            name: {path: decode_tokens(name, path) for path in ("sdpa", "triton")}
            for name in ("tiny-llama", "tiny-gptj", "tiny-bloom")
        },
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
