"""The `hf` backend: Hugging Face transformers `generate()`, the baseline most users would pick.

The model is built from a ModelSpec with random weights (runtime does not depend on the weight
values, and nothing is downloaded), or loaded from a local checkpoint directory. torch and
transformers are imported inside methods so `import infermeter.backends` works without them.
"""

from __future__ import annotations

import contextlib
import gc
import platform
import time
import zlib
from dataclasses import astuple
from pathlib import Path
from typing import Any

from infermeter.backends.base import Measurement, Point
from infermeter.errors import DoesNotFit, UserError, is_oom, oom_line
from infermeter.measure.memory import check_weights_fit
from infermeter.spec.model import ModelSpec
from infermeter.store.provenance import cpu_name
from infermeter.units import one_of, plural, to_gib

INSTALL_HINT = "pip install 'infermeter[torch]'"

# Token ids below this are left out of random prompts: they are where bos/eos/pad/unk live.
_LOWEST_PROMPT_ID = 10

_DTYPE_ALIASES = {
    "float32": "float32",
    "fp32": "float32",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
}


# ---- spec -> transformers config ---------------------------------------------------------

# family -> (position, norm, FFN kinds, parallel_attn_ffn values) that its modules implement
_STRUCTURE: dict[str, tuple[str, str, tuple[str, ...], tuple[bool, ...]]] = {
    "llama": ("rotary", "rmsnorm", ("swiglu",), (False,)),
    "mistral": ("rotary", "rmsnorm", ("swiglu",), (False,)),
    "qwen2": ("rotary", "rmsnorm", ("swiglu",), (False,)),
    "gpt2": ("learned", "layernorm", ("gelu", "relu"), (False,)),
    "opt": ("learned", "layernorm", ("gelu", "relu"), (False,)),
    "gptj": ("rotary", "layernorm", ("gelu", "relu"), (True,)),
    "gpt_neox": ("rotary", "layernorm", ("gelu", "relu"), (True, False)),
    "bloom": ("alibi", "layernorm", ("gelu",), (False,)),
}
SUPPORTED_FAMILIES: tuple[str, ...] = tuple(sorted(_STRUCTURE))
_GQA_FAMILIES = ("llama", "mistral", "qwen2")


def _combination(spec: ModelSpec) -> str:
    return (
        f"position={spec.position}, norm={spec.norm}, ffn_kind={spec.ffn_kind}, "
        f"parallel_attn_ffn={spec.parallel_attn_ffn}"
    )


def _structural_family(spec: ModelSpec) -> str:
    """The family whose layer layout matches the spec's, for specs without a known family."""
    if spec.position == "alibi":
        return "bloom"
    if spec.parallel_attn_ffn and spec.position == "rotary":
        return "gpt_neox" if spec.parallel_norms == 2 else "gptj"
    rmsnorm_swiglu = spec.norm == "rmsnorm" and spec.ffn_kind == "swiglu"
    if spec.position == "rotary" and rmsnorm_swiglu and not spec.parallel_attn_ffn:
        return "qwen2" if spec.has_qkv_bias and not spec.has_out_bias else "llama"
    if spec.position == "learned" and spec.norm == "layernorm" and not spec.parallel_attn_ffn:
        if spec.ffn_kind == "gelu":
            return "gpt2"
        if spec.ffn_kind == "relu":
            return "opt"
    raise UserError(
        f"{spec.name}: the hf backend has no transformers family for {_combination(spec)}; "
        "supported: rmsnorm+swiglu+rotary (llama, mistral, qwen2), learned+layernorm+gelu "
        "(gpt2), learned+relu (opt), parallel+rotary (gptj, gpt_neox), alibi (bloom)"
    )


