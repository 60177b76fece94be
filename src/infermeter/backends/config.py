"""Backend settings as dataclasses: one per backend, each field with its help and its unit.

`build_backend(config)` constructs the backend a config describes; `config_for(name, **options)`
builds one from keyword options (what `get_backend` and older callers pass). Nothing here imports
torch or an HTTP client: a backend module is imported only when its backend is built.
"""

from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from infermeter.errors import UserError
from infermeter.units import one_of

# The dtypes the local backends (engine, hf) run; the catalogs price more (float8).
RUNNABLE_DTYPES = ("bfloat16", "float16", "float32")


def check_runnable(backend: str, dtype: str | None, model: str) -> None:
    """Refuse, in the CLI's words, a dtype the local `backend` cannot run: `dtype` is --dtype
    or (None given) `model`'s own. Raises UserError naming the dtypes it runs."""
    from infermeter.spec.model import DTYPE_BYTES

    if dtype is not None and dtype not in RUNNABLE_DTYPES:
        priced = f" ({dtype} is priced from a spec, not profiled)" if dtype in DTYPE_BYTES else ""
        raise UserError(
            f"the {backend} backend runs {one_of(RUNNABLE_DTYPES)}, not {dtype} ({model}); "
            f"pass --dtype bfloat16{priced}"
        )


@dataclass(frozen=True)
class EngineConfig:
    """Settings of the reference engine (infermeter.backends.engine.EngineBackend)."""

    device: str = field(default="auto", metadata={"help": "auto, cuda, cuda:N or cpu."})
    dtype: str | None = field(
        default=None, metadata={"help": "float32, bfloat16 or float16 (default: the spec's)."}
    )
    tp: int = field(default=1, metadata={"help": "Tensor-parallel degree (processes)."})
    seed: int = field(default=0, metadata={"help": "Seed of weights and sampling."})
    sampling: str = field(default="greedy", metadata={"help": "greedy or top_p."})
    temperature: float = field(default=0.8, metadata={"help": "Sampling temperature (top_p)."})
    top_p: float = field(default=0.95, metadata={"help": "Nucleus mass, 0 < top_p <= 1."})
    cuda_graphs: bool = field(default=True, metadata={"help": "Capture decode in CUDA graphs."})
    checkpoint: str | Path | None = field(
        default=None, metadata={"help": "Local checkpoint folder (real weights)."}
    )
    timeout_s: float = field(
        default=3600.0, metadata={"help": "Seconds a tensor-parallel step may take (s)."}
    )


@dataclass(frozen=True)
class HFConfig:
    """Settings of the transformers backend (infermeter.backends.hf.HFBackend)."""

    device: str = field(default="auto", metadata={"help": "auto, cuda, cuda:N or cpu."})
    dtype: str | None = field(
        default=None, metadata={"help": "float32, bfloat16 or float16 (default: the spec's)."}
    )
    warmup: int = field(default=1, metadata={"help": "Warm-up calls per new shape (count)."})
    seed: int = field(default=0, metadata={"help": "Seed of random weights."})
    checkpoint: str | Path | None = field(
        default=None, metadata={"help": "Local checkpoint folder (real weights)."}
    )
    attn_implementation: str = field(
        default="sdpa", metadata={"help": "transformers attention: sdpa, eager, ..."}
    )
    cudnn_sdpa: bool = field(
        default=False, metadata={"help": "Allow cuDNN's SDPA (a graph per new length)."}
    )


