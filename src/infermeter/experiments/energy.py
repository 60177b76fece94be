"""The Words-to-Watts experiment: energy of real dataset prompts per second, token and response.

A Workload (N dataset prompts, see infermeter.workloads.datasets) runs under each configuration of a
sweep: batch size × maximum generation length × tensor-parallel degree (shards) × GPU power cap.
Each configuration feeds the prompts in order, `batch` at a time, to the backend's dataset
`generate` (stop at EOS or the maximum length); every batch is one energy window of the Meter,
handed to `generate`, which brackets exactly the timed generation with it (warm-up and
CUDA-graph capture stay outside) on every GPU that does the work: with several shards the
engine's ranks open and close it together and it sums their GPUs.

Per configuration, as the paper defines them (§III-C): words/s (outputs split on spaces),
tokens/s, responses/s; energy per second (W), per output token and per response (total energy
over total output tokens or responses); mean SM and memory utilisation; peak GPU memory. Output
tokens are the ids the model generated (a stop token included: it was decoded), which for a
LLaMA spec are LLaMA tokens. Rates use the summed generation time; W is energy over the summed
window time.

Per response, energy is measured, not J/token × length: **a response's energy is its batch
window's energy times its share of the batch's output tokens** (its generated tokens over the
batch's total), so the responses of a batch add up to the window exactly. The paper's energy
per response (total / responses) is the configuration's `j_per_response`, the mean of these.

A configuration that runs out of memory (infermeter.errors.is_oom), or whose model does not fit
its shards (DoesNotFit), is stored as `infeasible` with the reason (the paper's Table II) and
the sweep moves on (batches it finished before running out stay stored: they were measured).
Every batch is committed, with its responses and the power samples so far, before the next one
runs, and a configuration's row is computed from its stored batches once the last is in:
rerunning the same workload resumes, skipping configurations stored as ok or infeasible and, in
a configuration cut short, the batches already stored (each batch keeps its seed, so a resumed
configuration runs exactly the batches it would have). Before a meter's first configuration its
idle power is read and, with `warmup_s`, the GPU is loaded until warm (unrecorded). Power caps
are set only when asked for, and each batch records the limit NVML reported for it.
"""

from __future__ import annotations

import contextlib
import math
import re
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

import pandas as pd

from infermeter.backends.config import Generates
from infermeter.errors import DoesNotFit, ResumeRefused, UserError, is_oom, oom_line
from infermeter.experiments.run import RunIdentity, path_changed, resumable_run
from infermeter.measure.gpus import GpuRef
from infermeter.measure.meter import EnergyWindow, Meter, check_warmup_s, warm_up
from infermeter.spec.model import ModelSpec
from infermeter.store import energy as stored_energy
from infermeter.store.db import RunRecord, Store, run_key
from infermeter.store.energy import energy_configs
from infermeter.units import plural
from infermeter.workloads.datasets import Workload
from infermeter.workloads.tokenizer import Tokenizer, count_words, prompt_ids

# ---- the sweep ------------------------------------------------------------------------------


@dataclass(frozen=True)
class EnergyConfig:
    """One configuration of a Words-to-Watts sweep (paper 2): `batch` prompts at a time, at
    most `max_len` new tokens each, on `shards` GPUs, under a power cap in W (None: the limit is
    left alone)."""

    batch: int
    max_len: int
    shards: int = 1
    power_cap_w: float | None = None

    @property
    def key(self) -> str:
        """Its name in the store (energy_batches/energy_responses.config_key) and in progress lines,
        e.g. b64-l256-s1-nocap."""
        cap = f"cap{self.power_cap_w:g}" if self.power_cap_w is not None else "nocap"
        return f"b{self.batch}-l{self.max_len}-s{self.shards}-{cap}"

    @classmethod
    def from_key(cls, key: str) -> EnergyConfig | None:
        """The configuration named `key` (EnergyConfig.key), or None for another string."""
        found = re.fullmatch(r"b(\d+)-l(\d+)-s(\d+)-(?:nocap|cap(.+))", key)
        if found is None:
            return None
        batch, max_len, shards, cap = found.groups()
        return cls(int(batch), int(max_len), int(shards), None if cap is None else float(cap))


