"""The Words-to-Watts experiment end to end: tiny-llama on the real engine (CPU), GSM8K prompts
from ../shared/data, the Meter on a fake NVML; infeasible configurations, resume, power caps."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from fake_nvml import FakeClock, FakeGpu, FakeNvml
from infermeter.backends.engine import EngineBackend
from infermeter.experiments.energy import EnergySweep, attribute, run_energy
from infermeter.measure.meter import Meter
from infermeter.spec.catalog import get_spec
from infermeter.store.db import Store
from infermeter.store.energy import (
    BATCH_COLUMNS,
    CONFIG_COLUMNS,
    energy_batches,
    energy_configs,
    energy_responses,
)
from infermeter.workloads.datasets import Workload, load_workload
from infermeter.workloads.tokenizer import tokenizer_for
from paths import SHARED_DATA
from store_rows import wait_for_rows

SHARED_GSM8K = SHARED_DATA / "gsm8k_test.jsonl"
GSM8K = str(SHARED_GSM8K) if SHARED_GSM8K.is_file() else "gsm8k-test"  # else the bundled copy
SPEC = get_spec("tiny-llama")
STOPS = tuple(range(0, 256, 16))  # random weights: some responses stop early, some do not
WATTS = 300.0


class RecordingNvml(FakeNvml):
    """A fake NVML that notes every power-limit call, to prove none happens unasked."""

    def __init__(self, gpus: list[FakeGpu], clock: FakeClock | None = None) -> None:
        super().__init__(gpus, clock=clock)
        self.power_calls: list[str] = []

    def nvmlDeviceGetPowerManagementLimit(self, gpu: FakeGpu) -> int:
        self.power_calls.append("get_limit")
        return super().nvmlDeviceGetPowerManagementLimit(gpu)

    def nvmlDeviceGetPowerManagementLimitConstraints(self, gpu: FakeGpu) -> tuple[int, int]:
        self.power_calls.append("get_constraints")
        return super().nvmlDeviceGetPowerManagementLimitConstraints(gpu)

    def nvmlDeviceSetPowerManagementLimit(self, gpu: FakeGpu, limit_mw: int) -> None:
        self.power_calls.append(f"set {limit_mw}")
        super().nvmlDeviceSetPowerManagementLimit(gpu, limit_mw)


class Engine(EngineBackend):
    """The real engine on the CPU; batches above `fits` run out of memory like a full GPU;
    `crash_at` makes the n-th generate fail the way a dead worker rank does."""

    def __init__(
        self, fits: int = 10**6, crash_at: int | None = None, clock: FakeClock | None = None
    ) -> None:
        super().__init__(device="cpu", sampling="top_p")
        self.fits, self.crash_at, self.clock = fits, crash_at, clock
        self.batches: list[int] = []

    def generate(self, prompts: list[list[int]], *args: Any, **kwargs: Any) -> Any:
        self.batches.append(len(prompts))
        if self.crash_at is not None and len(self.batches) >= self.crash_at:
            raise RuntimeError("engine rank(s) died during generate (exit codes {1: -9})")
        if len(prompts) > self.fits:
            raise torch.OutOfMemoryError(
                "CUDA out of memory. Tried to allocate 64.00 GiB (GPU 0; 79.10 GiB total)"
            )
        out = super().generate(prompts, *args, **kwargs)
        if self.clock is not None:  # a batch takes 0.25 s of the fake clock
            self.clock.advance(0.25)
        return out


@pytest.fixture(scope="module")
def workload() -> Workload:
    return load_workload(GSM8K, 10, seed=1)


def experiment(
    store: Store,
    workload: Workload,
    sweep: EnergySweep,
    backend: Engine,
    nvml: FakeNvml | None = None,
    clock: FakeClock | None = None,
) -> Any:
    """The sweep on `backend`, metered on `nvml` (a steady 300 W GPU by default). With a
    `clock` (shared with nvml and the backend) the windows are timed on it, not the real one."""
    nvml = nvml or RecordingNvml([FakeGpu(power=lambda t: WATTS)], clock=clock)
    meter_for: Callable[[int], Meter] = lambda tp: Meter(interval_s=0.01, nvml=nvml, clock=clock)  # noqa: E731
    tok, _ = tokenizer_for(SPEC)
    return run_energy(
        store, SPEC, workload, tok, sweep, lambda tp: backend, meter_for=meter_for,
        power_nvml=nvml, stop_tokens=STOPS, device="cpu (test)", idle_s=0.05,
        close_backends=False,
    )  # fmt: skip


def test_experiment_end_to_end(tmp_path: Path, workload: Workload) -> None:
    nvml = RecordingNvml([FakeGpu(power=lambda t: WATTS)])
    backend = Engine(fits=4)
    with Store(tmp_path / "s.sqlite") as store:
        result = experiment(store, workload, EnergySweep((4, 8), (8, 16)), backend, nvml)
        run_id = result.run.id
        configs = energy_configs(store, run_id)
        responses = energy_responses(store, run_id)
        batches = energy_batches(store, run_id)
        samples = store.samples(run_id)
        with store.transaction() as db:
            columns = [row[1] for row in db.execute("PRAGMA table_info(energy_configs)")]
    assert columns == CONFIG_COLUMNS  # the report reads these exact columns
    assert result.run.status == "complete" and not result.skipped
    # No --power-limit: no limit changed; each batch records the one NVML reports.
    assert not [call for call in nvml.power_calls if call.startswith("set")]
    assert batches.power_limit_w.eq(700.0).all()
    # Batch 8 does not fit: stored as infeasible with the reason; the sweep went on.
    bad = configs[configs.batch == 8]
    assert list(bad.status) == ["infeasible"] * 2 and bad.watts.isna().all()
    assert bad.detail.str.contains("out of memory at batch 8").all()
    ok = configs[configs.status == "ok"]
    assert list(ok.max_len) == [8, 16] and (ok.dataset == workload.dataset).all()
    for row in ok.itertuples(index=False):
        key = f"b4-l{row.max_len}-s1-nocap"
        mine, windows = responses[responses.config_key == key], batches[batches.config_key == key]
        assert len(mine) == len(workload) and list(mine.prompt_index) == list(range(10))
        assert len(windows) == 3 and (windows.method == "counter").all()
        # Per-response energies add up to their batch windows, and those to the total.
        per_batch = mine.groupby("batch_index").energy_j.sum()
        assert per_batch.to_numpy() == pytest.approx(windows.energy_j.to_numpy(), rel=1e-9)
        assert (
            mine.batch_window_j == mine.batch_index.map(windows.set_index("batch_index").energy_j)
        ).all()
        total = windows.energy_j.sum()
        assert row.j_per_response * len(mine) == pytest.approx(total, rel=1e-9)
        assert row.j_per_token * mine.output_tokens.sum() == pytest.approx(total, rel=1e-9)
        assert row.watts == pytest.approx(WATTS, rel=0.05)  # steady 300 W fake GPU
        # Rates share one clock: their ratios are the per-response averages.
        assert row.tokens_per_s / row.responses_per_s == pytest.approx(mine.output_tokens.mean())
        ratio = mine.words.sum() / mine.output_tokens.sum()
        assert row.words_per_s / row.tokens_per_s == pytest.approx(ratio)
        assert row.tokens_per_s == pytest.approx(mine.output_tokens.sum() / windows.runtime_s.sum())
        assert (row.sm_util, row.mem_util, row.peak_mem_gb) == (90.0, 40.0, 20.0)
        assert (mine.output_tokens <= row.max_len).all()
    # A response's share is its token count: uneven lengths, uneven energies.
    assert responses.output_tokens.nunique() > 1
    shares = responses.energy_j / responses.batch_window_j
    batch_tokens = responses.groupby(["config_key", "batch_index"]).output_tokens.transform("sum")
    assert shares.to_numpy() == pytest.approx((responses.output_tokens / batch_tokens).to_numpy())
    assert not samples.empty and samples.power_w.eq(WATTS).all()


def test_rerun_resumes_and_extends(tmp_path: Path, workload: Workload) -> None:
    with Store(tmp_path / "s.sqlite") as store:
        first = experiment(store, workload, EnergySweep((4, 8), (8,)), Engine(fits=4))
        again = Engine()
        second = experiment(store, workload, EnergySweep((4, 8), (8,)), again)
        assert again.batches == [] and second.run.id == first.run.id
        pd.testing.assert_frame_equal(first.configs, second.configs)
        wider = Engine()
        third = experiment(store, workload, EnergySweep((4, 8, 5), (8,)), wider)
        assert set(wider.batches) == {5} and third.run.id == first.run.id
        assert list(third.configs.sort_values("batch").batch) == [4, 5, 8]
        # Another workload is another run.
        other = experiment(
            store, load_workload(GSM8K, 4, seed=2), EnergySweep((4,), (8,)), Engine()
        )
        assert other.run.id != first.run.id


def test_power_caps_are_set_per_configuration_and_restored(
    tmp_path: Path, workload: Workload
) -> None:
    small = load_workload(GSM8K, 4, seed=0)
    nvml = RecordingNvml([FakeGpu(power=lambda t: WATTS)])
    sweep = EnergySweep((4,), (8,), power_limits=(250.0, 200.0))
    with Store(tmp_path / "s.sqlite") as store:
        result = experiment(store, small, sweep, Engine(), nvml)
        batches = energy_batches(store, result.run.id)
    assert list(result.configs.power_cap_w) == [200.0, 250.0]
    assert nvml.gpus[0].limit_history == [250_000, 700_000, 200_000, 700_000]
    # Each batch records the limit NVML reported while it ran.
    caps = batches.config_key.str.extract(r"cap(\d+)")[0].astype(float)
    assert (batches.power_limit_w == caps).all()
    # A worker rank dies mid-run: the limit goes back and the error reaches the caller.
    nvml = RecordingNvml([FakeGpu(power=lambda t: WATTS)])
    with Store(tmp_path / "t.sqlite") as store:
        with pytest.raises(RuntimeError, match="rank"):
            experiment(store, small, sweep, Engine(crash_at=1), nvml)
        assert store.runs().status.tolist() == ["interrupted"]
    assert nvml.gpus[0].limit_mw == 700_000 and nvml.gpus[0].limit_history == [250_000, 700_000]


class ChangingLimit(Engine):
    """The real engine; after its `at`-th batch something outside the run sets the GPU's
    power limit back to 700 W (an administrator, another tool)."""

    def __init__(self, nvml: FakeNvml, at: int) -> None:
        super().__init__()
        self.nvml, self.at = nvml, at

    def generate(self, prompts: list[list[int]], *args: Any, **kwargs: Any) -> Any:
        out = super().generate(prompts, *args, **kwargs)
        if len(self.batches) == self.at:
            self.nvml.gpus[2].limit_mw = 700_000
        return out


def test_caps_go_to_the_run_gpus_only_and_a_lost_cap_stops_the_sweep(
    tmp_path: Path, workload: Workload
) -> None:
    """A run on the GPU picked by UUID (2 of 4) caps that GPU and no other; when its limit is
    changed from outside mid-configuration, the batch that ran then is not stored and the
    sweep stops with one line, the cap put back."""
    from fake_nvml import fake_uuid
    from infermeter.experiments.energy import PowerCapLost
    from infermeter.measure.gpus import resolve_gpus

    nvml = FakeNvml([FakeGpu(power=lambda t: WATTS) for _ in range(4)])
    env = {"CUDA_VISIBLE_DEVICES": f"{fake_uuid(2)},{fake_uuid(0)}"}
    refs = resolve_gpus("cuda", 1, nvml, environ=env, cuda_uuid=None)
    tok, _ = tokenizer_for(SPEC)
    backend = ChangingLimit(nvml, at=2)
    sweep = EnergySweep((4,), (8,), power_limits=(250.0,))
    with Store(tmp_path / "s.sqlite") as store:
        with pytest.raises(PowerCapLost, match=r"700 W, not the 250 W.*batch 1 not stored"):
            run_energy(
                store, SPEC, workload, tok, sweep, lambda tp: backend,
                meter_for=lambda tp: Meter(refs, interval_s=0.01, nvml=nvml), power_nvml=nvml,
                stop_tokens=STOPS, idle_s=0.05, close_backends=False,
            )  # fmt: skip
        batches = energy_batches(store)
    assert list(batches.batch_index) == [0] and list(batches.power_limit_w) == [250.0]
    assert [len(g.limit_history) for g in nvml.gpus] == [0, 0, 2, 0]
    assert nvml.gpus[2].limit_history == [250_000, 700_000]


def test_without_nvml_throughput_is_kept_and_energy_left_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import infermeter.measure.meter as meter_module

    monkeypatch.setattr(meter_module, "load_nvml", lambda: (None, "NVML unavailable (test)"))
    tok, _ = tokenizer_for(SPEC)
    with Store(tmp_path / "s.sqlite") as store:
        result = run_energy(
            store, SPEC, load_workload(GSM8K, 4), tok, EnergySweep((2,), (4,)), lambda tp: Engine(),
            meter_for=lambda tp: Meter(),
        )  # fmt: skip
        responses = energy_responses(store, result.run.id)
    row = result.configs.iloc[0]
    assert row.status == "ok" and row.tokens_per_s > 0 and row.responses_per_s > 0
    assert pd.isna(row.watts) and pd.isna(row.j_per_token) and responses.energy_j.isna().all()
    assert "NVML unavailable (test)" in result.notes


@given(
    window=st.floats(0, 1e6, allow_nan=False),
    tokens=st.lists(st.integers(1, 4096), min_size=1, max_size=64),
)
def test_attribution_splits_a_window_by_tokens(window: float, tokens: list[int]) -> None:
    shares = attribute(window, tokens)
    assert sum(shares) == pytest.approx(window, rel=1e-9, abs=1e-9)  # type: ignore[arg-type]
    assert all(s is not None and s >= 0 for s in shares)
    longest = tokens.index(max(tokens))
    assert shares[longest] == max(shares)  # type: ignore[type-var]
    assert attribute(None, tokens) == [None] * len(tokens)


def test_cli_energy_on_cpu(tmp_path: Path) -> None:
    from infermeter.cli.main import app

    runner = CliRunner()
    store = tmp_path / "cli.sqlite"
    args = ["energy", "tiny-llama", "--dataset", GSM8K, "--prompts", "4", "--batch-sizes", "2"]
    args += ["--max-lengths", "4", "--device", "cpu", "--store", str(store)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "tokens/s" in result.output and "energy columns stay empty" in result.output
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and "1/1 configuration stored" in again.output
    refused = runner.invoke(app, [*args, "--power-limit", "250"])
    assert refused.exit_code == 2 and "nothing was changed" in refused.output
    bad = runner.invoke(app, [*args[:-2], "--store", str(store), "--max-lengths", "512"])
    assert bad.exit_code == 2 and "leaves no room for a prompt" in bad.output
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # put back after each command


def test_a_batch_larger_than_the_workload_says_it_ran_smaller(tmp_path: Path) -> None:
    small = load_workload(GSM8K, 3, seed=1)
    with Store(tmp_path / "s.sqlite") as store:
        result = experiment(store, small, EnergySweep((2, 8), (8,)), Engine())
        configs = energy_configs(store, result.run.id).set_index("batch")
    assert "only 3 prompts, so batch 8 ran as one batch of 3" in configs.detail[8]
    assert "only 3 prompts" not in configs.detail[2]


class FailingAt(Engine):
    """The real engine, whose `at`-th generate raises `error` (a Ctrl-C by default)."""

    def __init__(self, at: int, error: BaseException | None = None) -> None:
        super().__init__()
        self.at, self.error = at, error or KeyboardInterrupt()

    def generate(self, prompts: list[list[int]], *args: Any, **kwargs: Any) -> Any:
        if len(self.batches) + 1 == self.at:
            self.batches.append(len(prompts))
            raise self.error
        return super().generate(prompts, *args, **kwargs)


def test_an_interrupted_configuration_resumes_at_its_next_batch(
    tmp_path: Path, workload: Workload
) -> None:
    """Ctrl-C in the third batch keeps the first two (responses, windows, power samples); the
    rerun runs only the rest, with the same seeds, and the row counts every batch once."""
    sweep = EnergySweep((4,), (8,))
    with Store(tmp_path / "whole.sqlite") as store:
        whole = experiment(store, workload, sweep, Engine())
        whole_responses = energy_responses(store, whole.run.id)
    with Store(tmp_path / "s.sqlite") as store:
        with pytest.raises(KeyboardInterrupt):
            experiment(store, workload, sweep, FailingAt(3))
        run_id = int(store.runs().id.iloc[0])
        assert store.runs().status.tolist() == ["interrupted"]
        assert energy_configs(store, run_id).empty
        assert sorted(energy_batches(store, run_id).batch_index) == [0, 1]
        assert len(energy_responses(store, run_id)) == 8
        assert not store.samples(run_id).empty  # flushed batch by batch, not at the end
        rest = Engine()
        resumed = experiment(store, workload, sweep, rest)
        responses = energy_responses(store, run_id)
        batches = energy_batches(store, run_id)
    assert rest.batches == [2] and resumed.run.id == run_id
    assert resumed.run.status == "complete"
    assert sorted(batches.batch_index) == [0, 1, 2]
    assert list(responses.prompt_index) == list(range(10))
    # Sampling seeds follow the batch index: the resumed configuration's outputs are the same.
    assert list(responses.output_tokens) == list(whole_responses.output_tokens)
    row = resumed.configs.iloc[0]
    assert row.status == "ok" and "resumed: 2 of the batches" in row.detail
    assert row.j_per_response * 10 == pytest.approx(batches.energy_j.sum(), rel=1e-9)
    assert row.tokens_per_s == pytest.approx(
        responses.output_tokens.sum() / batches.runtime_s.sum()
    )
    # Words and tokens of all three batches, as in the run never interrupted.
    first = whole.configs.iloc[0]
    assert row.words_per_s / row.tokens_per_s == pytest.approx(
        first.words_per_s / first.tokens_per_s
    )
    assert row.responses_per_s / row.tokens_per_s == pytest.approx(
        first.responses_per_s / first.tokens_per_s
    )


def test_out_of_memory_on_a_later_batch_keeps_the_batches_before(
    tmp_path: Path, workload: Workload
) -> None:
    oom = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
    with Store(tmp_path / "s.sqlite") as store:
        result = experiment(store, workload, EnergySweep((4,), (8,)), FailingAt(3, oom))
        row = result.configs.iloc[0]
        assert row.status == "infeasible" and "out of memory at batch 4" in row.detail
        assert sorted(energy_batches(store, result.run.id).batch_index) == [0, 1]  # measured
        again = Engine()
        experiment(store, workload, EnergySweep((4,), (8,)), again)
        assert again.batches == []  # infeasible is an answer: not run again


def test_a_configuration_resumed_without_a_meter_leaves_energy_empty(
    tmp_path: Path, workload: Workload
) -> None:
    """Joules of some batches must not be spread over the tokens of all."""
    tok, _ = tokenizer_for(SPEC)
    sweep = EnergySweep((4,), (8,))
    with Store(tmp_path / "s.sqlite") as store:
        with pytest.raises(KeyboardInterrupt):
            experiment(store, workload, sweep, FailingAt(2))
        result = run_energy(
            store, SPEC, workload, tok, sweep, lambda tp: Engine(), meter_for=lambda tp: None,
            stop_tokens=STOPS, device="cpu (test)", close_backends=False,
        )  # fmt: skip
        batches = energy_batches(store, result.run.id)
    row = result.configs.iloc[0]
    assert batches.sort_values("batch_index").energy_j.notna().tolist() == [True, False, False]
    assert row.status == "ok" and row.tokens_per_s > 0
    assert pd.isna(row.watts) and pd.isna(row.j_per_token) and pd.isna(row.j_per_response)
    assert "2 batch(es) ran without an energy reading" in row.detail


def test_the_same_workload_on_another_gpu_is_another_run(
    tmp_path: Path, workload: Workload
) -> None:
    tok, _ = tokenizer_for(SPEC)
    with Store(tmp_path / "s.sqlite") as store:
        runs = [
            run_energy(
                store, SPEC, workload, tok, EnergySweep((4,), (8,)), lambda tp: Engine(),
                stop_tokens=STOPS, device=device, close_backends=False,
            ).run.id
            for device in ("NVIDIA H100 80GB HBM3", "NVIDIA H200", "NVIDIA H200")
        ]  # fmt: skip
    assert runs[0] != runs[1] and runs[1] == runs[2]


def test_a_store_from_before_batch_peaks_gains_the_column(tmp_path: Path) -> None:
    """A store whose energy_batches predates the peak and limit columns (schema 2, before
    user_version) gains them, its rows kept, when opened: migration 5."""
    path = tmp_path / "old.sqlite"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE energy_batches")
        db.execute(f"CREATE TABLE energy_batches ({', '.join(BATCH_COLUMNS[:-2])})")
        db.execute(f"INSERT INTO energy_batches VALUES ({','.join('?' * 14)})", [1] * 14)
        db.execute("PRAGMA user_version = 0")
        db.execute("UPDATE meta SET value = '2' WHERE key = 'schema_version'")
    db.close()
    Store(path).close()
    with sqlite3.connect(path) as db:
        columns = [row[1] for row in db.execute("PRAGMA table_info(energy_batches)")]
        rows = db.execute("SELECT peak_mem_gb, power_limit_w, run_id FROM energy_batches")
        rows = rows.fetchall()
    assert columns == BATCH_COLUMNS and rows == [(None, None, 1)]


def test_cli_energy_stopped_by_sigterm_resumes_at_its_next_batch(tmp_path: Path) -> None:
    """`infermeter energy` in a process of its own, stopped with SIGTERM (as `timeout` or a
    scheduler does) mid-configuration: it says so, exits 143, keeps its batches; the same
    command resumes at the next batch and ends with every prompt answered once."""
    store = tmp_path / "e.sqlite"
    cmd = [sys.executable, "-m", "infermeter", "energy", "tiny-llama", "--dataset", GSM8K]
    cmd += ["--prompts", "240", "--batch-sizes", "2", "--max-lengths", "16", "--device", "cpu"]
    cmd += ["--store", str(store)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    wait_for_rows(store, "energy_batches", 3, lambda: proc.poll() is None)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err.decode()
    assert "terminated:" in err.decode() and "Traceback" not in err.decode()
    with Store(store) as db:
        assert db.runs().status.tolist() == ["interrupted"]
        kept = energy_batches(db).batch_index.tolist()
    assert 3 <= len(kept) < 120, "the signal must land halfway through the configuration"
    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr
    assert f"resuming b2-l16-s1-nocap: {len(kept)}/120 batches stored" in again.stdout
    with Store(store) as db:
        responses = energy_responses(db, int(db.runs().id.iloc[0]))
        assert db.runs().status.tolist() == ["complete"]
        assert sorted(energy_batches(db).batch_index) == list(range(120))
    assert sorted(responses.prompt_index) == list(range(240))


def test_a_metered_sweep_warms_the_gpu_up_once_unrecorded(
    tmp_path: Path, workload: Workload
) -> None:
    """--warmup-s: the first configuration's first batch runs back to back before anything
    is measured; the record shows how far the card's power drifted; nothing is stored of it."""
    seen: list[float] = []

    def heating(t: float) -> float:  # a card warming up: 200 W rising 20 W/s
        seen.append(t)
        return 200.0 + 20.0 * (t - seen[0])

    clock = FakeClock()
    meter = Meter(
        interval_s=0.005, nvml=FakeNvml([FakeGpu(power=heating)], clock=clock), clock=clock
    )
    tok, _ = tokenizer_for(SPEC)
    backend, notes = Engine(clock=clock), []
    with Store(tmp_path / "s.sqlite") as store:
        result = run_energy(
            store, SPEC, workload, tok, EnergySweep((4, 8), (8,)), lambda tp: backend,
            meter_for=lambda tp: meter, stop_tokens=STOPS, device="cpu (test)", idle_s=0.05,
            warmup_s=2.5, close_backends=False, on_note=notes.append,
        )  # fmt: skip
        batches = energy_batches(store, result.run.id)
    warm = result.run.backend_info["thermal_warmup"]
    assert warm["seconds"] >= 2.5 and warm["queries"] >= 1 and warm["config"] == "b4-l8-s1-nocap"
    assert warm["last_2s_w"] - warm["first_2s_w"] == pytest.approx(10.0, rel=0.3)
    assert len(backend.batches) == warm["queries"] + 3 + 2  # warm-up, then 3 + 2 batches
    assert len(batches) == 5 and any("warming the GPU up for 2.5 s" in n for n in notes)
    # The card is warm before the first measured window: above the warm-up's first 2 s.
    assert batches.sort_values("start_unix").energy_j.iloc[0] > 0
    assert result.configs.watts.min() > warm["first_2s_w"]


