"""The tiny model dimensions the engine and HF tests build specs from, defined once."""

from __future__ import annotations

from typing import Any

# Small enough for a CPU test, large enough for 4 heads of 16 and a 2-layer stack.
TINY_DIMS: dict[str, Any] = {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "vocab_size": 256}

# The LLaMA block layout (SwiGLU MLP, rotary positions, RMSNorm, no biases) the tiny
# llama-like test specs share; each adds its own heads, widths and extras.
LLAMA_LAYOUT: dict[str, Any] = {
    "ffn_kind": "swiglu",
    "position": "rotary",
    "norm": "rmsnorm",
    "bias": False,
}