@dataclass(frozen=True)
class EnergySweep:
    """Batch sizes × max generation lengths × shards × power caps (None: leave it alone)."""

    batch_sizes: tuple[int, ...] = (64, 128, 256)
    max_lengths: tuple[int, ...] = (256, 512, 1024)
    shards: tuple[int, ...] = (1,)
    power_limits: tuple[float | None, ...] = (None,)

    def validate(self, spec: ModelSpec) -> None:
        """Raise UserError for an empty or non-positive batch size, max length or shard count, a max
        length that leaves no room for a prompt in the model's context, or a power limit that is
        not positive watts."""
        for label, values in (
            ("batch size", self.batch_sizes),
            ("max length", self.max_lengths),
            ("shard count", self.shards),
        ):
            if not values:
                raise UserError(f"no {label}s given")
            if any(v < 1 for v in values):
                raise UserError(f"{label}s must be positive, got {min(values)}")
        longest = max(self.max_lengths)
        if longest >= spec.max_context:
            raise UserError(
                f"max length {longest} leaves no room for a prompt in {spec.name}'s context of "
                f"{spec.max_context}; pass smaller --max-lengths"
            )
        if not self.power_limits or any(w is not None and not w > 0 for w in self.power_limits):
            raise UserError("power limits must be positive watts")

    def configs(self) -> list[EnergyConfig]:
        """Shards outermost (one model build each), then power cap, length, batch."""
        return [
            EnergyConfig(b, m, s, w)
            for s in dict.fromkeys(self.shards)
            for w in dict.fromkeys(self.power_limits)
            for m in dict.fromkeys(self.max_lengths)
            for b in dict.fromkeys(self.batch_sizes)
        ]


# ---- what the store holds -------------------------------------------------------------------


def _stored(store: Store, run_id: int) -> set[EnergyConfig]:
    """The configurations of the run stored as done (ok or infeasible)."""
    return {EnergyConfig(*ident) for ident in stored_energy.done_configs(store, run_id)}


def _record(store: Store, run_id: int, config: EnergyConfig, row: dict[str, Any]) -> None:
    """One configuration's row (replacing any old); its batches are stored as they finish."""
    stored_energy.record_config(
        store,
        run_id,
        {**row, "batch": config.batch, "max_len": config.max_len, "shards": config.shards,
         "power_cap_w": config.power_cap_w},
    )  # fmt: skip


def batches_left(store: Store, run_id: int, config: EnergyConfig, prompts: int) -> int:
    """Batches of `config` still to run for `prompts` prompts (fewer once some are stored)."""
    total = batches_of(prompts, config.batch)
    stored = stored_energy.stored_batches(store, run_id, config.key)
    return total - len({i for i in stored if i < total})


# ---- one batch ----------------------------------------------------------------------------------


def generate_batch(
    backend: Any,
    prompts: list[list[int]],
    max_new_tokens: int,
    stop_tokens: Sequence[int] = (),
    seed: int = 0,
    meter: Meter | None = None,
) -> tuple[Any, EnergyWindow | None, float]:
    """One batch inside one energy window: (generation, window, wall seconds).

    The backend's generate opens and closes the window around exactly its timed generation,
    on every GPU of the run; without a meter, no window.
    """
    window = meter.window("batch") if meter is not None and meter.available else None
    start = time.perf_counter()
    try:
        generation = backend.generate(
            prompts, max_new_tokens, tuple(stop_tokens), seed=seed, window=window
        )
    finally:
        wall = time.perf_counter() - start
        result = window.close() if window is not None else None  # one an error left open
    return generation, result, wall


def attribute(window_j: float | None, generated: Sequence[int]) -> list[float | None]:
    """Each response's share of its batch window: window × its tokens / the batch's tokens."""
    total = sum(generated)
    if window_j is None or total <= 0:
        return [None] * len(generated)
    return [window_j * g / total for g in generated]


class PowerCapLost(UserError):
    """The GPUs' power limit is not the cap a configuration runs at (restored, or changed from
    outside the run): the sweep stops rather than label a batch with a cap it did not have."""


def _power_limit_w(meter: Meter | None, cap: Any) -> float | None:
    """The lowest power limit (W) NVML reports now over the run's GPUs; None if unknown."""
    limits = cap.current_w() if cap is not None else meter.power_limits_w() if meter else []
    known = [w for w in limits if w is not None]
    return min(known) if known else None


