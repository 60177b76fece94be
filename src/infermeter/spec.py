"""ModelSpec: a transformer architecture without weights, and what follows from it.

Parameter counts, FLOPs and bytes are derived from the shape alone. For a GPT-3-style spec
(multi-head attention, a 4h GELU FFN) the layer FLOPs reduce exactly to the idealized-runtime
paper's 24·b·s·h²·l·(1 + s/6h) for a prefill and 24·b·h²·l + 4·b·i·h·l for a decode step
(Appendix A); the LM head is counted separately because the paper leaves it out.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

FfnKind = Literal["gelu", "relu", "swiglu"]
PositionKind = Literal["learned", "rotary", "alibi"]
NormKind = Literal["layernorm", "rmsnorm"]

DTYPE_BYTES: dict[str, int] = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8": 1,
}


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer architecture (no weights)."""

    name: str
    hidden_size: int
    num_layers: int
    num_heads: int
    vocab_size: int
    num_kv_heads: int | None = None  # None: multi-head attention (= num_heads)
    ffn_size: int | None = None  # None: 4 * hidden_size
    ffn_kind: FfnKind = "gelu"  # gelu/relu: two matrices; swiglu: gated, three matrices
    head_dim: int | None = None  # None: hidden_size // num_heads
    position: PositionKind = "learned"
    rotary_fraction: float = 1.0  # share of head_dim that is rotated (GPT-J 0.25, NeoX 0.25)
    rope_theta: float = 10000.0
    norm: NormKind = "layernorm"
    norm_eps: float = 1e-5
    parallel_attn_ffn: bool = False  # GPT-J / NeoX: attention and FFN read the same input
    bias: bool = True  # linear layers carry biases (GPT-2, OPT, BLOOM) or not (LLaMA)
    qkv_bias: bool | None = None  # per-part exceptions to `bias`, None follows it
    out_bias: bool | None = None  # (Qwen2: q/k/v only; GPT-J: MLP only)
    mlp_bias: bool | None = None
    lm_head_bias: bool = False  # GPT-J's LM head has one
    embedding_norm: bool = False  # BLOOM normalises the embedding output
    parallel_norms: int = 1  # with parallel attention/FFN: one shared norm (GPT-J) or two (NeoX)
    position_offset: int = 0  # OPT keeps 2 extra rows of learned positions
    tie_embeddings: bool = False
    max_context: int = 2048
    dtype: str = "bfloat16"
    family: str = "custom"  # the Hugging Face model_type it mirrors, when any
    source: str = ""  # where the numbers come from
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        for name in ("hidden_size", "num_layers", "num_heads", "vocab_size", "max_context"):
            value = getattr(self, name)
            if type(value) is not int or value <= 0:
                raise ValueError(f"{self.name}: {name} must be a positive integer, got {value!r}")
        if self.kv_heads <= 0 or self.num_heads % self.kv_heads:
            raise ValueError(
                f"{self.name}: num_heads ({self.num_heads}) must be a multiple of "
                f"num_kv_heads ({self.kv_heads})"
            )
        if self.head_dim is None and self.hidden_size % self.num_heads:
            raise ValueError(
                f"{self.name}: hidden_size ({self.hidden_size}) is not divisible by "
                f"num_heads ({self.num_heads}); set head_dim explicitly"
            )
        for name in ("num_kv_heads", "ffn_size", "head_dim"):
            value = getattr(self, name)
            if value is not None and (type(value) is not int or value <= 0):
                raise ValueError(f"{self.name}: {name} must be a positive integer or None")
        if self.parallel_norms not in (1, 2) or self.position_offset < 0:
            raise ValueError(f"{self.name}: parallel_norms must be 1 or 2, position_offset >= 0")
        if self.dtype not in DTYPE_BYTES:
            raise ValueError(
                f"{self.name}: unknown dtype {self.dtype!r}; use one of {sorted(DTYPE_BYTES)}"
            )
        if not 0.0 < self.rotary_fraction <= 1.0:
            raise ValueError(f"{self.name}: rotary_fraction must be in (0, 1]")

    # ---- shape -------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads if self.num_kv_heads is not None else self.num_heads

    @property
    def dim_head(self) -> int:
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def ffn_dim(self) -> int:
        return self.ffn_size if self.ffn_size is not None else 4 * self.hidden_size

    @property
    def q_dim(self) -> int:
        return self.num_heads * self.dim_head

    @property
    def kv_dim(self) -> int:
        return self.kv_heads * self.dim_head

    @property
    def has_qkv_bias(self) -> bool:
        return self.bias if self.qkv_bias is None else self.qkv_bias

    @property
    def has_out_bias(self) -> bool:
        return self.bias if self.out_bias is None else self.out_bias

    @property
    def has_mlp_bias(self) -> bool:
        return self.bias if self.mlp_bias is None else self.mlp_bias

    @property
    def norm_params(self) -> int:
        """Weights of one norm: scale (and shift for LayerNorm)."""
        return (2 if self.norm == "layernorm" else 1) * self.hidden_size

    @property
    def dtype_bytes(self) -> int:
        return DTYPE_BYTES[self.dtype]

    # ---- parameters --------------------------------------------------------------------
    @property
    def attention_matmul_params(self) -> int:
        """Weights of Q, K, V and the output projection in one layer."""
        h = self.hidden_size
        return h * (self.q_dim + 2 * self.kv_dim) + self.q_dim * h

    @property
    def ffn_matmul_params(self) -> int:
        matrices = 3 if self.ffn_kind == "swiglu" else 2
        return matrices * self.hidden_size * self.ffn_dim

    @property
    def layer_matmul_params(self) -> int:
        return self.attention_matmul_params + self.ffn_matmul_params

    @property
    def layer_small_params(self) -> int:
        """Biases and norm weights of one layer (small, but real bytes to read)."""
        h = self.hidden_size
        norms = self.norm_params * (self.parallel_norms if self.parallel_attn_ffn else 2)
        biases = 0
        if self.has_qkv_bias:
            biases += self.q_dim + 2 * self.kv_dim
        if self.has_out_bias:
            biases += h
        if self.has_mlp_bias:
            biases += (2 if self.ffn_kind == "swiglu" else 1) * self.ffn_dim + h
        return norms + biases

    @property
    def embedding_params(self) -> int:
        positions = self.max_context + self.position_offset if self.position == "learned" else 0
        norm = self.norm_params if self.embedding_norm else 0
        return (self.vocab_size + positions) * self.hidden_size + norm

    @property
    def lm_head_params(self) -> int:
        weights = 0 if self.tie_embeddings else self.vocab_size * self.hidden_size
        return weights + (self.vocab_size if self.lm_head_bias else 0)

    @property
    def final_norm_params(self) -> int:
        return self.norm_params

    @property
    def non_embedding_params(self) -> int:
        return self.num_layers * (self.layer_matmul_params + self.layer_small_params)

    @property
    def num_params(self) -> int:
        return (
            self.non_embedding_params
            + self.embedding_params
            + self.lm_head_params
            + self.final_norm_params
        )

    # ---- FLOPs (2 per multiply-add; matmuls only, as in the paper) -----------------------
    def prefill_flops(self, prompt_tokens: int, batch_size: int = 1, lm_head: bool = False) -> int:
        """FLOPs of a forward pass over `prompt_tokens` tokens, per the paper's counting.

        Attention scores and attention-over-values are counted over the full s×s square, as
        in Appendix A.1 (no causal halving), so a GPT-3 spec gives 24bsh²l(1 + s/6h).
        `lm_head=True` adds the vocabulary projection for the last position of each sequence.
        """
        b, s = batch_size, prompt_tokens
        per_layer = 2 * b * s * self.layer_matmul_params + 4 * b * s * s * self.q_dim
        total = self.num_layers * per_layer
        if lm_head:
            total += 2 * b * self.hidden_size * self.vocab_size
        return total

    def decode_flops(self, context: int, batch_size: int = 1, lm_head: bool = False) -> int:
        """FLOPs to generate one token per sequence when `context` tokens are already cached.

        Appendix A.2: 24bh²l + 4bihl for a GPT-3 spec, i = tokens so far.
        """
        b, i = batch_size, context
        per_layer = 2 * b * self.layer_matmul_params + 4 * b * i * self.q_dim
        total = self.num_layers * per_layer
        if lm_head:
            total += 2 * b * self.hidden_size * self.vocab_size
        return total

    # ---- bytes ---------------------------------------------------------------------------
    def kv_cache_bytes(self, tokens: int, batch_size: int = 1) -> int:
        """Bytes of keys and values held for `tokens` positions of `batch_size` sequences."""
        return 2 * self.num_layers * batch_size * tokens * self.kv_dim * self.dtype_bytes

    @property
    def decode_weight_bytes(self) -> int:
        """Weights a decode step must read: every layer, the final norm and the LM head.

        The input embedding is a gather of b rows, not a full read, so it is left out; with
        tied embeddings the LM head reads that same matrix once.
        """
        head = self.vocab_size * self.hidden_size + (self.vocab_size if self.lm_head_bias else 0)
        params = self.non_embedding_params + self.final_norm_params + head
        return params * self.dtype_bytes

    def decode_bytes(self, context: int, batch_size: int = 1) -> int:
        """Minimum bytes moved from memory by one decode step: weights + the KV cache read."""
        return self.decode_weight_bytes + self.kv_cache_bytes(context, batch_size)

    @property
    def weight_bytes(self) -> int:
        return self.num_params * self.dtype_bytes

    # ---- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelSpec field(s): {', '.join(unknown)}")
        return cls(**data)

    def with_dtype(self, dtype: str) -> ModelSpec:
        return replace(self, dtype=dtype)