def hf_family(spec: ModelSpec) -> str:
    """The Hugging Face model_type that runs `spec` (no torch needed).

    spec.family wins when it is a supported model_type; otherwise the layout decides. Raises
    UserError when the family cannot express the spec's shape. Bias and norm-count details
    are not checked here: they change the parameter count slightly, not the shape, and
    describe() reports any gap.
    """
    newer = {  # issue 20's parts, which the families built here cannot express
        "experts": getattr(spec, "moe", None) is not None,
        "latent attention": getattr(spec, "mla", None) is not None,
        "attention sinks": getattr(spec, "attention_sinks", False),
        "soft-capping": getattr(spec, "attn_softcap", None) or getattr(spec, "final_softcap", None),
        "qk-norm": getattr(spec, "qk_norm", "none") != "none",
        "post/sandwich norms": getattr(spec, "norm_placement", "pre") != "pre",
        "per-layer windows": bool(getattr(spec, "layer_types", ())),
    }
    missing = [part for part, present in newer.items() if present]
    if missing:
        raise UserError(
            f"{spec.name}: the hf backend builds {'/'.join(SUPPORTED_FAMILIES)} models, which "
            f"have no {', '.join(missing)}; use --backend engine"
        )
    family = spec.family if spec.family in _STRUCTURE else _structural_family(spec)
    position, norm, ffn_kinds, parallel = _STRUCTURE[family]
    if (
        spec.position != position
        or spec.norm != norm
        or spec.ffn_kind not in ffn_kinds
        or spec.parallel_attn_ffn not in parallel
    ):
        raise UserError(
            f"{spec.name}: transformers' {family} has position={position}, norm={norm}, "
            f"ffn_kind in {'/'.join(ffn_kinds)}, parallel_attn_ffn in "
            f"{'/'.join(map(str, parallel))}; the spec has {_combination(spec)}"
        )

    def require(ok: bool, why: str) -> None:
        if not ok:
            raise UserError(f"{spec.name}: the hf backend runs this spec as {family}, but {why}")

    if family in _GQA_FAMILIES:
        require(
            spec.rotary_fraction == 1.0,
            f"{family} rotates the whole head (rotary_fraction={spec.rotary_fraction})",
        )
    else:
        require(
            spec.kv_heads == spec.num_heads,
            f"{family} has no grouped-query attention (num_kv_heads={spec.kv_heads}, "
            f"num_heads={spec.num_heads})",
        )
        require(
            spec.dim_head * spec.num_heads == spec.hidden_size,
            f"{family} needs head_dim = hidden_size / num_heads (head_dim={spec.dim_head})",
        )
    if family == "gptj":
        rotary_dim = round(spec.rotary_fraction * spec.dim_head)
        require(
            rotary_dim % 2 == 0,
            f"GPT-J rotates pairs: rotary_fraction*head_dim must be even (got {rotary_dim})",
        )
    if family == "bloom":
        require(
            spec.ffn_dim == 4 * spec.hidden_size,
            f"BLOOM's FFN is fixed at 4*hidden_size (ffn_size={spec.ffn_dim})",
        )
    return family