def _check_cap(cap: Any, meter: Meter | None, config: EnergyConfig, index: int) -> float | None:
    """The limit NVML reports now; raises PowerCapLost where a cap is asked and not in force."""
    limit = _power_limit_w(meter, cap)
    if cap is not None and (not cap.active or limit is None or abs(limit - cap.watts) > 0.5):
        shown = "unknown" if limit is None else f"{limit:g} W"
        raise PowerCapLost(
            f"the GPUs' power limit is {shown}, not the {cap.watts:g} W of {config.key} "
            f"(restored, or changed outside this run): stopped, batch {index} not stored; "
            "rerun the same command to resume there"
        )
    return limit


def _release(backend: Any) -> None:
    """Free what the last configuration held (KV cache, graphs) on every rank."""
    release = getattr(backend, "release", None)
    if release is not None:
        release()


def _memory_used_gb(meter: Meter | None, backend: Any) -> float | None:
    """Peak GPU memory: torch's peak reserved bytes for an engine in this process (reset at
    each configuration), else NVML's memory in use after the batch (the caching allocator
    holds on to its peak), the larger over the run's GPUs."""
    peak = getattr(backend, "peak_memory_gb", None)
    held = peak() if peak is not None else None
    if held is None and meter is not None:
        held = meter.memory_used_gb()
    return held


# ---- one configuration --------------------------------------------------------------------------


@dataclass
class BatchResult:
    """What a progress bar or a benchmark sees of one batch."""

    config: EnergyConfig
    index: int
    batches: int
    responses: int
    output_tokens: int
    runtime_s: float
    window: EnergyWindow | None


@dataclass
class ConfigResult:
    """One configuration's outcome: its energy_configs row (the paper's figures, or infeasible with
    the reason), dataset included, run_id and the configuration's key columns not."""

    config: EnergyConfig
    row: dict[str, Any]


def _fed(
    prompts: list[list[int]], spec: ModelSpec, config: EnergyConfig, tokenizer: Tokenizer
) -> list[list[int]]:
    """The prompts as `config` feeds them: each cut to leave room for max_len new tokens."""
    limit = spec.max_context - config.max_len
    return [_truncate(p, limit, tokenizer.bos_id) for p in prompts]


def _truncate(ids: list[int], limit: int, bos: int | None) -> list[int]:
    """Keep the prompt's end (where the template asks for the answer), and its BOS."""
    if len(ids) <= limit:
        return ids
    if bos is not None and ids[0] == bos and limit > 1:
        return [bos, *ids[1:][-(limit - 1) :]]
    return ids[-limit:]


def _weighted(windows: pd.DataFrame, column: str) -> float | None:
    """The window-time-weighted mean of a utilisation column, over windows that have it."""
    have = windows[windows[column].notna()]
    total = float(have.window_s.sum())
    return float((have[column] * have.window_s).sum()) / total if total > 0 else None


def _warm_up(
    backend: Any,
    spec: ModelSpec,
    config: EnergyConfig,
    prompts: list[list[int]],
    tokenizer: Tokenizer,
    stops: Sequence[int],
    meter: Meter,
    seconds: float,
    seed: int,
) -> dict[str, Any]:
    """The thermal warm-up on `config`'s first batch; a batch that does not fit is left to
    run_config to record as infeasible."""
    batch = _fed(prompts[: config.batch], spec, config, tokenizer)
    try:
        warm = warm_up(
            lambda: backend.generate(batch, config.max_len, tuple(stops), seed=seed),
            meter,
            seconds,
        )
    except Exception as error:
        if not is_oom(error):
            raise
        _release(backend)
        return {"skipped": f"out of memory on {config.key}: {oom_line(error)}"}
    return {**warm, "config": config.key, "batch": len(batch)}


def _infeasible(config: EnergyConfig, dataset: str, reason: str) -> ConfigResult:
    return ConfigResult(config, {"dataset": dataset, "status": "infeasible", "detail": reason})


