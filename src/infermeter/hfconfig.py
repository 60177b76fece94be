"""ModelSpec from a Hugging Face `config.json`, without importing transformers.

Each supported `model_type` names its shape keys differently (GPT-2's `n_embd`, Llama's
`hidden_size`, ...); this module maps them onto ModelSpec fields. Optional keys that are
missing (older or hand-written configs; `save_pretrained` drops generic keys equal to their
defaults) take the defaults of the family's transformers config class. The shape keys (hidden
size, layers, heads, vocab, FFN size where the family has no 4h rule) are required: guessing
them would silently describe another model.

The per-family details are kept exactly, so parameter counts match transformers' models:
Qwen2's q/k/v-only biases, GPT-J's MLP-only biases and LM-head bias, GPT-NeoX's two norms per
parallel layer, OPT's two extra position rows and BLOOM's embedding layernorm.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from infermeter.errors import UserError
from infermeter.spec import DTYPE_BYTES, ModelSpec

DEFAULT_DTYPE = "bfloat16"

_DTYPE_ALIASES = {
    "fp32": "float32",
    "float": "float32",
    "fp16": "float16",
    "half": "float16",
    "bf16": "bfloat16",
}


class _Reader:
    """Reads keys from one config, collecting every missing required key before failing."""

    def __init__(self, config: dict[str, Any], where: str, family: str) -> None:
        self.config = config
        self.where = where
        self.family = family
        self.missing: list[str] = []

    def _first(self, names: tuple[str, ...]) -> Any:
        for key in names:
            if self.config.get(key) is not None:
                return self.config[key]
        return None

    def req(self, *names: str) -> Any:
        value = self._first(names)
        if value is None:
            self.missing.append(" or ".join(names))
        return value

    def opt(self, *names: str, default: Any = None) -> Any:
        value = self._first(names)
        return default if value is None else value

    def check(self) -> None:
        if self.missing:
            raise UserError(
                f"{self.where}: {self.family} config lacks required key(s) "
                f"{', '.join(self.missing)}; add them to the config.json"
            )


def _ffn_activation(act: Any) -> str:
    """Ungated FFNs: only relu vs gelu matters to ModelSpec (same FLOPs either way)."""
    return "relu" if isinstance(act, str) and "relu" in act.lower() else "gelu"


def _rope_theta(r: _Reader, *names: str, default: float = 10000.0) -> Any:
    # transformers >= 4.56 may nest it as rope_parameters.rope_theta
    params = r.config.get("rope_parameters")
    if isinstance(params, dict) and params.get("rope_theta") is not None:
        return params["rope_theta"]
    return r.opt(*names, default=default)


def _gpt2(r: _Reader) -> dict[str, Any]:
    act = r.opt("activation_function", default="gelu_new")
    return {
        "hidden_size": r.req("n_embd", "hidden_size"),
        "num_layers": r.req("n_layer", "num_hidden_layers"),
        "num_heads": r.req("n_head", "num_attention_heads"),
        "vocab_size": r.req("vocab_size"),
        "ffn_size": r.opt("n_inner"),  # None: 4h
        "ffn_kind": _ffn_activation(act),
        "position": "learned",
        "norm": "layernorm",
        "norm_eps": r.opt("layer_norm_epsilon", default=1e-5),
        "bias": True,
        "tie_embeddings": r.opt("tie_word_embeddings", default=True),
        "max_context": r.opt("n_positions", "n_ctx", "max_position_embeddings", default=1024),
        "extra": {"hidden_act": act},
    }


def _gptj(r: _Reader) -> dict[str, Any]:
    hidden = r.req("n_embd", "hidden_size")
    heads = r.req("n_head", "num_attention_heads")
    rotary_dim = r.opt("rotary_dim")
    fraction = 1.0
    numbers = all(isinstance(v, int) and v > 0 for v in (rotary_dim, hidden, heads))
    if numbers and hidden >= heads:  # otherwise ModelSpec reports the bad shape
        fraction = rotary_dim / (hidden // heads)
    act = r.opt("activation_function", default="gelu_new")
    return {
        "hidden_size": hidden,
        "num_layers": r.req("n_layer", "num_hidden_layers"),
        "num_heads": heads,
        "vocab_size": r.req("vocab_size"),
        "ffn_size": r.opt("n_inner"),
        "ffn_kind": _ffn_activation(act),
        "position": "rotary",
        "rotary_fraction": fraction,
        "norm": "layernorm",
        "norm_eps": r.opt("layer_norm_epsilon", default=1e-5),
        "parallel_attn_ffn": True,
        "bias": False,  # q/k/v/out have none; the MLP and the LM head do
        "mlp_bias": True,
        "lm_head_bias": True,
        "tie_embeddings": r.opt("tie_word_embeddings", default=False),
        "max_context": r.opt("n_positions", "max_position_embeddings", default=2048),
        "extra": {"hidden_act": act},
    }


def _gpt_neox(r: _Reader) -> dict[str, Any]:
    act = r.opt("hidden_act", default="gelu")
    return {
        "hidden_size": r.req("hidden_size"),
        "num_layers": r.req("num_hidden_layers"),
        "num_heads": r.req("num_attention_heads"),
        "vocab_size": r.req("vocab_size"),
        "ffn_size": r.req("intermediate_size"),
        "ffn_kind": _ffn_activation(act),
        "position": "rotary",
        "rotary_fraction": r.opt("rotary_pct", default=0.25),
        "rope_theta": _rope_theta(r, "rotary_emb_base", "rope_theta"),
        "norm": "layernorm",
        "norm_eps": r.opt("layer_norm_eps", default=1e-5),
        "parallel_attn_ffn": r.opt("use_parallel_residual", default=True),
        "parallel_norms": 2,  # NeoX keeps both layernorms even with the parallel residual
        "bias": r.opt("attention_bias", default=True),
        "tie_embeddings": r.opt("tie_word_embeddings", default=False),
        "max_context": r.opt("max_position_embeddings", default=2048),
        "extra": {"hidden_act": act},
    }


def _bloom(r: _Reader) -> dict[str, Any]:
    return {
        "hidden_size": r.req("hidden_size", "n_embed"),
        "num_layers": r.req("n_layer", "num_hidden_layers"),
        "num_heads": r.req("n_head", "num_attention_heads"),
        "vocab_size": r.req("vocab_size"),
        "ffn_kind": "gelu",
        "position": "alibi",
        "norm": "layernorm",
        "norm_eps": r.opt("layer_norm_epsilon", default=1e-5),
        "bias": True,
        "embedding_norm": True,  # word_embeddings_layernorm
        "tie_embeddings": r.opt("tie_word_embeddings", default=True),
        # ALiBi has no position table; BLOOM was trained on 2048-token sequences
        "max_context": r.opt("seq_length", "max_position_embeddings", default=2048),
    }


def _opt(r: _Reader) -> dict[str, Any]:
    hidden = r.req("hidden_size")
    proj = r.opt("word_embed_proj_dim", default=hidden)
    if hidden is not None and proj != hidden:
        raise UserError(
            f"{r.where}: opt config has word_embed_proj_dim={proj} != hidden_size={hidden} "
            "(OPT-350m-style embedding projections), which ModelSpec cannot describe; "
            "use another OPT size or a catalog model"
        )
    act = r.opt("activation_function", default="relu")
    return {
        "hidden_size": hidden,
        "num_layers": r.req("num_hidden_layers"),
        "num_heads": r.req("num_attention_heads"),
        "vocab_size": r.req("vocab_size"),
        "ffn_size": r.req("ffn_dim"),
        "ffn_kind": _ffn_activation(act),
        "position": "learned",
        "norm": "layernorm",
        "bias": r.opt("enable_bias", default=True),
        "position_offset": 2,  # OPT's learned positions start at row 2
        "tie_embeddings": r.opt("tie_word_embeddings", default=True),
        "max_context": r.opt("max_position_embeddings", default=2048),
        "extra": {"hidden_act": act},
    }


def _llama_like(max_context: int) -> Callable[[_Reader], dict[str, Any]]:
    """Llama, Mistral and Qwen2 share one layout: RMSNorm, gated SiLU FFN, RoPE, GQA."""

    def parse(r: _Reader) -> dict[str, Any]:
        heads = r.req("num_attention_heads")
        extra: dict[str, Any] = {"hidden_act": r.opt("hidden_act", default="silu")}
        attention_bias = r.family == "qwen2" or bool(r.opt("attention_bias", default=False))
        for key in ("sliding_window", "rope_scaling"):
            if r.config.get(key) is not None:
                extra[key] = r.config[key]
        return {
            "hidden_size": r.req("hidden_size"),
            "num_layers": r.req("num_hidden_layers"),
            "num_heads": heads,
            "num_kv_heads": r.opt("num_key_value_heads", default=heads),
            "vocab_size": r.req("vocab_size"),
            "ffn_size": r.req("intermediate_size"),
            "ffn_kind": "swiglu",
            "head_dim": r.opt("head_dim"),
            "position": "rotary",
            "rope_theta": _rope_theta(r, "rope_theta"),
            "norm": "rmsnorm",
            "norm_eps": r.opt("rms_norm_eps", default=1e-6),
            "bias": False,
            # Qwen2 biases q/k/v only; Llama's attention_bias covers q/k/v and o
            "qkv_bias": attention_bias,
            "out_bias": attention_bias and r.family != "qwen2",
            "mlp_bias": bool(r.opt("mlp_bias", default=False)),
            "tie_embeddings": r.opt("tie_word_embeddings", default=False),
            "max_context": r.opt("max_position_embeddings", default=max_context),
            "extra": extra,
        }

    return parse


# max_context defaults are those of the transformers config classes
_FAMILIES: dict[str, Callable[[_Reader], dict[str, Any]]] = {
    "bloom": _bloom,
    "gpt2": _gpt2,
    "gpt_neox": _gpt_neox,
    "gptj": _gptj,
    "llama": _llama_like(2048),
    "mistral": _llama_like(4096 * 32),
    "opt": _opt,
    "qwen2": _llama_like(32768),
}

SUPPORTED_FAMILIES: tuple[str, ...] = tuple(sorted(_FAMILIES))


def _dtype(config: dict[str, Any], where: str) -> str:
    raw = config.get("torch_dtype", config.get("dtype"))
    if raw is None or raw == "auto":
        return DEFAULT_DTYPE
    text = str(raw).lower().removeprefix("torch.")
    text = _DTYPE_ALIASES.get(text, text)
    if text.startswith("float8"):
        text = "float8"
    if text not in DTYPE_BYTES:
        raise UserError(
            f"{where}: unsupported dtype {raw!r}; set torch_dtype to one of "
            f"{', '.join(sorted(DTYPE_BYTES))}"
        )
    return text


def spec_from_hf_config(
    config: dict[str, Any], name: str, *, source: str | None = None
) -> ModelSpec:
    """Build a ModelSpec from a parsed Hugging Face config (a dict, as in config.json).

    `source` (default: `name`) says where the config came from, e.g. its path; error messages
    and the spec's `source` field refer to the config by it.
    """
    where = source or name
    if not isinstance(config, dict):
        raise UserError(
            f"{where}: config is a JSON {type(config).__name__}, not an object; "
            "pass a Hugging Face config.json"
        )
    family = config.get("model_type")
    if not family:
        raise UserError(
            f"{where}: config has no model_type; add it (one of "
            f"{', '.join(SUPPORTED_FAMILIES)}) or pick a catalog model"
        )
    if family not in _FAMILIES:
        raise UserError(
            f"{where}: unsupported model_type {family!r}; supported: "
            f"{', '.join(SUPPORTED_FAMILIES)} (or pick a catalog model, see `infermeter models`)"
        )
    reader = _Reader(config, where, family)
    fields = _FAMILIES[family](reader)
    reader.check()
    fields["extra"] = {"model_type": family, **fields.get("extra", {})}
    if isinstance(config.get("quantization_config"), dict):
        fields["extra"]["quantization"] = config["quantization_config"].get("quant_method")
    try:
        # JSON writes 10000 for 10000.0; ModelSpec's float fields should hold floats
        for key in ("rope_theta", "norm_eps", "rotary_fraction"):
            if key in fields:
                fields[key] = float(fields[key])
        return ModelSpec(
            name=name,
            dtype=_dtype(config, where),
            family=family,
            source=f"Hugging Face config.json: {where}",
            **fields,
        )
    except (TypeError, ValueError) as error:
        # ModelSpec validates shapes (divisibility, positive ints); relay as a user mistake
        message = str(error).removeprefix(f"{name}: ")
        raise UserError(f"{where}: invalid config: {message}; fix the config.json") from error


def _name_for(config: dict[str, Any], path: Path) -> str:
    hub_id = config.get("_name_or_path")
    # a hub id ("meta-llama/Llama-2-7b-hf") names the model better than a file name;
    # a local path recorded by save_pretrained does not
    if isinstance(hub_id, str) and hub_id and not hub_id.startswith(("/", ".", "~")):
        return hub_id
    return path.parent.name if path.name == "config.json" else path.stem


def load_hf_config(path: str | os.PathLike[str]) -> ModelSpec:
    """ModelSpec from a config.json file, or from a directory holding one."""
    file = Path(path).expanduser()
    if file.is_dir():
        if not (file / "config.json").is_file():
            raise UserError(
                f"{file}: directory has no config.json; pass a Hugging Face model directory "
                "or the path of its config.json"
            )
        file = file / "config.json"
    if not file.exists():
        raise UserError(
            f"{file}: no such file; pass the path of a Hugging Face config.json "
            "(or a catalog name, see `infermeter models`)"
        )
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise UserError(
            f"{file}: cannot read the file ({reason}); check the path and its permissions"
        ) from error
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(
            f"{file}: not valid JSON ({error.msg} at line {error.lineno}, column "
            f"{error.colno}); pass a Hugging Face config.json"
        ) from error
    if not isinstance(config, dict):
        raise UserError(
            f"{file}: JSON {type(config).__name__}, not an object; pass a Hugging Face config.json"
        )
    return spec_from_hf_config(config, _name_for(config, file), source=str(file))