def hf_config(spec: ModelSpec, pad_token_id: int = 0) -> Any:
    """A transformers config with the architecture of `spec` (see hf_family).

    bos/eos are None so that generation never stops early; pad is a low id that random
    prompts never use.
    """
    import transformers

    family = hf_family(spec)
    h = spec.hidden_size
    common: dict[str, Any] = {
        "vocab_size": spec.vocab_size,
        "tie_word_embeddings": spec.tie_embeddings,
        "bos_token_id": None,
        "eos_token_id": None,
        "pad_token_id": pad_token_id,
    }
    ungated = "relu" if spec.ffn_kind == "relu" else "gelu_new"  # GPT-2/GPT-J's tanh GELU
    if family in _GQA_FAMILIES:
        llama_like: dict[str, Any] = {
            "hidden_size": h,
            "intermediate_size": spec.ffn_dim,
            "num_hidden_layers": spec.num_layers,
            "num_attention_heads": spec.num_heads,
            "num_key_value_heads": spec.kv_heads,
            "head_dim": spec.dim_head,
            "hidden_act": "silu",
            "max_position_embeddings": spec.max_context,
            "rms_norm_eps": spec.norm_eps,
            "rope_theta": spec.rope_theta,
            **common,
        }
        if family == "llama":
            # Llama's attention_bias covers q/k/v and o together.
            return transformers.LlamaConfig(
                attention_bias=spec.has_qkv_bias, mlp_bias=spec.has_mlp_bias, **llama_like
            )
        if family == "mistral":
            window = getattr(spec, "sliding_window", None) or spec.extra.get("sliding_window")
            return transformers.MistralConfig(sliding_window=window, **llama_like)
        return transformers.Qwen2Config(use_sliding_window=False, **llama_like)
    if family in ("gpt2", "gptj"):
        # GPT-2 and GPT-J name the same fields alike; GPT-J adds its rotary width.
        gpt_like: dict[str, Any] = {
            "n_positions": spec.max_context,
            "n_embd": h,
            "n_layer": spec.num_layers,
            "n_head": spec.num_heads,
            "n_inner": spec.ffn_dim,
            "activation_function": ungated,
            "layer_norm_epsilon": spec.norm_eps,
            **common,
        }
        if family == "gpt2":
            return transformers.GPT2Config(**gpt_like)
        return transformers.GPTJConfig(
            rotary_dim=round(spec.rotary_fraction * spec.dim_head), **gpt_like
        )
    if family == "gpt_neox":
        rope: dict[str, Any]
        if int(transformers.__version__.split(".")[0]) >= 5:
            rope = {"rope_theta": spec.rope_theta, "partial_rotary_factor": spec.rotary_fraction}
        else:  # 4.x names
            rope = {"rotary_emb_base": spec.rope_theta, "rotary_pct": spec.rotary_fraction}
        return transformers.GPTNeoXConfig(
            hidden_size=h,
            num_hidden_layers=spec.num_layers,
            num_attention_heads=spec.num_heads,
            intermediate_size=spec.ffn_dim,
            hidden_act="relu" if spec.ffn_kind == "relu" else "gelu",
            max_position_embeddings=spec.max_context,
            layer_norm_eps=spec.norm_eps,
            use_parallel_residual=spec.parallel_attn_ffn,
            attention_bias=spec.has_qkv_bias,
            **rope,
            **common,
        )
    if family == "bloom":
        return transformers.BloomConfig(
            hidden_size=h,
            n_layer=spec.num_layers,
            n_head=spec.num_heads,
            layer_norm_epsilon=spec.norm_eps,
            **common,
        )
    return transformers.OPTConfig(
        hidden_size=h,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        ffn_dim=spec.ffn_dim,
        max_position_embeddings=spec.max_context,
        word_embed_proj_dim=h,
        do_layer_norm_before=True,
        activation_function="relu" if spec.ffn_kind == "relu" else "gelu",
        enable_bias=spec.has_qkv_bias,
        **common,
    )


# ---- helpers -----------------------------------------------------------------------------


def _cpu_name() -> str:
    return cpu_name() or "cpu"


def _first_token_clock(torch: Any, sync_device: Any) -> Any:
    """A StoppingCriteria that never stops and records when the first new token exists.

    generate() calls stopping criteria right after each token is appended, so the first call
    marks the first output token without a second generate() for TTFT.
    """
    from transformers import StoppingCriteria

    class FirstTokenClock(StoppingCriteria):
        def __init__(self) -> None:
            self.first: float | None = None
            self._no: Any = None

        def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
            if self.first is None:
                if sync_device is not None:  # only once: later tokens run unsynchronised
                    torch.cuda.synchronize(sync_device)
                self.first = time.perf_counter()
            if self._no is None or self._no.shape[0] != input_ids.shape[0]:
                self._no = torch.zeros(
                    input_ids.shape[0], dtype=torch.bool, device=input_ids.device
                )
            return self._no

    return FirstTokenClock()


# ---- the backend -------------------------------------------------------------------------