def run_config(
    backend: Any,
    spec: ModelSpec,
    config: EnergyConfig,
    prompts: list[list[int]],
    tokenizer: Tokenizer,
    stop_tokens: Sequence[int],
    *,
    store: Store,
    run_id: int,
    dataset: str,
    seed: int = 0,
    meter: Meter | None = None,
    on_batch: Callable[[BatchResult], None] | None = None,
    cap: Any = None,
) -> ConfigResult:
    """Every prompt through one configuration, each batch stored as it finishes (batches
    already stored for this run are skipped); an OOM makes it `infeasible`, not an error.
    The configuration's row is computed from its stored batches. Each batch records the
    power limit NVML reports (the lowest over the run's GPUs); under `cap` (a PowerCap) a
    batch that did not run at its limit throughout is not stored, and PowerCapLost stops."""
    fed = _fed(prompts, spec, config, tokenizer)
    cut = sum(len(a) != len(b) for a, b in zip(fed, prompts, strict=True))
    chunks = [fed[i : i + config.batch] for i in range(0, len(fed), config.batch)]
    stored = stored_energy.stored_batches(store, run_id, config.key)
    _release(backend)  # this configuration's memory only, from a clean slate
    stops = set(stop_tokens)
    clock_offset = time.time() - time.perf_counter()
    for index, chunk in enumerate(chunks):
        if index in stored:
            continue
        _check_cap(cap, meter, config, index)
        try:
            generation, window, wall = generate_batch(
                backend, chunk, config.max_len, stop_tokens, seed + index, meter
            )
        except Exception as error:
            if not is_oom(error):
                raise
            _release(backend)
            width = max(len(p) for p in chunk)
            return _infeasible(
                config,
                dataset,
                f"out of memory at batch {config.batch}, max_len {config.max_len}, "
                f"{config.shards} shard(s), prompt width {width}: {oom_line(error)}",
            )
        outputs = [list(t) for t in generation.tokens]
        generated = [max(1, len(t)) for t in outputs]
        window_j = window.total_j if window is not None else None
        responses = []
        for j, (ids, n_out, energy_j) in enumerate(
            zip(outputs, generated, attribute(window_j, generated), strict=True)
        ):
            text_ids = ids[:-1] if ids and ids[-1] in stops else ids
            responses.append(
                (run_id, config.key, index, index * config.batch + j, len(chunk[j]), n_out,
                 count_words(tokenizer.decode(text_ids)), energy_j, window_j)
            )  # fmt: skip
        batch_runtime = float(getattr(generation, "runtime_s", wall))
        batch = (
            run_id, config.key, index, len(chunk), max(len(p) for p in chunk), batch_runtime,
            window.seconds if window else None,
            window.start + clock_offset if window else None,
            window.end + clock_offset if window else None,
            window_j, window.integrated_j if window else None,
            window.method if window else None,
            window.sm_util if window else None, window.mem_util if window else None,
            _memory_used_gb(meter, backend), _check_cap(cap, meter, config, index),
        )  # fmt: skip
        stored_energy.record_batch(store, responses, batch)
        if on_batch:
            on_batch(
                BatchResult(
                    config, index, len(chunks), len(chunk), sum(generated), batch_runtime, window
                )
            )
    row = _config_row(store, run_id, config, len(chunks))
    if len(fed) < config.batch:  # the figures are those of a batch of n: say so beside them
        n = len(fed)
        row["detail"] += (
            f"; only {plural(n, 'prompt')}, so batch {config.batch} ran as one batch of {n}"
        )
    if cut:
        limit = spec.max_context - config.max_len
        row["detail"] += f"; {plural(cut, 'prompt')} cut to their last {limit} tokens"
    if stored:
        row["detail"] += f"; resumed: {len(stored)} of the batches were stored by an earlier run"
    return ConfigResult(config, {"dataset": dataset, **row})


def _config_row(store: Store, run_id: int, config: EnergyConfig, chunks: int) -> dict[str, Any]:
    """The paper's per-configuration figures from the configuration's stored batches."""
    batches, responses = stored_energy.config_batches(store, run_id, config.key, chunks)
    runtime = float(batches.runtime_s.sum())
    tokens, words = int(responses.output_tokens.sum()), int(responses.words.sum())
    n = len(responses)
    windows = batches[batches.window_s.notna()]
    # Energy only where every batch has its joules: a batch resumed without a meter would
    # otherwise spread the others' energy over its tokens too.
    energy = (
        float(windows.energy_j.sum())
        if len(windows) == len(batches) > 0 and windows.energy_j.notna().all()
        else None
    )
    window_s = float(windows.window_s.sum())
    detail = f"{plural(n, 'response')} in {plural(len(batches), 'batch')}"
    unmetered = len(batches) - int(windows.energy_j.notna().sum())
    if 0 < unmetered < len(batches):
        detail += f"; energy left empty: {unmetered} batch(es) ran without an energy reading"
    if energy is not None:
        per_response = responses.energy_j.dropna()
        detail += (
            f"; {windows.method.iloc[0]} energy over the timed generation; per response median "
            f"{per_response.median():.4g} J, max {per_response.max():.4g} J"
        )
    peak = batches.peak_mem_gb.dropna()
    return {
        "tokens_per_s": tokens / runtime if runtime > 0 else None,
        "words_per_s": words / runtime if runtime > 0 else None,
        "responses_per_s": n / runtime if runtime > 0 else None,
        "watts": energy / window_s if energy is not None and window_s > 0 else None,
        "j_per_token": energy / tokens if energy is not None and tokens else None,
        "j_per_response": energy / n if energy is not None and n else None,
        "sm_util": _weighted(windows, "sm_util"),
        "mem_util": _weighted(windows, "mem_util"),
        "peak_mem_gb": float(peak.max()) if not peak.empty else None,
        "status": "ok",
        "detail": detail,
    }