@dataclass(frozen=True)
class OpenAIConfig:
    """Settings of an OpenAI-compatible API (infermeter.backends.openai.OpenAIBackend).

    The key is passed to the backend only: `stored_options` leaves it out. A field with a
    "flag" is an option of `profile --backend openai` and `load` (infermeter.requests).
    """

    base_url: str | None = field(
        default=None,
        metadata={
            "flag": "--base-url",
            "help": "API base URL, e.g. http://127.0.0.1:8000/v1 (env OPENAI_BASE_URL).",
        },
    )
    api_model: str | None = field(
        default=None,
        metadata={
            "flag": "--api-model",
            "help": "Model name the server serves (default: its only one).",
        },
    )
    api_key: str | None = field(
        default=None,
        repr=False,
        metadata={
            "flag": "--api-key",
            "show_default": False,
            "help": "API key (env OPENAI_API_KEY or INFERMETER_API_KEY); never stored or printed.",
        },
    )
    endpoint: str = field(
        default="completions", metadata={"flag": "--endpoint", "help": "completions or chat."}
    )
    stream: bool = field(
        default=True,
        metadata={
            "flag": "--stream/--no-stream",
            "help": "Stream tokens (TTFT, inter-token latencies).",
        },
    )
    tokenizer: str | None = field(
        default=None,
        metadata={
            "flag": "--tokenizer",
            "help": "The served model's tokenizer.json, SentencePiece .model or 'bytes' (default: "
            "calibrate from the server's usage counts).",
        },
    )
    identical_prompts: bool = field(
        default=False,
        metadata={
            "flag": "--identical-prompts",
            "help": "Same prompt every trial (default: new words per trial).",
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the prompts' words."})
    timeout_s: float = field(
        default=600.0, metadata={"flag": "--timeout", "help": "Seconds per request attempt."}
    )
    retries: int = field(
        default=3,
        metadata={"flag": "--retries", "help": "Retries per request on faults (jittered)."},
    )
    forced_length: Literal["auto", "on", "off"] = field(
        default="auto", metadata={"help": "Force the output length (ignore_eos, min_tokens)."}
    )
    calibration_cache: str | None = field(
        default=None, metadata={"help": "File caching token-count calibrations."}
    )
    stall_timeout_s: float = field(
        default=120.0,
        metadata={
            "flag": "--stall-timeout",
            "help": "Seconds without a byte before an attempt is given up.",
        },
    )
    max_body_mib: float = field(
        default=8.0,
        metadata={
            "flag": "--max-body-mib",
            "help": "MiB of one response body read at most (larger: the request fails as "
            "too_large).",
        },
    )
    size_option: str = field(
        default="--prompt-sizes", metadata={"help": "The option its messages name for sizes."}
    )


BackendConfig = EngineConfig | HFConfig | OpenAIConfig

# name -> (config class, module, backend class); modules are imported when a backend is built.
BACKENDS: dict[str, tuple[type[Any], str, str]] = {
    "hf": (HFConfig, "infermeter.backends.hf", "HFBackend"),
    "engine": (EngineConfig, "infermeter.backends.engine", "EngineBackend"),
    "openai": (OpenAIConfig, "infermeter.backends.openai", "OpenAIBackend"),
}


@runtime_checkable
class Generates(Protocol):
    """A backend that runs dataset prompts (the energy experiment), not only sized points."""

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        """Generate for a batch of prompts; see EngineBackend.generate."""


def help_of(config: type[Any], name: str) -> str:
    """The help text of field `name` of a config class (KeyError if it has none)."""
    return {f.name: f for f in dataclasses.fields(config)}[name].metadata["help"]


def name_of(config: BackendConfig) -> str:
    """The backend name ("engine", "hf", "openai") a config belongs to."""
    return next(name for name, (cls, _, _) in BACKENDS.items() if isinstance(config, cls))


def unknown_backend(name: str) -> UserError:
    """The one line for a backend infermeter does not have; a serving engine's name (vLLM,
    TGI, llama.cpp, SGLang, Ollama) is pointed to the openai backend, which profiles any of
    them through its OpenAI-compatible endpoint."""
    hint = ""
    if name.lower().replace("-", "").replace("_", "").replace(".", "") in SERVERS:
        hint = (f"; {name} serves an OpenAI-compatible API: profile it with --backend openai "
                "--base-url URL (e.g. http://127.0.0.1:8000/v1)")  # fmt: skip
    return UserError(f"unknown backend {name!r}; available: {', '.join(sorted(BACKENDS))}{hint}")


# Serving engines a user may name as a backend (lower case, without - _ .).
SERVERS = frozenset(("vllm", "tgi", "textgenerationinference", "llamacpp", "llamacppserver",
                     "sglang", "ollama", "tensorrtllm", "trtllm", "lmdeploy"))  # fmt: skip


def config_for(name: str, **options: Any) -> BackendConfig:
    """The config of backend `name` from keyword options.

    Raises UserError for an unknown backend or an option it does not have (naming its options).
    """
    if name not in BACKENDS:
        raise unknown_backend(name)
    cls = BACKENDS[name][0]
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(options) - set(names))
    if unknown:  # a misspelt option is named instead of surfacing a TypeError
        raise UserError(
            f"backend {name!r} has no option(s) {', '.join(unknown)}; its options: "
            f"{', '.join(names) or 'none'}"
        )
    return cls(**options)  # type: ignore[no-any-return]


def build_backend(config: BackendConfig) -> Any:
    """Construct the backend `config` describes (its module imported only now).

    Raises UserError when the backend's module or a package it needs (torch, transformers) is
    missing from this install, with how to get it.
    """
    name = name_of(config)
    _, module_name, class_name = BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            raise UserError(f"backend {name!r} is not available in this install") from error
        if error.name and not error.name.startswith("infermeter"):
            raise UserError(
                f"backend {name!r} needs the package {error.name!r}: "
                "pip install 'infermeter[torch]'"
            ) from error
        raise
    values = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)}
    return getattr(module, class_name)(**values)
