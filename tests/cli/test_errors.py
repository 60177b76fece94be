"""Errors typed once: one out-of-memory test for the engine, the hf backend and the energy
sweep; DoesNotFit for a model too large for its devices; releasing memory without hiding
failures."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from infermeter.backends.base import Point
from infermeter.backends.engine import EngineBackend
from infermeter.errors import DeviceOutOfMemory, DoesNotFit, UserError, is_oom
from infermeter.experiments.energy import EnergySweep, run_energy
from infermeter.spec.catalog import get_spec
from infermeter.store.db import Store
from infermeter.workloads.datasets import load_workload
from infermeter.workloads.tokenizer import tokenizer_for


def test_one_out_of_memory_test() -> None:
    cuda = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    cpu = RuntimeError(
        "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"
    )
    for error in (cuda, cpu, MemoryError(), DeviceOutOfMemory("engine rank 1: out of memory")):
        assert is_oom(error)
    try:
        try:
            raise cuda
        except torch.OutOfMemoryError as inner:
            raise RuntimeError("generate failed") from inner
    except RuntimeError as outer:
        assert is_oom(outer)  # through the chain
    for error in (RuntimeError("boom"), UserError("out of range"), ValueError("memory layout")):
        assert not is_oom(error)
    assert issubclass(DoesNotFit, UserError)  # one line and exit code 2 at the CLI


def test_a_model_too_large_for_its_shards_is_infeasible(tmp_path: Path) -> None:
    """check_weights_fit's DoesNotFit (LLaMA-65B with 800 layers, 2.6 TB in float32, in this
    host's memory) is the configuration's answer (Table II), without a model being built."""
    spec = replace(get_spec("llama-65b"), num_layers=800)
    tok, _ = tokenizer_for(spec)
    with Store(tmp_path / "s.sqlite") as store:
        result = run_energy(
            store, spec, load_workload("gsm8k", 2), tok, EnergySweep((2,), (4,)),
            lambda tp: EngineBackend(device="cpu", dtype="float32"), idle_s=0.0,
        )  # fmt: skip
    row = result.configs.iloc[0]
    assert row.status == "infeasible" and "GiB of weights" in row.detail


@pytest.mark.slow
def test_release_restarts_ranks_a_failure_stopped() -> None:
    """After a rank dies the group is stopped; release() starts it again (no exception
    swallowed on the way), and the next point runs."""
    backend = EngineBackend(device="cpu", tp=2, timeout_s=120)
    backend.prepare(get_spec("tiny-llama"))
    try:
        backend._ranks.procs[1].kill()
        with pytest.raises(RuntimeError, match="died"):
            backend.measure(Point(4, 2))
        backend.release()
        assert backend.measure(Point(4, 2)).status == "ok"
    finally:
        backend.close()


@pytest.mark.parametrize(
    ("verb", "resumable"), [("profile", True), ("energy", True), ("serve", False), ("show", False)]
)
def test_only_a_measuring_verb_says_stop_and_resume(
    verb: str, resumable: bool, capsys: pytest.CaptureFixture[str]
) -> None:
    """A fresh-eyes check: `serve` stopped by SIGTERM said "everything measured so far is
    stored; rerun the same command to resume", which a server never measures."""
    import typer

    from infermeter.cli.console import user_errors
    from infermeter.errors import Terminated

    def command() -> None:
        raise Terminated

    command.__name__ = verb
    with pytest.raises(typer.Exit) as stopped:
        user_errors(command)()
    assert stopped.value.exit_code == 143
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("terminated")
    assert ("rerun the same command to resume" in err) is resumable, err