# ---- the experiment -----------------------------------------------------------------------------


@dataclass
class EnergyRun:
    """What run_energy returns: the run's record, its energy_configs rows
    (infermeter.store.energy.CONFIG_COLUMNS), notes on the workload and meters, and the
    configurations `stop_when` left unrun."""

    run: RunRecord
    configs: pd.DataFrame  # this run's energy_configs rows
    notes: list[str]
    skipped: list[EnergyConfig]  # not run: stopped by `stop_when`


def energy_key(
    spec: ModelSpec,
    backend: str,
    options: dict,
    workload: Workload,
    tokenizer: str,
    stops: Any,
    device: str = "",
) -> str:
    """Same experiment on the same device, same key. The device (the GPU's name) is part of
    it since a configuration resumes batch by batch: one row must never blend two GPUs."""
    parts = {
        "experiment": "energy",
        "spec": spec.to_dict(),
        "backend": backend,
        "options": options,
        # The prompts' digest, not the files' paths: the same workload resumes anywhere.
        "workload": {k: v for k, v in workload.describe().items() if k != "sources"},
        "tokenizer": tokenizer,
        "stops": list(stops),
    }
    return run_key({**parts, "device": device} if device else parts)


def _power_cap(
    watts: float | None,
    gpus: Sequence[int | GpuRef],
    nvml: Any,
    on_note: Callable[[str], None] | None,
) -> contextlib.AbstractContextManager[Any]:
    if watts is None:  # no flag, no NVML power call at all
        return contextlib.nullcontext()
    from infermeter.measure.powercap import PowerCap

    return PowerCap(watts, gpus, nvml=nvml, on_note=on_note)


@dataclass(frozen=True)
class EnergySettings:
    """What a Words-to-Watts run measures (see run_energy): the model, the workload and its
    tokenizer, the sweep, the backend's name and options it is keyed by, and how it runs."""

    spec: ModelSpec
    workload: Workload
    tokenizer: Tokenizer
    sweep: EnergySweep
    backend_name: str = "engine"
    backend_options: dict[str, Any] | None = None
    gpus_for: Callable[[int], Sequence[int | GpuRef]] | None = None
    power_nvml: Any = None
    stop_tokens: Sequence[int] | None = None
    device: str = ""
    seed: int = 0
    idle_s: float = 1.0
    warmup_s: float = 0.0
    close_backends: bool = True
    stop_when: Callable[[], bool] | None = None


@dataclass(frozen=True)
class EnergyProgress:
    """Told of a Words-to-Watts run: `on_start(run, configurations to run, configurations in
    the sweep)`, each batch and configuration as it is stored, and notes (warm-up, caps)."""

    on_start: Callable[[RunRecord, list[EnergyConfig], int], None] | None = None
    on_batch: Callable[[BatchResult], None] | None = None
    on_config: Callable[[EnergyConfig, dict[str, Any]], None] | None = None
    on_note: Callable[[str], None] | None = None


