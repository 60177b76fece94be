"""The `engine` backend: infermeter's own reference decoder (see infermeter.engine).

tp=1 runs in this process; tp=N spawns N ranks (one per GPU with NCCL, or N CPU processes with
gloo) and talks to them through queues with deadlines, so a crashed or stuck rank becomes an
exception here rather than a hang. `device="cuda:N"` puts the model on GPU N, and its ranks on
N .. N + tp - 1. An energy window given to measure() or generate() brackets exactly the timed
generation on every rank (infermeter.engine.launch relays its edges). torch is imported inside
methods, so importing this module is cheap and works without it.
"""

from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any

from infermeter.backends.base import Measurement, Point
from infermeter.backends.config import RUNNABLE_DTYPES
from infermeter.errors import DoesNotFit, UserError, is_oom, oom_line
from infermeter.measure.gpus import cuda_ordinal
from infermeter.measure.memory import check_weights_fit
from infermeter.spec.model import ModelSpec
from infermeter.units import one_of, plural, to_gib, to_giga

INSTALL_HINT = "pip install 'infermeter[torch]'"
_DTYPES = set(RUNNABLE_DTYPES)


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
            raise UserError(f"engine: dtype {dtype!r} not supported; use {one_of(sorted(_DTYPES))}")
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

    # ---- setup ---------------------------------------------------------------------------
    def _resolve(self, spec: ModelSpec, torch: Any) -> tuple[str, str]:
        device = str(self.device_option)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        cuda = device.startswith("cuda")
        if cuda and not torch.cuda.is_available():
            raise UserError(f"engine: device {device!r} asked for, but CUDA is not available")
        if not cuda and device != "cpu":
            raise UserError(f"engine: device must be 'auto', 'cpu' or 'cuda[:n]', not {device!r}")
        first = cuda_ordinal(device) if cuda else 0
        launched = self._launch()
        if launched is not None:  # one rank per GPU, each on cuda:LOCAL_RANK
            if cuda and (first != 0 or launched.local_world > torch.cuda.device_count()):
                raise UserError(
                    f"engine: under {launched.launcher} each rank uses cuda:LOCAL_RANK, and this "
                    f"node's {plural(launched.local_world, 'rank')} need as many GPUs (CUDA sees "
                    f"{torch.cuda.device_count()}); pick GPUs with CUDA_VISIBLE_DEVICES, not "
                    f"--device {device}"
                )
        elif cuda and first + self.tp > torch.cuda.device_count():
            raise UserError(
                f"engine: {device} with tp={self.tp} needs GPUs {first}..{first + self.tp - 1}, "
                f"but CUDA sees {torch.cuda.device_count()}"
            )
        dtype = self.dtype_option or (spec.dtype if cuda else "float32")
        if dtype not in _DTYPES:
            raise UserError(
                f"{spec.name}: the engine cannot run dtype {dtype}; pass dtype='bfloat16'"
            )
        return device, dtype

    def prepare(self, spec: ModelSpec) -> None:
        """Build the engine for `spec` on the device (ranks for tp > 1). Raises UserError
        without torch or a usable device, DoesNotFit when the weights do not fit."""
        try:
            import torch
        except ImportError as error:
            raise UserError(
                f"the engine backend needs PyTorch ({error}); {INSTALL_HINT}"
            ) from error
        from infermeter.engine import Engine, check_tp

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
            from infermeter.measure.cpu import cpu_threads

            threads, why = (
                cpu_threads()
            )  # the cores other work leaves free (infermeter.measure.cpu)
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
                raise DoesNotFit(
                    f"{spec.name}: does not fit on {device} in {dtype} "
                    f"({to_gib(spec.weight_bytes):.1f} GiB at spec dtype); try tp > 1"
                ) from error
            self._info = self._engine.describe()
            if threads_note:
                self._info["cpu_threads"] = threads_note
        else:
            from infermeter.engine.launch import RankGroup

            if self._ranks is None:  # ranks outlive a spec: the next prepare reuses them
                on_cuda = device.startswith("cuda")
                first = cuda_ordinal(device) if on_cuda else 0
                launched = self._launch()
                if launched is not None:  # torchrun or srun started the ranks
                    from infermeter.engine.launched import LaunchedGroup, join

                    self._ranks = LaunchedGroup(join(launched), "cuda" if on_cuda else "cpu")
                else:
                    self._ranks = RankGroup(self.tp, "cuda" if on_cuda else "cpu", first)
            self._info = self._ranks.call("prepare", spec, options, timeout_s=self.timeout_s)
        self.spec = spec

    def _launch(self) -> Any:
        """The launcher's job this process is rank 0 of, for tp > 1 (None: the engine spawns
        its ranks itself). Raises UserError where tp is not the job's rank count."""
        from infermeter.engine.ranks import launch_env

        launched = launch_env() if self.tp > 1 else None
        if launched is not None and self.tp != launched.world:
            raise UserError(
                f"engine: {launched.launcher} started {plural(launched.world, 'rank')} "
                f"({launched.nodes} node(s) x {launched.local_world}) and one model runs over all "
                "of them: pass "
                f"--tp {launched.world} (--shards {launched.world}), or launch {self.tp} ranks"
            )
        return launched

    # ---- running -------------------------------------------------------------------------
    def _call(self, method: str, *args: Any, window: Any = None, **kwargs: Any) -> Any:
        if self.spec is None:
            raise UserError("engine: call prepare(spec) before measuring")
        if self._ranks is not None:
            return self._ranks.call(
                method, *args, timeout_s=self.timeout_s, window=window, **kwargs
            )
        if window is not None:
            kwargs["window"] = window
        return getattr(self._engine, method)(*args, **kwargs)

    def warm(self, point: Point) -> None:
        """Set `point`'s shape up untimed on every rank, as measure()'s first visit would (the
        warm-up run, prefill graphs, every decode graph its run replays), so that an energy
        window begun next holds only timed work (Engine.warm_point)."""
        self._call("warm_point", point)

    def measure(self, point: Point, window: Any = None) -> Measurement:
        """Forced output length (no EOS), fresh random prompt of exactly p tokens per sequence.

        runtime_s is the whole generate() call as its caller times it; `window` (an energy
        window, infermeter.measure.meter.Window) brackets the timed generation on every rank.
        Running
        out of memory gives an error Measurement (the KV cache and graphs are freed).
        """
        if (
            self.spec is not None
            and point.prompt_tokens + point.output_tokens > self.spec.max_context
        ):
            raise UserError(
                f"{self.spec.name}: p + o = {point.prompt_tokens + point.output_tokens} exceeds "
                f"max_context {self.spec.max_context}"
            )
        try:
            run = self._call("run_point", point, window=window)
        except Exception as error:
            if not is_oom(error):
                raise
            self.release()
            b, p, o = point.batch_size, point.prompt_tokens, point.output_tokens
            return Measurement(
                runtime_s=math.nan,
                status="error",
                detail=f"out of memory at batch={b}, p={p}, o={o}: {oom_line(error)}"[:500],
            )
        steps = run.decode_steps
        return Measurement(
            runtime_s=run.wall_s,
            ttft_s=run.ttft_s,
            output_tokens_actual=len(run.tokens[0]),
            extra={
                "device_s": run.runtime_s,  # the timed device work inside the call
                "prefill_s": run.prefill_s,
                "decode_s": run.decode_s,
                "tpot_s": run.decode_s / steps if steps else None,  # time per output token
                **run.extra,
                "tp": self.tp,
                # Which tokens came out: the same stack, seed and point give the same digest.
                "tokens_sha": hashlib.sha256(repr(run.tokens).encode()).hexdigest()[:16],
            },
        )

    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        stop_tokens: tuple[int, ...] | list[int] = (),
        seed: int | None = None,
        window: Any = None,
    ) -> Any:
        """Dataset run: token-id prompts (any lengths), stop tokens honoured; a Generation.
        `window` brackets exactly the timed generation, on every rank."""
        return self._call(
            "generate", prompts, max_new_tokens, tuple(stop_tokens), seed=seed, window=window
        )

    def release(self) -> None:
        """Free the KV cache and CUDA graphs on every rank (the weights stay) and reset the
        peak-memory count; ranks stopped by an earlier failure are started again."""
        if self.spec is None:
            return
        if self._ranks is not None and not self._ranks.alive:
            self.prepare(self.spec)  # a rank died (OOM killer, crash): start them again
            return
        self._call("release")
        if self._engine is not None and self._engine.device.type == "cuda":
            import torch

            torch.cuda.reset_peak_memory_stats(self._engine.device)

    def peak_memory_gb(self) -> float | None:
        """Peak GPU memory (GB) torch reserved since the last release(), for an engine in
        this process; None with ranks or on a CPU (NVML can tell those: Meter.memory_used_gb)."""
        if self._engine is None or self._engine.device.type != "cuda":
            return None
        import torch

        return to_giga(torch.cuda.max_memory_reserved(self._engine.device))

    def describe(self) -> dict[str, Any]:
        """Versions, device, dtype and options, stored with the run."""
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
        launched = self._launch() if self._ranks is not None else None
        if launched is not None:
            info.update(launched.describe())  # torchrun or slurm, nodes and ranks
        if self._device == "cpu":
            from infermeter.store.provenance import cpu_name

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
        """Free the engine or its ranks and the device memory."""
        self._release()
