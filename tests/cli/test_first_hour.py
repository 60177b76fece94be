"""A newcomer's first hour (issue 18): the bare commands of the README do what they promise
on a CPU, with nothing measured against a clock (the work is counted instead)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from typer.testing import CliRunner

from infermeter.cli.main import app
from infermeter.experiments.plans import CPU_DEFAULTS


def test_energy_on_a_cpu_scales_its_default_sweep_down(tmp_path: Path) -> None:
    """`energy MODEL` with the paper's defaults sat at 0/224 batches for minutes on a CPU."""
    store = tmp_path / "e.sqlite"
    result = CliRunner().invoke(
        app, ["energy", "tiny-llama", "--device", "cpu", "--store", str(store)]
    )
    assert result.exit_code == 0, result.output
    assert "on a CPU the sweep is scaled down to 16 prompts" in result.output
    with sqlite3.connect(store) as db:
        configs = db.execute("SELECT batch, max_len FROM energy_configs").fetchall()
        answered = db.execute("SELECT count(DISTINCT prompt_index) FROM energy_responses")
        prompts = answered.fetchone()[0]
    batches = {int(b) for b in str(CPU_DEFAULTS["batch_sizes"]).split(",")}
    lengths = {int(n) for n in str(CPU_DEFAULTS["max_lengths"]).split(",")}
    assert set(configs) == {(b, n) for b in batches for n in lengths}
    assert prompts == CPU_DEFAULTS["prompts"]


def test_a_cpu_run_takes_the_cores_other_work_leaves(monkeypatch) -> None:
    """Two threads beside two busy processes on two cores ran 2.4x slower than one: a CPU run
    counts the tasks running beside it. Real busy processes; nothing timed."""
    import subprocess
    import sys

    from infermeter.measure.cpu import cpu_threads, running_elsewhere

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    busy = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(2)]
    try:
        assert (running_elsewhere() or 0) >= 2
        threads, why = cpu_threads(cores=2)
        assert threads == 1 and "other task(s) running" in why
    finally:
        for process in busy:
            process.kill()
            process.wait()
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert cpu_threads(cores=2) == (None, "OMP_NUM_THREADS=2")


def test_the_cpu_default_grid_keeps_the_readme_s_minute() -> None:
    """The work of `infermeter profile gpt2` on a CPU, counted: decode steps and prefill tokens
    of the grid and its validation, against the budget the README's minute was timed with
    (measured on 2 cores, quiet and beside two busy processes: see the issue 18 note)."""
    from infermeter.experiments.profile import (
        DEFAULT_VALIDATE_CPU,
        default_grid,
        validation_queries,
    )
    from infermeter.spec.catalog import get_spec

    spec = get_spec("gpt2")
    grid = default_grid(spec, on_gpu=False)
    assert grid.trials == 3 and max(grid.output_sizes) == 32
    points = [*grid.shapes(), *validation_queries(spec, grid, DEFAULT_VALIDATE_CPU)]
    decode_steps = grid.trials * sum(p.output_tokens - 1 for p in points)
    prefill_tokens = grid.trials * sum(p.prompt_tokens for p in points)
    assert decode_steps <= 720 and prefill_tokens <= 10_600, (decode_steps, prefill_tokens)
    # And it still covers the context's first half, with knots off multiples of 64.
    assert max(grid.pe_sizes) == 481 and len(set(grid.pe_sizes) | set(grid.prompt_sizes)) == 5
