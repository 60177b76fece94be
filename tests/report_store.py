"""A small real store for the report tests, made the way a user makes one.

Real CPU profiles of tiny catalog models on the engine and hf backends (run_profile), one
of them metered through the real Meter on a fake NVML (power timelines and joules), an API
run (backend "openai") whose points are recorded through Store.record_point as that backend
would record them, and energy_configs rows as the energy experiment will store them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fake_nvml import FakeGpu, FakeNvml
from infermeter.backends import get_backend
from infermeter.backends.base import Measurement
from infermeter.experiments.profile import ProfileGrid, run_profile
from infermeter.measure.meter import Meter
from infermeter.spec.catalog import get_spec
from infermeter.spec.hardware import Stack, get_accelerator
from infermeter.store.db import Store
from infermeter.store.energy import CONFIG_COLUMNS

GRID = ProfileGrid((1, 32, 64), (1, 4, 8), (1,), 2)
SCENARIOS = {"imdb": (48, 2), "boolq": (24, 3), "raft": (60, 6)}


def cpu_stack(backend: str) -> dict:
    return Stack(backend, get_accelerator("cpu"), dtype="float32").to_dict()


def profile(
    store: Store, model: str, backend: str, meter: Meter | None = None, validate: int = 0
) -> int:
    runner = get_backend(backend, device="cpu", dtype="float32")
    run = run_profile(
        store,
        get_spec(model),
        cpu_stack(backend),
        runner,
        {"device": "cpu", "dtype": "float32"},
        GRID,
        device="cpu: test machine",
        meter=meter,
        min_energy_window_s=0.02,
        validate=validate,
    )
    return run.id


def record_api_run(store: Store, model: str, seed: int = 0) -> int:
    """An API profile: t = overhead + 1.5 × a tiny model's time, plus non-negative noise."""
    spec = get_spec(model)
    run, _ = store.open_run(
        key=f"api-{model}",
        model=model,
        spec=spec.to_dict(),
        stack={"backend": "openai"},
        backend="openai",
        backend_info={"base_url": "http://127.0.0.1:1/v1"},
        grid=GRID.to_dict(),
        device="api: http://127.0.0.1:1/v1",
        commit_sha=None,
        version="test",
    )
    rng = np.random.default_rng(seed)
    for point in GRID.points():
        base = 0.02 + 0.0004 * point.prompt_tokens + 0.003 * (point.output_tokens - 1)
        runtime = base * (1 + rng.exponential(0.2))
        store.record_point(run.id, point, Measurement(runtime, output_tokens_actual=None))
    store.set_run_status(run.id, "complete")
    return run.id


def energy_rows() -> pd.DataFrame:
    """Per-configuration rows shaped like the energy experiment's (two datasets, sweeps)."""
    rows = []
    for dataset in ("alpaca", "gsm8k"):
        for max_len in (256, 512):
            for shards in (1, 2):
                for batch in (8, 16):
                    for cap in (250.0, 175.0):
                        slow = 1.0 if cap == 250 else 1.07
                        tokens = 900.0 * batch / 8 / shards**0.3 / slow
                        watts = 180.0 * shards * (cap / 250) ** 0.8
                        rows.append(
                            dict(
                                dataset=dataset, batch=batch, max_len=max_len, shards=shards,
                                power_cap_w=cap, tokens_per_s=tokens, words_per_s=tokens * 0.75,
                                responses_per_s=tokens / (max_len / 2), watts=watts,
                                j_per_token=watts / tokens,
                                j_per_response=watts / (tokens / (max_len / 2)),
                                sm_util=90.0 + shards, mem_util=20.0 + max_len / 100,
                                peak_mem_gb=10.0 * batch / 8, status="ok", detail=None,
                            )
                        )  # fmt: skip
    rows.append({**rows[0], "batch": 512, "status": "oom", "detail": "out of memory"})
    return pd.DataFrame(rows)


def add_energy_rows(store: Store, run_id: int, rows: pd.DataFrame) -> None:
    """Append configuration rows to run `run_id` as the experiment's table holds them (two
    datasets share configurations here, so rows are appended, not replaced by key)."""
    frame = rows.reindex(columns=CONFIG_COLUMNS).assign(run_id=run_id)
    records = [
        tuple(None if isinstance(v, float) and np.isnan(v) else v for v in row)
        for row in frame.itertuples(index=False)
    ]
    with store.transaction() as db:
        marks = ",".join("?" * len(CONFIG_COLUMNS))
        db.executemany(f"INSERT INTO energy_configs VALUES ({marks})", records)


def build_store(path: Path) -> Path:
    with Store(path) as store:
        profile(store, "tiny-llama", "engine", validate=2)
        profile(store, "tiny-gpt2", "engine")
        profile(store, "tiny-llama", "hf")
        meter = Meter(interval_s=0.005, nvml=FakeNvml([FakeGpu(power=lambda t: 250.0)]))
        metered = profile(store, "tiny-opt", "engine", meter=meter)
        record_api_run(store, "tiny-llama")
        add_energy_rows(store, metered, energy_rows())
    return path


def write_inputs(folder: Path) -> tuple[Path, list[str]]:
    """A capability table and per-instance scenario queries for the tiny models."""
    caps = pd.DataFrame(
        [
            (model, scenario, acc)
            for model, accs in {
                "tiny-llama": (0.91, 0.70, 0.62),
                "tiny-gpt2": (0.88, 0.66, 0.55),
                "tiny-opt": (0.93, 0.61, 0.57),
            }.items()
            for scenario, acc in zip(SCENARIOS, accs, strict=True)
        ],
        columns=["model", "scenario", "accuracy"],
    )
    capabilities = folder / "accuracy.csv"
    caps.to_csv(capabilities, index=False)
    sources = []
    rng = np.random.default_rng(1)
    for scenario, (p, o) in SCENARIOS.items():
        queries = pd.DataFrame(
            {
                "prompt_tokens": rng.integers(p // 2, p * 2, 20),
                "output_tokens": rng.integers(1, 2 * o, 20),
            }
        )
        path = folder / f"{scenario}.jsonl"
        queries.to_json(path, orient="records", lines=True)
        sources.append(f"{scenario}={path}")
    return capabilities, sources