class EnergyExperiment:
    """The Words-to-Watts benchmark of paper 2 (infermeter.experiments.base.Experiment; see
    run_energy and the module docstring). After `run`, `notes` holds the workload's and the
    meters' notes, `skipped` the configurations `stop_when` left unrun."""

    name = "energy"

    def __init__(self) -> None:
        self.notes: list[str] = []
        self.skipped: list[EnergyConfig] = []

    def run(
        self,
        store: Store,
        backend: Callable[[int], Any],
        config: EnergySettings,
        meter: Callable[[int], Meter | None] | None,
        progress: EnergyProgress,
    ) -> RunRecord:
        """Run every configuration of `config.sweep` not yet stored; `backend(shards)` gives
        a backend with a dataset `generate`, `meter(shards)` a Meter over its GPUs or None.
        Returns the run's record, "complete", or "partial" where `stop_when` stopped it.
        Raises UserError for a bad sweep or warm-up, a backend without dataset generate, a
        run measured by another process, or a power cap lost (PowerCapLost); a backend's
        errors other than out-of-memory propagate (the run is then "interrupted")."""
        spec, workload, tokenizer, sweep = (
            config.spec,
            config.workload,
            config.tokenizer,
            config.sweep,
        )
        check_warmup_s(config.warmup_s)
        sweep.validate(spec)
        options = dict(config.backend_options or {})
        stops = tuple(config.stop_tokens) if config.stop_tokens is not None else (
            (tokenizer.eos_id,) if tokenizer.eos_id is not None else ()
        )  # fmt: skip
        self.notes, self.skipped = list(workload.notes), []
        identity = RunIdentity(
            key=energy_key(
                spec, config.backend_name, options, workload, tokenizer.name, stops, config.device
            ),
            model=spec.name,
            spec=spec.to_dict(),
            stack={"backend": config.backend_name, **options},
            backend=config.backend_name,
            backend_info=options,
            grid={"experiment": "energy", "workload": workload.describe(),
                  "tokenizer": tokenizer.name},
            device=config.device,
        )  # fmt: skip

        def missing(existing: RunRecord | None) -> list[EnergyConfig]:
            done = _stored(store, existing.id) if existing else set()
            return [c for c in sweep.configs() if c not in done]

        resume = resumable_run(store, identity, missing)
        measured = resume.existing is not None and stored_energy.measured_anything(
            store, resume.existing.id
        )

        def started(run: RunRecord) -> None:
            if progress.on_start:
                progress.on_start(run, resume.todo, len(sweep.configs()))

        with resume.open(on_start=started) as active:
            sweep_run = _SweepRun(
                store, active.run.id, config, progress, options, stops,
                [prompt_ids(tokenizer, p) for p in workload.prompts],
                resume.existing.backend_info if measured else None,
            )  # fmt: skip
            for shards, group in groupby(resume.todo, key=lambda c: c.shards):
                configs = list(group)
                if config.stop_when and config.stop_when():
                    self.skipped += configs
                    continue
                self.skipped += sweep_run.on_shards(shards, configs, backend, meter, self.notes)
            if self.skipped:
                active.status = "partial"
        return store.get_run(active.run.id)