class HFBackend:
    """transformers `generate()` with greedy decoding and a forced output length."""

    name = "hf"

    def __init__(
        self,
        device: str = "auto",
        dtype: str | None = None,
        warmup: int = 1,
        seed: int = 0,
        checkpoint: str | Path | None = None,
        attn_implementation: str = "sdpa",
        cudnn_sdpa: bool = False,
    ) -> None:
        if dtype is not None and str(dtype).lower() not in _DTYPE_ALIASES:
            raise UserError(
                f"hf backend: dtype {dtype!r} is not supported; use "
                f"{one_of(sorted(set(_DTYPE_ALIASES.values())))}"
            )
        if int(warmup) < 0:
            raise UserError(f"hf backend: warmup must be >= 0, got {warmup}")
        self.device_option = device
        self.dtype_option = _DTYPE_ALIASES[str(dtype).lower()] if dtype is not None else None
        self.warmup = int(warmup)
        self.seed = int(seed)
        self.checkpoint = str(checkpoint) if checkpoint is not None else None
        self.attn_implementation = attn_implementation
        # cuDNN's SDPA builds a graph for every new sequence length (~4 ms of CPU per call on
        # an H100), so each decode step of a new shape pays it: off unless asked for.
        self.cudnn_sdpa = bool(cudnn_sdpa)

        self.spec: ModelSpec | None = None
        self.model: Any = None
        self._device: str | None = None
        self._dtype: str | None = None
        self._dtype_note: str | None = None
        self._attn_used: str | None = None
        self._family: str | None = None
        self._vocab = 0
        self._pad = 0
        self._num_params: int | None = None
        self._warmed: set[tuple[int, int]] = set()
        self._gen_options: dict[str, Any] = {}

    # ---- setup ---------------------------------------------------------------------------
    def _resolve_device(self, torch: Any) -> str:
        device = self.device_option
        if device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            raise UserError(f"hf backend: device {device!r} asked for, but CUDA is not available")
        return str(device)

    def _resolve_dtype(self, spec: ModelSpec) -> tuple[str, str | None]:
        if self.dtype_option is not None:
            return self.dtype_option, None
        assert self._device is not None
        if self._device.startswith("cuda"):
            if spec.dtype not in ("float32", "float16", "bfloat16"):
                raise UserError(
                    f"{spec.name}: the hf backend cannot run dtype {spec.dtype}; pass dtype="
                    "'bfloat16' or 'float16'"
                )
            return spec.dtype, None
        if spec.dtype != "float32":
            # bf16/fp16 matmuls on CPU are emulated and far slower than fp32.
            return (
                "float32",
                f"cpu run in float32, not the spec's {spec.dtype} (bf16 on CPU is slow)",
            )
        return "float32", None

    def prepare(self, spec: ModelSpec) -> None:
        """Load `spec` into transformers (random weights, or the checkpoint) on the device.
        Raises UserError without torch/transformers, DoesNotFit when it does not fit."""
        try:
            import torch
            import transformers
        except ImportError as error:
            raise UserError(
                f"the hf backend needs PyTorch and transformers ({error}); {INSTALL_HINT}"
            ) from error
        if self.model is not None:
            self.close()
        self.spec = spec
        self._device = self._resolve_device(torch)
        self._dtype, self._dtype_note = self._resolve_dtype(spec)
        if self.checkpoint is None:  # a checkpoint's own size is not the spec's to tell
            check_weights_fit(spec, self._dtype, self._device)
        dtype = getattr(torch, self._dtype)
        torch.manual_seed(self.seed)  # same random weights for the same seed
        try:
            model = self._load(spec, torch, transformers, dtype)
        except Exception as error:
            if is_oom(error):
                self._free(torch)
                raise DoesNotFit(
                    f"{spec.name}: the model does not fit on {self._device} in {self._dtype} "
                    f"({to_gib(spec.weight_bytes):.1f} GiB of weights at spec dtype): {error}"
                ) from error
            raise
        model.eval()
        self.model = model
        self._vocab = model.get_input_embeddings().num_embeddings
        pad = getattr(model.config, "pad_token_id", None)
        self._pad = pad if isinstance(pad, int) and 0 <= pad < self._vocab else 0
        # A clean generation config: greedy, no eos/bos so generation never stops early.
        # (generate() fills unset fields from model.generation_config, so it must be clean too.)
        self._gen_options = {
            "do_sample": False,
            "num_beams": 1,
            "bos_token_id": None,
            "eos_token_id": None,
            "pad_token_id": self._pad,
            "use_cache": True,
        }
        model.generation_config = transformers.GenerationConfig(**self._gen_options)
        self._num_params = sum(p.numel() for p in model.parameters())
        self._warmed.clear()

    def _load(self, spec: ModelSpec, torch: Any, transformers: Any, dtype: Any) -> Any:
        auto = transformers.AutoModelForCausalLM
        if self.checkpoint is not None:
            path = Path(self.checkpoint).expanduser()
            if not path.is_dir():
                raise UserError(
                    f"hf backend: checkpoint {self.checkpoint!r} is not a local directory "
                    "(the hf backend never downloads; pass a directory with config.json)"
                )
            self._family = None
            model = self._with_attn_fallback(
                lambda attn: auto.from_pretrained(
                    str(path), dtype=dtype, attn_implementation=attn, local_files_only=True
                )
            )
            self._family = getattr(model.config, "model_type", None)
            return model.to(self._device)
        config = hf_config(spec)
        self._family = hf_family(spec)
        # Build directly on the device: no CPU copy of a large random model.
        with torch.device(self._device):
            model = self._with_attn_fallback(
                lambda attn: auto.from_config(config, dtype=dtype, attn_implementation=attn)
            )
        return model.to(dtype)

    def _with_attn_fallback(self, build: Any) -> Any:
        """Build with the asked attention; families without SDPA (GPT-J, BLOOM) fall back."""
        try:
            model = build(self.attn_implementation)
            self._attn_used = self.attn_implementation
        except ValueError as error:
            unsupported = "does not support an attention implementation" in str(error)
            if not unsupported or self.attn_implementation == "eager":
                raise UserError(f"hf backend: {error}") from error
            model = build("eager")
            self._attn_used = "eager"
        return model

    # ---- measuring -----------------------------------------------------------------------
    def _prompt(self, point: Point, torch: Any) -> tuple[Any, Any]:
        # Seeded per point so every trial of every run sees the same prompt.
        key = zlib.crc32(repr((self.seed, *astuple(point))).encode())
        generator = torch.Generator().manual_seed(key)
        low = _LOWEST_PROMPT_ID if self._vocab > 2 * _LOWEST_PROMPT_ID else 0
        shape = (point.batch_size, point.prompt_tokens)
        ids = torch.randint(low, self._vocab, shape, generator=generator, dtype=torch.long)
        ids = ids.to(self._device)
        return ids, torch.ones_like(ids)

    def _generate(self, torch: Any, ids: Any, mask: Any, new_tokens: int, clock: Any) -> Any:
        from transformers import GenerationConfig, StoppingCriteriaList

        # Forced length: eos is None (see prepare) and min = max new tokens.
        config = GenerationConfig(
            **self._gen_options, max_new_tokens=new_tokens, min_new_tokens=new_tokens
        )
        criteria = StoppingCriteriaList([clock]) if clock is not None else None
        with torch.inference_mode(), self._sdpa_backends(torch):
            return self.model.generate(
                input_ids=ids,
                attention_mask=mask,
                generation_config=config,
                stopping_criteria=criteria,
            )

    def _sdpa_backends(self, torch: Any) -> Any:
        """Scoped choice of SDPA kernels (no global torch setting is changed)."""
        on_cuda = self._device is not None and self._device.startswith("cuda")
        if not on_cuda or self._attn_used != "sdpa" or self.cudnn_sdpa:
            return contextlib.nullcontext()
        from torch.nn.attention import SDPBackend, sdpa_kernel

        kernels = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]
        return sdpa_kernel(kernels)

    def _sync(self, torch: Any) -> None:
        if self._device is not None and self._device.startswith("cuda"):
            torch.cuda.synchronize(self._device)

    def _warm(self, torch: Any, point: Point, ids: Any, mask: Any) -> None:
        p, b = point.prompt_tokens, point.batch_size
        if (p, b) not in self._warmed:
            # Cheap: one prefill and one decode step of this shape (kernels, allocator).
            for _ in range(self.warmup):
                self._generate(torch, ids, mask, min(point.output_tokens, 2), None)
            self._warmed.add((p, b))

    def warm(self, point: Point) -> None:
        """Set `point`'s shape up untimed, as measure()'s first visit would (so that an energy
        window begun next holds only timed work)."""
        if self.model is None or self.spec is None:
            raise RuntimeError("HFBackend.warm() called before prepare()")
        import torch

        ids, mask = self._prompt(point, torch)
        self._warm(torch, point, ids, mask)
        self._sync(torch)

    def measure(self, point: Point, window: Any = None) -> Measurement:
        """One generate() of `point` with a forced length; `window` (an energy window,
        infermeter.measure.meter.Window) brackets exactly the timed call. Running out of memory
        gives an error Measurement."""
        if self.model is None or self.spec is None:
            raise RuntimeError("HFBackend.measure() called before prepare()")
        import torch

        p, o, b = point.prompt_tokens, point.output_tokens, point.batch_size
        if min(p, o, b) < 1:
            raise UserError(f"point {point}: prompt, output tokens and batch size must be >= 1")
        if p + o > self.spec.max_context:
            raise UserError(
                f"point {point}: p + o = {p + o} exceeds {self.spec.name}'s context limit of "
                f"{self.spec.max_context} tokens"
            )
        ids, mask = self._prompt(point, torch)
        on_cuda = self._device is not None and self._device.startswith("cuda")
        oom: str | None = None
        try:
            self._warm(torch, point, ids, mask)
            clock = _first_token_clock(torch, self._device if on_cuda else None)
            self._sync(torch)
            if window is not None:
                window.begin()
            start = time.perf_counter()
            out = self._generate(torch, ids, mask, o, clock)
            self._sync(torch)
            end = time.perf_counter()
            if window is not None:
                window.end()
        except Exception as error:
            if not is_oom(error):
                raise
            oom = oom_line(error)
        if oom is not None:
            # Freed outside the except block: the traceback would keep generate's tensors alive.
            ids = mask = None
            self._free(torch)
            return Measurement(
                runtime_s=float("nan"), status="error", detail=f"out of memory: {oom}"
            )
        produced = int(out.shape[1]) - p  # decoder-only: output = prompt + new tokens
        short = produced != o  # a forced length that did not hold makes the point suspect
        return Measurement(
            runtime_s=end - start,
            ttft_s=(clock.first - start) if clock.first is not None else None,
            output_tokens_actual=produced,
            status="flagged" if short else "ok",
            detail=f"generated {plural(produced, 'token')}, asked for {o}" if short else None,
        )

    # ---- description and teardown --------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Versions, device, dtype, attention implementation and options, stored with the run."""
        info: dict[str, Any] = {
            "backend": self.name,
            "torch": None,
            "transformers": None,
            "device": self._device or self.device_option,
            "device_name": None,
            "dtype": self._dtype or self.dtype_option,
            "dtype_note": self._dtype_note,
            "spec_dtype": self.spec.dtype if self.spec is not None else None,
            "attn_implementation": self.attn_implementation,
            "attn_implementation_used": self._attn_used,
            "cudnn_sdpa": self.cudnn_sdpa,
            "checkpoint": self.checkpoint,
            "hf_model_type": self._family,
            # The built model's parameters against the spec's count: a gap means transformers'
            # family differs from the spec in biases or norms (or the checkpoint differs).
            "num_params": self._num_params,
            "spec_num_params": self.spec.num_params if self.spec is not None else None,
            "param_gap": (
                self._num_params - self.spec.num_params
                if self._num_params is not None and self.spec is not None
                else None
            ),
            "warmup": self.warmup,
            "seed": self.seed,
            "python": platform.python_version(),
        }
        try:
            import torch
            import transformers
        except ImportError:
            info["device_name"] = _cpu_name()
            return info
        info["torch"] = torch.__version__
        info["transformers"] = transformers.__version__
        device = info["device"]
        if str(device) in ("auto", "None"):
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if str(device).startswith("cuda") and torch.cuda.is_available():
            info["device_name"] = torch.cuda.get_device_name(torch.device(device))
            info["cuda"] = torch.version.cuda
        else:
            info["device_name"] = _cpu_name()
        return info

    def _free(self, torch: Any) -> None:
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def close(self) -> None:
        """Free the model and the device memory."""
        if self.model is None:
            return
        self.model = None
        self._warmed.clear()
        import torch

        self._free(torch)
