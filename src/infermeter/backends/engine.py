"""The `engine` backend: infermeter's own reference decoder (see infermeter.engine).

tp=1 runs in this process; tp=N spawns N ranks (one per GPU with NCCL, or N CPU processes with
gloo) and talks to them through queues with deadlines, so a crashed or stuck rank becomes an
exception here rather than a hang. torch is imported inside methods, so importing this module
is cheap and works without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from infermeter.backends.base import Measurement, Point
from infermeter.errors import UserError
from infermeter.memory import check_weights_fit
from infermeter.spec import ModelSpec

INSTALL_HINT = "pip install 'infermeter[torch]'"
_DTYPES = {"float32", "float16", "bfloat16"}


class EngineBackend:
    """Random-weight (or local LLaMA checkpoint) decoder with CUDA-graph decode and TP."""

    name = "engine"

    def __init__(
        self,
        device: str = "auto",
        dtype: str | None = None,
        tp: int = 1,
        seed: int = 0,
        sampling: str = "greedy",
        temperature: float = 0.8,
        top_p: float = 0.95,
        cuda_graphs: bool = True,
        checkpoint: str | Path | None = None,
        timeout_s: float = 3600.0,
    ) -> None:
        if dtype is not None and dtype not in _DTYPES:
            raise UserError(f"engine: dtype {dtype!r} not supported; use one of {sorted(_DTYPES)}")
        if sampling not in ("greedy", "top_p"):
            raise UserError(f"engine: sampling must be 'greedy' or 'top_p', not {sampling!r}")
        if int(tp) < 1:
            raise UserError(f"engine: tp must be >= 1, got {tp}")
        if not temperature > 0 or not 0 < top_p <= 1:
            raise UserError("engine: need temperature > 0 and 0 < top_p <= 1")
        self.device_option, self.dtype_option = device, dtype
        self.tp, self.seed, self.sampling = int(tp), int(seed), sampling
        self.temperature, self.top_p = float(temperature), float(top_p)
        self.cuda_graphs = bool(cuda_graphs)
        self.checkpoint = str(checkpoint) if checkpoint is not None else None
        self.timeout_s = float(timeout_s)
        self.spec: ModelSpec | None = None
        self._device: str | None = None
        self._dtype: str | None = None
        self._engine: Any = None  # tp=1: an Engine in this process
        self._ranks: Any = None  # tp>1: a RankGroup
        self._info: dict[str, Any] = {}
        # Set by a metered profile; with tp > 1 the ranks run elsewhere, so it stays unused
        # and the profile's window spans the whole call.
        self.energy_window: Any = None

    # ---- setup ---------------------------------------------------------------------------
    def _resolve(self, spec: ModelSpec, torch: Any) -> tuple[str, str]:
        device = str(self.device_option)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        cuda = device.startswith("cuda")
        if cuda and not torch.cuda.is_available():
            raise UserError(f"engine: device {device!r} asked for, but CUDA is not available")
        if cuda and self.tp > torch.cuda.device_count():
            raise UserError(
                f"engine: tp={self.tp} needs {self.tp} GPUs, found {torch.cuda.device_count()}"
            )
        if not cuda and device != "cpu":
            raise UserError(f"engine: device must be 'auto', 'cpu' or 'cuda[:n]', not {device!r}")
        dtype = self.dtype_option or (spec.dtype if cuda else "float32")
        if dtype not in _DTYPES:
            raise UserError(
                f"{spec.name}: the engine cannot run dtype {dtype}; pass dtype='bfloat16'"
            )
        return device, dtype

    def prepare(self, spec: ModelSpec) -> None:
        try:
            import torch
        except ImportError as error:
            raise UserError(
                f"the engine backend needs PyTorch ({error}); {INSTALL_HINT}"
            ) from error
        from infermeter.engine import Engine, check_tp
        from infermeter.engine.generate import is_oom

        check_tp(spec, self.tp)
        device, dtype = self._resolve(spec, torch)
        # tp ranks on CPU share one host's memory; on GPUs each holds its own shard
        check_weights_fit(spec, dtype, device, self.tp if device.startswith("cuda") else 1)
        self._release(keep_ranks=self.tp > 1 and device.startswith("cuda") == self._on_cuda())
        self._device, self._dtype = device, dtype
        options = {
            "dtype": dtype,
            "seed": self.seed,
            "sampling": self.sampling,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "cuda_graphs": self.cuda_graphs,
            "checkpoint": self.checkpoint,
        }
        threads_note = None
        if self.tp == 1 and device == "cpu":
            from infermeter.cpu import cpu_threads

            threads, why = cpu_threads()  # the cores other work leaves free (infermeter.cpu)
            if threads is not None:
                torch.set_num_threads(threads)
            threads_note = f"{torch.get_num_threads()} ({why})"
        if self.tp == 1:
            options["dtype"] = getattr(torch, dtype)
            try:
                self._engine = Engine(spec, device=device, **options)
            except Exception as error:
                if not is_oom(error):
                    raise
                self._release()
                raise UserError(
                    f"{spec.name}: does not fit on {device} in {dtype} "
                    f"({spec.weight_bytes / 2**30:.1f} GiB at spec dtype); try tp > 1"
                ) from error
            self._info = self._engine.describe()
            if threads_note:
                self._info["cpu_threads"] = threads_note
        else:
            from infermeter.engine.launch import RankGroup

            if self._ranks is None:  # ranks outlive a spec: the next prepare reuses them
                self._ranks = RankGroup(self.tp, "cuda" if device.startswith("cuda") else "cpu")
            self._info = self._ranks.call("prepare", spec, options, timeout_s=self.timeout_s)
        self.spec = spec

    # ---- running -------------------------------------------------------------------------
    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.spec is None:
            raise UserError("engine: call prepare(spec) before measuring")
        if self._ranks is not None:
            return self._ranks.call(method, *args, timeout_s=self.timeout_s, **kwargs)
        return getattr(self._engine, method)(*args, **kwargs)

    def measure(self, point: Point) -> Measurement:
        """Forced output length (no EOS), fresh random prompt of exactly p tokens per sequence."""
        if (
            self.spec is not None
            and point.prompt_tokens + point.output_tokens > self.spec.max_context
        ):
            raise UserError(
                f"{self.spec.name}: p + o = {point.prompt_tokens + point.output_tokens} exceeds "
                f"max_context {self.spec.max_context}"
            )
        if self._engine is not None:  # tp=1: the window can bracket the timed part exactly
            self._engine.energy_window = self.energy_window
        measurement: Measurement = self._call("measure", point)
        measurement.extra.setdefault("tp", self.tp)
        return measurement

    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        stop_tokens: tuple[int, ...] | list[int] = (),
        seed: int | None = None,
    ) -> Any:
        """Dataset run: token-id prompts (any lengths), stop tokens honoured; a Generation."""
        if self._engine is not None:  # tp=1: the energy window brackets the timed part
            self._engine.energy_window = self.energy_window
        return self._call("generate", prompts, max_new_tokens, tuple(stop_tokens), seed=seed)

    def describe(self) -> dict[str, Any]:
        try:
            import torch

            version: str | None = torch.__version__
        except ImportError:
            version = None
        info: dict[str, Any] = {
            "backend": self.name,
            "torch": version,
            "device": self._device or self.device_option,
            "dtype": self._dtype or self.dtype_option,
            "tp": self.tp,
            "cuda_graphs": self.cuda_graphs,
            "sampling": self.sampling,
            "temperature": self.temperature if self.sampling == "top_p" else None,
            "top_p": self.top_p if self.sampling == "top_p" else None,
            "seed": self.seed,
            "checkpoint": self.checkpoint,
        }
        info.update(self._info)  # what the prepared engine reports (device name, attention)
        if self._device == "cpu":
            from infermeter.provenance import cpu_name

            info["device"] = f"cpu: {cpu_name()}"
        return info

    def _on_cuda(self) -> bool:
        return self._device is not None and self._device.startswith("cuda")

    def _release(self, keep_ranks: bool = False) -> None:
        if self._ranks is not None and not (keep_ranks and self._ranks.alive):
            self._ranks.close()
            self._ranks = None
        on_cuda = self._engine is not None and self._engine.device.type == "cuda"
        if self._engine is not None:
            self._engine.release()
        self._engine = None
        self.spec = None
        self._info = {}
        if on_cuda:  # graphs and closures form cycles: collect them, then hand memory back
            import gc

            import torch

            gc.collect()
            torch.cuda.empty_cache()

    def close(self) -> None:
        self._release()