@dataclass
class _SweepRun:
    """One Words-to-Watts run under way: what its shard groups share."""

    store: Store
    run_id: int
    settings: EnergySettings
    progress: EnergyProgress
    options: dict[str, Any]
    stops: tuple[int, ...]
    ids: list[list[int]]
    # a resumed run's backend record: the first backend prepared must make its engine choices
    # (run.path_changed), checked once
    resumed_from: dict[str, Any] | None = None

    def flush_samples(self, meter: Meter | None) -> None:
        """Store the power samples taken since the last flush: none is lost to a Ctrl-C."""
        if meter is not None and meter.available:
            self.store.record_samples(self.run_id, meter.drain(unix=True))

    def record(self, config: EnergyConfig, row: dict[str, Any]) -> None:
        """Store a configuration's row and say so."""
        _record(self.store, self.run_id, config, row)
        if self.progress.on_config:
            self.progress.on_config(config, row)

    def on_shards(
        self,
        shards: int,
        configs: list[EnergyConfig],
        backend_for: Callable[[int], Any],
        meter_for: Callable[[int], Meter | None] | None,
        notes: list[str],
    ) -> list[EnergyConfig]:
        """Run `configs` (all of `shards` shards) on one backend; returns those skipped."""
        settings, spec = self.settings, self.settings.spec
        backend = backend_for(shards)
        if not isinstance(backend, Generates):
            raise UserError(
                f"the {settings.backend_name} backend has no dataset generate(); "
                "use --backend engine"
            )
        try:
            if getattr(backend, "spec", None) != spec:
                backend.prepare(spec)
        except DoesNotFit as error:
            for config in configs:  # Table II: this many GPUs cannot hold the model
                self.record(
                    config, _infeasible(config, settings.workload.dataset, str(error)[:500]).row
                )
            if settings.close_backends:
                backend.close()
            return []
        meter = meter_for(shards) if meter_for else None
        if meter is not None and meter.note:
            notes.append(meter.note)
        info = {**self.options, **backend.describe()}
        if self.resumed_from is not None:
            problem = path_changed(self.resumed_from, info)
            self.resumed_from = None
            if problem:
                if settings.close_backends:
                    backend.close()
                raise ResumeRefused(problem)
        if meter is not None and meter.available:
            self._start_meter(meter, backend, configs[0], info)
        self.store.update_run_backend(self.run_id, info)
        try:
            return self._by_cap(shards, configs, backend, meter)
        finally:
            # The samples of a batch stored just before a Ctrl-C; never mask its error.
            with contextlib.suppress(sqlite3.Error):
                self.flush_samples(meter)
            if meter is not None:
                meter.stop()
            if settings.close_backends:
                backend.close()

    def _start_meter(
        self, meter: Meter, backend: Any, first: EnergyConfig, info: dict[str, Any]
    ) -> None:
        """Idle power on the meter's first use (and the thermal warm-up), then sampling."""
        settings = self.settings
        first_use = meter.idle_w is None
        if first_use:
            meter.measure_idle(settings.idle_s)
        meter.start()
        info.update(idle_w=meter.idle_w, power_field=meter.power_field_used, meter=meter.describe())
        if first_use and settings.warmup_s > 0:
            if self.progress.on_note:
                self.progress.on_note(
                    f"warming the GPU up for {settings.warmup_s:g} s on {first.key}, "
                    "unrecorded, so energy is measured at working temperature "
                    "(--warmup-s 0 skips it)"
                )
            info["thermal_warmup"] = _warm_up(
                backend, settings.spec, first, self.ids, settings.tokenizer, self.stops, meter,
                settings.warmup_s, settings.seed,
            )  # fmt: skip

    def _by_cap(
        self, shards: int, configs: list[EnergyConfig], backend: Any, meter: Meter | None
    ) -> list[EnergyConfig]:
        """Run `configs` power cap by power cap; returns those `stop_when` skipped."""
        settings, progress = self.settings, self.progress
        stop_when, skipped = settings.stop_when, []

        def batch_done(result: BatchResult) -> None:
            self.flush_samples(meter)
            if progress.on_batch:
                progress.on_batch(result)

        for watts, by_cap in groupby(configs, key=lambda c: c.power_cap_w):
            pending = list(by_cap)
            if stop_when and stop_when():
                skipped += pending
                continue
            capped = settings.gpus_for(shards) if settings.gpus_for else meter.refs if meter else []
            with _power_cap(watts, capped, settings.power_nvml, progress.on_note) as cap:
                for n, config in enumerate(pending):
                    if stop_when and stop_when():
                        skipped += pending[n:]
                        break
                    outcome = run_config(
                        backend, settings.spec, config, self.ids, settings.tokenizer, self.stops,
                        store=self.store, run_id=self.run_id, dataset=settings.workload.dataset,
                        seed=settings.seed, meter=meter, on_batch=batch_done, cap=cap,
                    )  # fmt: skip
                    _record(self.store, self.run_id, config, outcome.row)
                    self.flush_samples(meter)
                    if progress.on_config:
                        progress.on_config(config, outcome.row)
        return skipped


