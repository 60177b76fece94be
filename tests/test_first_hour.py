"""A newcomer's first hour (issue 18): the bare commands of the README do what they promise
on a CPU, with nothing measured against a clock (the work is counted instead)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from typer.testing import CliRunner

from infermeter.cli import app
from infermeter.commands.energy import CPU_DEFAULTS


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