def test_a_warm_up_batch_that_does_not_fit_is_left_to_the_sweep(
    tmp_path: Path, workload: Workload
) -> None:
    meter = Meter(interval_s=0.01, nvml=FakeNvml([FakeGpu(power=lambda t: WATTS)]))
    tok, _ = tokenizer_for(SPEC)
    with Store(tmp_path / "s.sqlite") as store:
        result = run_energy(
            store, SPEC, workload, tok, EnergySweep((8, 4), (8,)), lambda tp: Engine(fits=4),
            meter_for=lambda tp: meter, stop_tokens=STOPS, idle_s=0.05, warmup_s=0.2,
        )  # fmt: skip
    assert "out of memory on b8-l8-s1-nocap" in result.run.backend_info["thermal_warmup"]["skipped"]
    assert result.configs.set_index("batch").status.to_dict() == {4: "ok", 8: "infeasible"}


def test_a_negative_warm_up_is_refused_before_anything_starts(tmp_path: Path) -> None:
    from infermeter.cli.main import app

    store = tmp_path / "w.sqlite"
    args = ["energy", "tiny-llama", "--prompts", "4", "--batch-sizes", "2", "--max-lengths", "4"]
    result = CliRunner().invoke(
        app, [*args, "--device", "cpu", "--warmup-s", "-1", "--store", str(store)]
    )
    assert result.exit_code == 2 and "--warmup-s must be 0 or more seconds" in result.output
    assert not store.exists()


