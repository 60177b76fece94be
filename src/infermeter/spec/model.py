"""ModelSpec: a transformer architecture without weights, and what follows from it.

Parameter counts, FLOPs and bytes are derived from the shape alone. For a GPT-3-style spec
(multi-head attention, a 4h GELU FFN) the layer FLOPs reduce exactly to the idealized-runtime
paper's 24·b·s·h²·l·(1 + s/6h) for a prefill and 24·b·h²·l + 4·b·i·h·l for a decode step
(Appendix A); the LM head is counted separately because the paper leaves it out.

The architectures of 2024-2026 add, each as an optional part that defaults to "absent":

- mixture of experts (`moe`, a MoE): routed experts with top-k routing, shared experts, dense
  layers before the first MoE layer (Mixtral, Qwen2/3-MoE, DeepSeek-V2/V3, gpt-oss). Total
  parameters count every expert; active parameters count the k experts a token uses. A decode
  step of b sequences reads the experts the batch touches: with balanced routing, in
  expectation E·(1 − (1 − k/E)^b) of the E experts of each MoE layer.
- multi-head latent attention (`mla`, an MLA; DeepSeek-V2/V3): keys and values are cached as
  one compressed latent (kv_lora_rank) plus a shared rotary key (qk_rope_dim) per token, and a
  decode step attends in the latent space (the "absorbed" form serving engines use).
- sliding-window layers (`sliding_window`, `layer_types`; Mistral, Gemma-2/3, gpt-oss, Phi-3):
  a windowed layer attends to, and caches, only the last W positions.
  With `chunked_attention` (Llama-4) the windowed layers attend within aligned chunks of W
  positions instead (key j is seen by query i when j <= i and j // W == i // W); FLOPs and
  bytes count them as windows of W, the most keys such a layer holds and reads.
- attention sinks, logit soft-capping, qk-norm, post- and sandwich norms, embedding multipliers
  (gpt-oss, Gemma-2/3, Qwen3, OLMo-2); layers without rotary positions (`nope_layers`) and
  their query temperature (`attn_temperature`), Llama-4's.

Conventions: FLOPs are 2 per multiply-add over matmuls (the paper's counting, attention
over the full s×s square); bytes assume each weight and each cached K/V entry is read once per
step at the spec's dtype.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any, Literal

from infermeter.units import one_of

FfnKind = Literal["gelu", "relu", "swiglu", "geglu", "gelu_exact", "clamped_swiglu"]
PositionKind = Literal["learned", "rotary", "alibi"]
NormKind = Literal["layernorm", "rmsnorm"]
NormPlacement = Literal["pre", "post", "sandwich"]
QkNorm = Literal["none", "head", "full", "l2"]
LayerType = Literal["full", "sliding"]

# gelu/relu/gelu_exact: two matrices; the gated kinds (SiLU, tanh-GELU, gpt-oss's clamped
# SiLU) three. "gelu" is GPT-2's tanh approximation, "gelu_exact" the erf form (Falcon).
GATED_FFN_KINDS: frozenset[str] = frozenset({"swiglu", "geglu", "clamped_swiglu"})
FFN_KINDS: frozenset[str] = frozenset({"gelu", "relu", "gelu_exact"}) | GATED_FFN_KINDS

DTYPE_BYTES: dict[str, int] = {
    "float32": 4,
    "float16": 2,
    "bfloat16": 2,
    "float8": 1,
}


def _positive_int(owner: str, name: str, value: Any) -> None:
    if type(value) is not int or value <= 0:
        raise ValueError(f"{owner}: {name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class MoE:
    """The mixture-of-experts FFN of a spec's MoE layers.

    A layer i is a MoE layer when i >= first_dense_layers, (i + 1) % layer_step == 0 and i is
    not in dense_layers (DeepSeek's first_k_dense_replace, Qwen2-MoE's decoder_sparse_step and
    mlp_only_layers, Llama-4's interleave step); the other layers keep the spec's dense FFN.
    Experts use the spec's ffn_kind. Routing: scores are softmax (or sigmoid) of the router
    logits, the top-k are taken (within the top `top_groups` of `groups` expert groups when
    groups > 1), renormalised to sum 1 when `normalize`, and scaled by `scale`.
    """

    num_experts: int  # routed experts E per MoE layer
    experts_per_token: int  # k
    expert_ffn_size: int  # FFN width of one routed expert
    shared_ffn_size: int = 0  # total FFN width of the always-on shared expert(s); 0: none
    num_shared_experts: int = 0  # how many shared experts make up shared_ffn_size (informative)
    first_dense_layers: int = 0
    layer_step: int = 1
    dense_layers: tuple[int, ...] = ()
    scoring: Literal["softmax", "sigmoid"] = "softmax"
    normalize: bool = True
    scale: float = 1.0  # routed_scaling_factor
    groups: int = 1  # DeepSeek's group-limited routing: n_group ...
    top_groups: int = 1  # ... and topk_group
    group_score: Literal["max", "top2"] = "max"  # V2: best expert of a group; V3: sum of best 2
    router_bias: bool = False  # gpt-oss: the router linear has a bias
    expert_bias: bool = False  # gpt-oss: every expert matrix has a bias
    shared_gate: bool = False  # Qwen2-MoE: a sigmoid gate [h -> 1] on the shared expert
    score_correction: bool = False  # DeepSeek-V3: a selection-only bias (a buffer, not a weight)
    input_scaled: bool = False  # Llama-4: the routing weight scales the expert's input (top-1)

    def __post_init__(self) -> None:
        for name in ("num_experts", "experts_per_token", "expert_ffn_size", "layer_step"):
            _positive_int("moe", name, getattr(self, name))
        if self.experts_per_token > self.num_experts:
            raise ValueError("moe: experts_per_token must not exceed num_experts")
        if self.shared_ffn_size < 0 or self.first_dense_layers < 0 or self.num_shared_experts < 0:
            raise ValueError("moe: shared_ffn_size, num_shared_experts, first_dense_layers >= 0")
        if self.groups < 1 or self.num_experts % self.groups or self.top_groups < 1:
            raise ValueError("moe: groups must divide num_experts and top_groups be >= 1")
        if self.top_groups > self.groups:
            raise ValueError("moe: top_groups must not exceed groups")
        if self.scoring not in ("softmax", "sigmoid") or self.group_score not in ("max", "top2"):
            raise ValueError("moe: scoring is softmax|sigmoid and group_score max|top2")
        object.__setattr__(self, "dense_layers", tuple(int(i) for i in self.dense_layers))
        if self.input_scaled and self.experts_per_token != 1:
            raise ValueError("moe: input_scaled routing (Llama-4) needs experts_per_token 1")

    def expected_distinct(self, batch: int) -> float:
        """Expected experts a batch of `batch` tokens touches in one MoE layer.

        Each token picks k of E experts; with balanced routing an expert is missed by one
        token with probability 1 − k/E, so it is touched with probability 1 − (1 − k/E)^b.
        Tokens are treated as independent (a token's own k picks are distinct, which this
        ignores: exact at b = 1, where it gives k, and in the limit, where it gives E).
        """
        if batch < 0:
            raise ValueError("batch must be >= 0")
        e, k = self.num_experts, self.experts_per_token
        return e * (1.0 - (1.0 - k / e) ** batch)


@dataclass(frozen=True)
class MLA:
    """Multi-head latent attention (DeepSeek-V2/V3).

    Queries: h -> n·(nope + rope), directly (q_lora_rank None) or through a q_lora_rank latent
    with an RMSNorm. Keys/values: h -> kv_lora_rank latent (RMSNorm) + one rope-dim key shared
    by all heads; the latent expands to n·(nope + v_head_dim). The cache holds the latent and
    the rope key: kv_lora_rank + qk_rope_dim values per token and layer.
    """

    kv_lora_rank: int
    qk_nope_dim: int
    qk_rope_dim: int
    v_head_dim: int
    q_lora_rank: int | None = None

    def __post_init__(self) -> None:
        for name in ("kv_lora_rank", "qk_nope_dim", "qk_rope_dim", "v_head_dim"):
            _positive_int("mla", name, getattr(self, name))
        if self.q_lora_rank is not None:
            _positive_int("mla", "q_lora_rank", self.q_lora_rank)
        if self.qk_rope_dim % 2:
            raise ValueError("mla: qk_rope_dim must be even")

    @property
    def qk_head_dim(self) -> int:
        """Query/key width per head: the no-position part plus the rotary part (DeepSeek-V2
        §2.1.3)."""
        return self.qk_nope_dim + self.qk_rope_dim

    @property
    def cache_dim(self) -> int:
        """Values cached per token and layer: the latent and the shared rotary key."""
        return self.kv_lora_rank + self.qk_rope_dim


# Fields added after the first stores were written: left out of to_dict() while they hold
# their defaults, so the dict (and every profile key hashed from it) of an older spec is
# unchanged.
_LATER_FIELDS: dict[str, Any] = {
    "attn_scale": None,
    "sliding_window": None,
    "layer_types": (),
    "local_rope_theta": None,
    "rope_scaling": None,
    "attention_sinks": False,
    "attn_softcap": None,
    "final_softcap": None,
    "qk_norm": "none",
    "norm_placement": "pre",
    "embedding_multiplier": 1.0,
    "mla": None,
    "moe": None,
    "chunked_attention": False,
    "nope_layers": (),
    "attn_temperature": None,
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
    ffn_size: int | None = None  # None: 4 * hidden_size; the dense layers' FFN width
    ffn_kind: FfnKind = "gelu"  # see GATED_FFN_KINDS
    head_dim: int | None = None  # None: hidden_size // num_heads
    position: PositionKind = "learned"
    rotary_fraction: float = 1.0  # share of head_dim that is rotated (GPT-J 0.25, NeoX 0.25)
    rope_theta: float = 10000.0
    norm: NormKind = "layernorm"
    norm_eps: float = 1e-5
    parallel_attn_ffn: bool = False  # GPT-J / NeoX / Falcon: attention and FFN read one input
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
    # ---- attention variants and newer layouts (see the module docstring) ----------------
    attn_scale: float | None = None  # softmax scale; None: 1/sqrt(query-key head dim)
    sliding_window: int | None = None  # W: a windowed layer sees positions (i − W, i]
    layer_types: tuple[str, ...] = ()  # "full"/"sliding" per layer; () with a window: all sliding
    local_rope_theta: float | None = None  # Gemma-3: the sliding layers' rotary base
    rope_scaling: dict[str, Any] | None = field(default=None, hash=False)  # HF rope_parameters
    attention_sinks: bool = False  # gpt-oss: a learned per-head logit in every softmax
    attn_softcap: float | None = None  # Gemma-2: scores become c·tanh(scores / c)
    final_softcap: float | None = None  # Gemma-2: logits become c·tanh(logits / c)
    # RMSNorm of q and k: per head (Qwen3, Gemma-3), whole (OLMo-2), or per head without
    # weights on the rotary layers ("l2": Llama-4, after the rotation, which keeps the norm)
    qk_norm: QkNorm = "none"
    norm_placement: NormPlacement = "pre"  # post: OLMo-2; sandwich (pre and post): Gemma-2/3
    embedding_multiplier: float = 1.0  # Gemma: embeddings scaled by sqrt(hidden_size)
    mla: MLA | None = None
    moe: MoE | None = None
    chunked_attention: bool = False  # Llama-4: windowed layers attend within aligned chunks
    nope_layers: tuple[int, ...] = ()  # layers without rotary positions (Llama-4)
    # Llama-4's NoPE layers scale queries at position p by 1 + a·log1p(floor((p + 1) / f)):
    # (f, a) = (floor_scale, attn_scale); None: no scaling
    attn_temperature: tuple[float, float] | None = None

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
        if self.head_dim is None and self.hidden_size % self.num_heads and self.mla is None:
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
                f"{self.name}: unknown dtype {self.dtype!r}; use {one_of(sorted(DTYPE_BYTES))}"
            )
        if not 0.0 < self.rotary_fraction <= 1.0:
            raise ValueError(f"{self.name}: rotary_fraction must be in (0, 1]")
        self._check_variants()

    def _check_variants(self) -> None:
        if self.ffn_kind not in FFN_KINDS:
            raise ValueError(f"{self.name}: unknown ffn_kind {self.ffn_kind!r}")
        if self.sliding_window is not None:
            _positive_int(self.name, "sliding_window", self.sliding_window)
        types = tuple(self.layer_types)
        object.__setattr__(self, "layer_types", types)
        if types and (len(types) != self.num_layers or set(types) - {"full", "sliding"}):
            raise ValueError(
                f"{self.name}: layer_types needs one 'full' or 'sliding' per layer "
                f"({self.num_layers})"
            )
        if "sliding" in types and self.sliding_window is None:
            raise ValueError(f"{self.name}: sliding layers need a sliding_window")
        for name in ("attn_softcap", "final_softcap", "attn_scale"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ValueError(f"{self.name}: {name} must be positive or None")
        if self.qk_norm not in ("none", "head", "full", "l2"):
            raise ValueError(f"{self.name}: qk_norm must be none, head, full or l2")
        if self.chunked_attention and self.sliding_window is None:
            raise ValueError(f"{self.name}: chunked_attention needs the chunk as sliding_window")
        nope = tuple(int(i) for i in self.nope_layers)
        object.__setattr__(self, "nope_layers", nope)
        if any(not 0 <= i < self.num_layers for i in nope):
            raise ValueError(f"{self.name}: nope_layers must be layer indices < {self.num_layers}")
        if nope and self.position != "rotary":
            raise ValueError(f"{self.name}: nope_layers need rotary positions elsewhere")
        if self.attn_temperature is not None:
            temp = tuple(float(x) for x in self.attn_temperature)
            object.__setattr__(self, "attn_temperature", temp)
            if len(temp) != 2 or not (temp[0] > 0 and math.isfinite(temp[1])):
                raise ValueError(
                    f"{self.name}: attn_temperature is (floor_scale > 0, attn_scale), "
                    f"got {self.attn_temperature!r}"
                )
        if self.norm_placement not in ("pre", "post", "sandwich"):
            raise ValueError(f"{self.name}: norm_placement must be pre, post or sandwich")
        if self.norm_placement != "pre" and self.parallel_attn_ffn:
            raise ValueError(f"{self.name}: post/sandwich norms need sequential blocks")
        if self.mla is not None and (self.position != "rotary" or self.qk_norm != "none"):
            raise ValueError(f"{self.name}: MLA needs rotary positions and no qk_norm")
        if self.moe is not None and self.parallel_attn_ffn:
            raise ValueError(f"{self.name}: MoE layers need sequential blocks")

    # ---- shape -------------------------------------------------------------------------
    @property
    def kv_heads(self) -> int:
        """Key/value heads: num_kv_heads (GQA, MQA), else one per query head (MHA)."""
        return self.num_kv_heads if self.num_kv_heads is not None else self.num_heads

    @property
    def dim_head(self) -> int:
        """Width of one attention head: head_dim where set, else hidden_size / num_heads."""
        return self.head_dim if self.head_dim is not None else self.hidden_size // self.num_heads

    @property
    def ffn_dim(self) -> int:
        """FFN inner width of a dense layer: ffn_size where set, else 4 x hidden_size."""
        return self.ffn_size if self.ffn_size is not None else 4 * self.hidden_size

    @property
    def q_dim(self) -> int:
        """Width of all query heads together (MLA: heads x its query/key head width)."""
        if self.mla is not None:
            return self.num_heads * self.mla.qk_head_dim
        return self.num_heads * self.dim_head

    @property
    def kv_dim(self) -> int:
        """Width of all key (or value) heads together: kv_heads x dim_head."""
        return self.kv_heads * self.dim_head

    @property
    def gated(self) -> bool:
        """Whether the FFN is gated (three matrices: gate, up, down)."""
        return self.ffn_kind in GATED_FFN_KINDS

    @property
    def has_qkv_bias(self) -> bool:
        """Whether the q/k/v projections carry biases (qkv_bias, else `bias`)."""
        return self.bias if self.qkv_bias is None else self.qkv_bias

    @property
    def has_out_bias(self) -> bool:
        """Whether the attention output projection carries a bias (out_bias, else `bias`)."""
        return self.bias if self.out_bias is None else self.out_bias

    @property
    def has_mlp_bias(self) -> bool:
        """Whether the FFN projections carry biases (mlp_bias, else `bias`)."""
        return self.bias if self.mlp_bias is None else self.mlp_bias

    @property
    def norm_params(self) -> int:
        """Weights of one norm: scale (and shift for LayerNorm)."""
        return (2 if self.norm == "layernorm" else 1) * self.hidden_size

    @property
    def dtype_bytes(self) -> int:
        """Bytes per weight at the spec's dtype (DTYPE_BYTES); KeyError for an unknown dtype."""
        return DTYPE_BYTES[self.dtype]

    # ---- per layer ---------------------------------------------------------------------
    def layer_window(self, layer: int) -> int | None:
        """Positions layer `layer` attends to (None: all), from sliding_window/layer_types."""
        if self.sliding_window is None:
            return None
        if not self.layer_types or self.layer_types[layer] == "sliding":
            return self.sliding_window
        return None

    def layer_rotary(self, layer: int) -> bool:
        """Whether layer `layer` rotates its queries and keys (rotary specs, but nope_layers)."""
        return self.position == "rotary" and layer not in self.nope_layers

    def is_moe_layer(self, layer: int) -> bool:
        """Whether layer `layer` (0-based) is a mixture-of-experts layer: after the first dense
        layers, not listed dense, every layer_step-th."""
        moe = self.moe
        if moe is None or layer < moe.first_dense_layers or layer in moe.dense_layers:
            return False
        return (layer + 1) % moe.layer_step == 0

    @property
    def num_moe_layers(self) -> int:
        """How many of the layers are mixture-of-experts layers (0 for a dense model)."""
        return sum(self.is_moe_layer(i) for i in range(self.num_layers))

    def _counts(self, items: Any) -> dict[Any, int]:
        """How many layers have each value of `items(layer)`."""
        out: dict[Any, int] = {}
        for i in range(self.num_layers):
            key = items(i)
            out[key] = out.get(key, 0) + 1
        return out

    # ---- parameters --------------------------------------------------------------------
    @property
    def attention_matmul_params(self) -> int:
        """Weights of the attention projections of one layer (Q, K, V, output; MLA's five)."""
        h, mla = self.hidden_size, self.mla
        if mla is not None:
            n = self.num_heads
            q = h * self.q_dim if mla.q_lora_rank is None else mla.q_lora_rank * (h + self.q_dim)
            kv = h * mla.cache_dim + mla.kv_lora_rank * n * (mla.qk_nope_dim + mla.v_head_dim)
            return q + kv + n * mla.v_head_dim * h
        return h * (self.q_dim + 2 * self.kv_dim) + self.q_dim * h

    @property
    def ffn_matmul_params(self) -> int:
        """Weights of the dense FFN (the only FFN of a dense spec)."""
        return (3 if self.gated else 2) * self.hidden_size * self.ffn_dim

    @property
    def expert_params(self) -> int:
        """Weights (and biases) of one routed expert; 0 without MoE."""
        moe = self.moe
        if moe is None:
            return 0
        f, h = moe.expert_ffn_size, self.hidden_size
        bias = ((2 if self.gated else 1) * f + h) if moe.expert_bias else 0
        return (3 if self.gated else 2) * h * f + bias

    def _moe_fixed_params(self) -> tuple[int, int]:
        """(matmul, small) weights of a MoE layer outside the routed experts."""
        moe = self.moe
        assert moe is not None
        h = self.hidden_size
        matmul = moe.num_experts * h + (3 if self.gated else 2) * h * moe.shared_ffn_size
        matmul += h if moe.shared_gate else 0
        return matmul, moe.num_experts if moe.router_bias else 0

    def _ffn_params(self, layer: int, experts: float) -> float:
        """FFN weights of one layer with `experts` routed experts counted (total or active)."""
        if not self.is_moe_layer(layer):
            return self.ffn_matmul_params + self._dense_ffn_bias
        matmul, small = self._moe_fixed_params()
        return matmul + small + experts * self.expert_params

    @property
    def _dense_ffn_bias(self) -> int:
        if not self.has_mlp_bias:
            return 0
        return (2 if self.gated else 1) * self.ffn_dim + self.hidden_size

    @property
    def layer_matmul_params(self) -> int:
        """Attention and dense-FFN matmul weights of one dense layer (the paper's 12h²)."""
        return self.attention_matmul_params + self.ffn_matmul_params

    @property
    def layer_small_params(self) -> int:
        """Norms and attention biases of one layer, sinks and qk-norm weights included (small,
        but real bytes to read). Dense-FFN biases are here too; MoE FFN biases are not."""
        h = self.hidden_size
        if self.parallel_attn_ffn:
            count = self.parallel_norms
        else:
            count = {"pre": 2, "post": 2, "sandwich": 4}[self.norm_placement]
        small = self.norm_params * count
        if self.has_qkv_bias and self.mla is None:
            small += self.q_dim + 2 * self.kv_dim
        if self.has_out_bias and self.mla is None:
            small += h
        if self.mla is not None:
            small += self.mla.kv_lora_rank + (self.mla.q_lora_rank or 0)  # the latent norms
        if self.qk_norm == "head":
            small += 2 * self.dim_head
        elif self.qk_norm == "full":
            small += self.q_dim + self.kv_dim
        if self.attention_sinks:
            small += self.num_heads
        if self.moe is None:
            small += self._dense_ffn_bias
        return small

    def _layer_params(self, layer: int, experts: float) -> float:
        small = self.layer_small_params - (self._dense_ffn_bias if self.moe is None else 0)
        return self.attention_matmul_params + small + self._ffn_params(layer, experts)

    @property
    def embedding_params(self) -> int:
        """Token embedding weights, plus learned positions (with OPT's offset rows) and BLOOM's
        embedding norm where the spec has them."""
        positions = self.max_context + self.position_offset if self.position == "learned" else 0
        norm = self.norm_params if self.embedding_norm else 0
        return (self.vocab_size + positions) * self.hidden_size + norm

    @property
    def lm_head_params(self) -> int:
        """LM head weights (none when tied to the embedding) plus its bias where it has one."""
        weights = 0 if self.tie_embeddings else self.vocab_size * self.hidden_size
        return weights + (self.vocab_size if self.lm_head_bias else 0)

    @property
    def final_norm_params(self) -> int:
        """Weights of the norm after the last layer."""
        return self.norm_params

    @property
    def non_embedding_params(self) -> int:
        """Parameters of all transformer layers, every expert included (paper 1 §3.2's N
        without the embedding)."""
        if self.moe is None:  # every layer alike: the closed form, exact in integers
            return self.num_layers * (self.layer_matmul_params + self.layer_small_params)
        e = self.moe.num_experts
        return sum(int(self._layer_params(i, e)) for i in range(self.num_layers))

    @property
    def num_params(self) -> int:
        """Total parameters, every expert included (what transformers' model holds)."""
        return (
            self.non_embedding_params
            + self.embedding_params
            + self.lm_head_params
            + self.final_norm_params
        )

    def active_params(self, include_embedding: bool = True) -> int:
        """Parameters one token uses: every layer with its k routed experts (all of a dense
        spec), the LM head and final norm, and the input embedding unless
        `include_embedding=False` (a lookup, not a matmul; publishers differ on counting it).
        Equals num_params for a dense spec."""
        if self.moe is None:
            body = self.non_embedding_params
        else:
            k = self.moe.experts_per_token
            body = sum(int(self._layer_params(i, k)) for i in range(self.num_layers))
        head = self.lm_head_params
        if not include_embedding and self.tie_embeddings:
            head += self.vocab_size * self.hidden_size  # the tied matrix still serves as the head
        embedding = self.embedding_params if include_embedding else 0
        return body + embedding + head + self.final_norm_params

    # ---- FLOPs (2 per multiply-add; matmuls only, as in the paper) -----------------------
    def _active_matmul(self, layer: int) -> int:
        """Matmul weights a token multiplies in one layer (its k experts in a MoE layer)."""
        if not self.is_moe_layer(layer):
            return self.layer_matmul_params
        assert self.moe is not None
        matmul, _ = self._moe_fixed_params()
        f = self.moe.expert_ffn_size
        expert = (3 if self.gated else 2) * self.hidden_size * f
        return self.attention_matmul_params + matmul + self.moe.experts_per_token * expert

    def _attention_dims(self, decode: bool) -> tuple[int, int]:
        """(query-key, value) dims per head of the score and value products. MLA decodes in
        the latent space (the absorbed form): kv_lora + rope against the cache, kv_lora out."""
        mla = self.mla
        if mla is None:
            return self.dim_head, self.dim_head
        if decode:
            return mla.cache_dim, mla.kv_lora_rank
        return mla.qk_head_dim, mla.v_head_dim

    def _attention_flops(self, queries: int, keys: int, decode: bool) -> int:
        """Score and value products of `queries` tokens against `keys` keys, one layer."""
        qk, v = self._attention_dims(decode)
        return 2 * queries * keys * self.num_heads * (qk + v)

    def _uniform(self) -> bool:
        return self.moe is None and self.sliding_window is None

    def prefill_flops(self, prompt_tokens: int, batch_size: int = 1, lm_head: bool = False) -> int:
        """FLOPs of a forward pass over `prompt_tokens` tokens, per the paper's counting.

        Attention scores and attention-over-values are counted over the full s×s square, as
        in Appendix A.1 (no causal halving), so a GPT-3 spec gives 24bsh²l(1 + s/6h); a
        windowed layer counts min(s, W) keys per query. MoE layers count the k experts each
        token uses. `lm_head=True` adds the vocabulary projection for the last position of
        each sequence.
        """
        b, s = batch_size, prompt_tokens
        if self._uniform():
            per_layer = 2 * b * s * self.layer_matmul_params + self._attention_flops(
                b * s, s, False
            )
            total = self.num_layers * per_layer
        else:
            total = sum(
                2 * b * s * self._active_matmul(i)
                + self._attention_flops(b * s, _keys(s, self.layer_window(i)), False)
                for i in range(self.num_layers)
            )
        if lm_head:
            total += 2 * b * self.hidden_size * self.vocab_size
        return total

    def decode_flops(self, context: int, batch_size: int = 1, lm_head: bool = False) -> int:
        """FLOPs to generate one token per sequence when `context` tokens are already cached.

        Appendix A.2: 24bh²l + 4bihl for a GPT-3 spec, i = tokens so far; a windowed layer
        attends to min(i, W) of them, an MLA layer in its latent space.
        """
        b, i = batch_size, context
        if self._uniform():
            per_layer = 2 * b * self.layer_matmul_params + self._attention_flops(b, i, True)
            total = self.num_layers * per_layer
        else:
            total = sum(
                2 * b * self._active_matmul(n)
                + self._attention_flops(b, _keys(i, self.layer_window(n)), True)
                for n in range(self.num_layers)
            )
        if lm_head:
            total += 2 * b * self.hidden_size * self.vocab_size
        return total

    # ---- bytes ---------------------------------------------------------------------------
    @property
    def kv_bytes_per_token(self) -> int:
        """Cache bytes one token adds to one layer: K and V, or MLA's latent and rope key."""
        per = self.mla.cache_dim if self.mla is not None else 2 * self.kv_dim
        return per * self.dtype_bytes

    def kv_cache_bytes(self, tokens: int, batch_size: int = 1) -> int:
        """Bytes of keys and values held for `tokens` positions of `batch_size` sequences
        (a windowed layer holds at most W positions)."""
        if self.sliding_window is None:
            return self.num_layers * batch_size * tokens * self.kv_bytes_per_token
        windows = self._counts(self.layer_window)
        held = sum(n * _keys(tokens, w) for w, n in windows.items())
        return batch_size * held * self.kv_bytes_per_token

    def expected_distinct_experts(self, batch_size: int) -> float:
        """Expected routed experts a decode step of `batch_size` sequences reads per MoE layer
        (balanced routing; see MoE.expected_distinct). 0 without MoE."""
        return 0.0 if self.moe is None else self.moe.expected_distinct(batch_size)

    def decode_weight_bytes_at(self, batch_size: int) -> float:
        """Weights a decode step of `batch_size` sequences reads: every layer (in a MoE layer
        the experts the batch touches, in expectation), the final norm and the LM head.

        The input embedding is a gather of b rows, not a full read, so it is left out; with
        tied embeddings the LM head reads that same matrix once.
        """
        head = self.vocab_size * self.hidden_size + (self.vocab_size if self.lm_head_bias else 0)
        if self.moe is None:
            params: float = self.non_embedding_params
        else:
            touched = self.moe.expected_distinct(batch_size)
            params = sum(self._layer_params(i, touched) for i in range(self.num_layers))
        return (params + self.final_norm_params + head) * self.dtype_bytes

    @property
    def decode_weight_bytes(self) -> int:
        """Weights a decode step of one sequence reads (see decode_weight_bytes_at)."""
        return round(self.decode_weight_bytes_at(1))

    def decode_bytes(self, context: int, batch_size: int = 1) -> int:
        """Minimum bytes moved from memory by one decode step: the weights it reads (for MoE,
        those of the experts `batch_size` sequences touch) + the KV cache read."""
        weights = round(self.decode_weight_bytes_at(batch_size))
        return weights + self.kv_cache_bytes(context, batch_size)

    @property
    def weight_bytes(self) -> int:
        """Bytes of all weights at the spec's dtype: num_params x dtype_bytes."""
        return self.num_params * self.dtype_bytes

    # ---- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields; fields added later are left out at their defaults, so an older
        spec's dict (and every profile key hashed from it) is unchanged."""
        data = asdict(self)
        for key, default in _LATER_FIELDS.items():
            if data[key] == default or (key == "layer_types" and not data[key]):
                del data[key]
        for key in ("layer_types", "nope_layers", "attn_temperature"):
            if key in data:
                data[key] = list(data[key])
        if data.get("moe") is not None:
            data["moe"]["dense_layers"] = list(data["moe"]["dense_layers"])
            if not data["moe"]["input_scaled"]:  # added later: kept out at its default
                del data["moe"]["input_scaled"]
        return data

    def to_json(self) -> str:
        """to_dict as JSON with sorted keys: the canonical text a profile key is hashed from."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        """Inverse of to_dict (nested moe and mla dicts included). Raises ValueError for an
        unknown field, and what the spec's checks raise for a bad value."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown ModelSpec field(s): {', '.join(unknown)}")
        data = dict(data)
        if isinstance(data.get("moe"), dict):
            data["moe"] = MoE(**data["moe"])
        if isinstance(data.get("mla"), dict):
            data["mla"] = MLA(**data["mla"])
        for key in ("layer_types", "nope_layers", "attn_temperature"):
            if data.get(key) is not None:
                data[key] = tuple(data[key])
        return cls(**data)

    def with_dtype(self, dtype: str) -> ModelSpec:
        """The same spec at another dtype (weights' bytes change, nothing else); UserError
        for a dtype without a size in DTYPE_BYTES."""
        from infermeter.errors import UserError

        if dtype not in DTYPE_BYTES:
            raise UserError(
                f"unknown dtype {dtype!r} for {self.name}; use {one_of(sorted(DTYPE_BYTES))}"
            )
        return replace(self, dtype=dtype)


def _keys(tokens: int, window: int | None) -> int:
    """Keys a layer with `window` attends to (or holds) after `tokens` positions."""
    return tokens if window is None else min(tokens, window)