def run_energy(
    store: Store,
    spec: ModelSpec,
    workload: Workload,
    tokenizer: Tokenizer,
    sweep: EnergySweep,
    backend_for: Callable[[int], Any],
    *,
    backend_name: str = "engine",
    backend_options: dict[str, Any] | None = None,
    meter_for: Callable[[int], Meter | None] | None = None,
    gpus_for: Callable[[int], Sequence[int | GpuRef]] | None = None,
    power_nvml: Any = None,
    stop_tokens: Sequence[int] | None = None,
    device: str = "",
    seed: int = 0,
    idle_s: float = 1.0,
    warmup_s: float = 0.0,
    close_backends: bool = True,
    on_start: Callable[[RunRecord, list[EnergyConfig], int], None] | None = None,
    on_batch: Callable[[BatchResult], None] | None = None,
    on_config: Callable[[EnergyConfig, dict[str, Any]], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    stop_when: Callable[[], bool] | None = None,
) -> EnergyRun:
    """Run every configuration of `sweep` not yet stored for this workload; see the module doc.

    `backend_for(shards)` gives a backend with a dataset `generate` (prepared here unless it
    already holds `spec`); `meter_for(shards)` a Meter over those GPUs, or None. Power caps in
    the sweep are set through `power_nvml` (default: the real NVML) on `gpus_for(shards)`
    (default: the meter's GPUs, as infermeter.measure.gpus resolved them).
    A meter's idle power is measured once, over `idle_s`, before its first configuration;
    then, with `warmup_s`, the first configuration's first batch runs back to back for that
    long, unrecorded, so that energy is measured on a card at working temperature.
    Returns the run, its energy_configs rows, notes and the configurations `stop_when` left
    unrun; raises as EnergyExperiment.run says.
    """
    settings = EnergySettings(
        spec, workload, tokenizer, sweep, backend_name, backend_options, gpus_for, power_nvml,
        stop_tokens, device, seed, idle_s, warmup_s, close_backends, stop_when,
    )  # fmt: skip
    experiment = EnergyExperiment()
    progress = EnergyProgress(on_start, on_batch, on_config, on_note)
    run = experiment.run(store, backend_for, settings, meter_for, progress)
    return EnergyRun(run, energy_configs(store, run.id), experiment.notes, experiment.skipped)


def summary(configs: pd.DataFrame) -> pd.DataFrame:
    """The paper's per-configuration figures, rounded for a table."""
    columns = {
        "dataset": "dataset",
        "batch": "batch",
        "max_len": "max len",
        "shards": "shards",
        "power_cap_w": "cap W",
        "tokens_per_s": "tokens/s",
        "words_per_s": "words/s",
        "responses_per_s": "responses/s",
        "watts": "W",
        "j_per_token": "J/token",
        "j_per_response": "J/response",
        "sm_util": "SM %",
        "mem_util": "mem %",
        "peak_mem_gb": "peak GB",
        "status": "status",
    }
    table = configs[list(columns)].copy()
    for column in columns:
        if column not in ("dataset", "status"):  # None (not measured) shows as "-"
            table[column] = pd.to_numeric(table[column], errors="coerce")
    return table.rename(columns=columns)


def config_problems(configs: pd.DataFrame) -> list[str]:
    """A line for each configuration (energy_configs rows) not ok: its status and why."""
    return [
        f"{row.status}: batch {row.batch}, max len {row.max_len}: {row.detail}"
        for row in configs[configs.status != "ok"].itertuples(index=False)
    ]


@dataclass
class StoredEnergy:
    """What `show` prints of a stored energy run: a line of what it stored, the title and
    table of its configurations' figures (summary, with the batches each stored of those it
    runs), and a line for each configuration not ok or not finished."""

    line: str
    title: str
    table: pd.DataFrame
    problems: list[str]


def stored_energy_run(store: Store, record: RunRecord) -> StoredEnergy | None:
    """The configurations and batches energy run `record` stored, as `show` prints them; None
    if it stored none."""
    configs = energy_configs(store, record.id)
    batches = stored_energy.energy_batches(store, record.id)
    if configs.empty and batches.empty:
        return None
    workload = record.grid.get("workload") or {}
    prompts = int(workload.get("prompts") or 0)
    per_config = batches.groupby("config_key").size()

    def stored_of(config: EnergyConfig) -> str:
        return f"{int(per_config.get(config.key, 0))}/{batches_of(prompts, config.batch)}"

    table = summary(configs)
    done = [EnergyConfig(int(r.batch), int(r.max_len), int(r.shards),
                         None if pd.isna(r.power_cap_w) else float(r.power_cap_w))
            for r in configs.itertuples(index=False)]  # fmt: skip
    table.insert(table.columns.get_loc("status"), "batches", [stored_of(c) for c in done])
    unfinished = [key for key in per_config.index if key not in {c.key for c in done}]
    problems = config_problems(configs)
    for key in unfinished:
        config = EnergyConfig.from_key(str(key))
        stored = stored_of(config) if config else str(int(per_config[key]))
        problems.append(f"{key}: {stored} batches stored, not finished; rerun the same "
                        "command to resume it")  # fmt: skip
    counts = configs.status.value_counts()
    line = f"{plural(len(configs), 'configuration')} stored"
    if len(configs):
        statuses = sorted(counts.index, key=lambda status: (status != "ok", status))
        line += f" ({', '.join(f'{counts[status]} {status}' for status in statuses)})"
    line += f", {plural(len(batches), 'batch')}"
    if unfinished:
        line += f"; {len(unfinished)} not finished"
    dataset = workload.get("dataset")
    title = f"{record.model} on {dataset}: {plural(prompts, 'prompt')} per configuration"
    return StoredEnergy(line, title, table, problems)


def batches_of(n: int, batch: int) -> int:
    """Batches of `batch` prompts that `n` prompts make (the last one may be short)."""
    return math.ceil(n / batch)
