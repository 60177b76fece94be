"""benchmarks/moe_gemv_bench.py as a user runs it without a GPU: every mode is measured and
recorded, and the table says which expert path actually ran (a CPU runs the expert loop, not
the GEMVs a mode asks for), instead of labelling loop timings as GEMV ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from paths import REPO

pytest.importorskip("torch")

SCRIPT = REPO / "benchmarks" / "moe_gemv_bench.py"


@pytest.mark.slow
def test_quick_records_each_mode_and_the_path_that_ran(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, str(SCRIPT), "--quick", "--layers", "1", "--out", str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "moe_gemv_quick.json").read_text())
    rows = record["models"]
    assert [r["mode"] for r in rows] == ["0", "pairs", "sum", "auto"]
    assert all(r["moe_experts"] == "loop" and r["moe_batch1_gemv"] is None for r in rows)
    assert all(r["tpot_s"] > 0 and r["over_floor"] == r["tpot_s"] / r["floor_s"] for r in rows)
    table = (tmp_path / "moe_gemv_quick.md").read_text()
    assert "grouped GEMM (ran: loop experts path)" in table  # mode 0 did not run it either
    assert "GEMVs, sum after (ran: loop experts path)" in table
    assert "the engine's choice (fastest at start) (ran: loop experts path)" in table
    assert "every mode runs the expert loop" in table and "| - |" in table  # no GPU goal
    assert "commit:" in table and "Device: cpu" in table


def test_an_unknown_mode_is_one_line() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, str(SCRIPT), "--quick", "--modes", "0,bogus"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "modes are 0, pairs, sum or auto, not ['bogus']" in done.stderr