def test_a_gpu_without_power_or_utilisation_readings_still_runs_the_sweep(
    tmp_path: Path, workload: Workload
) -> None:
    """Counter only (nvmlDeviceGetPowerUsage and utilisation NotSupported): joules and W
    as before, utilisation and the power timeline left empty, nothing raised."""
    gpu = FakeGpu(power=lambda t: WATTS, has_power=False, has_instant_field=False)
    gpu.has_utilization = False
    # One fake clock for the counter, the windows and the engine: watts are then exact, where
    # a real clock read apart from the counter put 6% into a short window on a busy machine.
    clock = FakeClock()
    with Store(tmp_path / "s.sqlite") as store:
        result = experiment(
            store, workload, EnergySweep((4,), (8,)), Engine(clock=clock),
            FakeNvml([gpu], clock=clock), clock=clock,
        )  # fmt: skip
        batches = energy_batches(store, result.run.id)
        samples = store.samples(result.run.id)
    row = result.configs.iloc[0]
    assert row.status == "ok" and row.watts == pytest.approx(WATTS, rel=0.05)
    assert pd.isna(row.sm_util) and samples.empty and (batches.method == "counter").all()
    assert result.run.backend_info["meter"]["energy_method"] == "counter"


def test_show_summarises_a_stored_energy_run(tmp_path: Path, workload: Workload) -> None:
    # A user review: `show` said "no points stored yet" of an energy run that had stored its
    # configurations and batches (they are in the energy tables, not the points).
    from cli_runner import invoke

    store = tmp_path / "s.sqlite"
    with Store(store) as db:  # batch 8 does not fit: infeasible, the sweep goes on
        run_id = experiment(db, workload, EnergySweep((4, 8), (8,)), Engine(fits=4)).run.id
    with Store(store) as db, pytest.raises(KeyboardInterrupt):  # a Ctrl-C in its 2nd batch
        experiment(db, workload, EnergySweep((4,), (16,)), FailingAt(2))
    shown = invoke("show", str(run_id), "--store", store)
    assert shown.exit_code == 0, shown.output
    text = shown.stdout
    assert "no points stored yet" not in text
    assert "2 configurations stored (1 ok, 1 infeasible), 4 batches" in text, text
    assert f"tiny-llama on {workload.dataset}: 10 prompts per configuration" in text
    assert "J/token" in text and "3/3" in text  # the figures and each one's batches
    assert "infeasible: batch 8, max len 8: out of memory at batch 8" in text
    assert "b4-l16-s1-nocap: 1/3 batches stored, not finished" in text
