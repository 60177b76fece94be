"""benchmarks/decode_breakdown.py as a user runs it: --quick labels the mode that ran (a CPU
runs no CUDA graphs), and the table shows kernel names shortened but identifiable while the
record keeps them as the profiler gave them (a user review)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from paths import REPO

pytest.importorskip("torch")

SCRIPT = REPO / "benchmarks" / "decode_breakdown.py"
RECORD = REPO / "docs" / "benchmarks" / "decode_breakdown.json"


def run_script(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, str(SCRIPT), *map(str, args)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    return done


@pytest.mark.slow
def test_quick_on_a_cpu_says_eager_not_graphs(tmp_path: Path) -> None:
    """The issue's example: --quick labelled its CPU steps "graphs"."""
    run_script("--quick", "--models", "tiny-mixtral", "--layers", "1", "--out", tmp_path)
    record = json.loads((tmp_path / "decode_breakdown_quick.json").read_text())
    (row,) = record["models"]
    assert row["backend_info"]["cuda_graphs"] is False
    assert "eager_tpot_s" in row and not any(k.startswith("graphs") for k in row)
    table = (tmp_path / "decode_breakdown_quick.md").read_text()
    assert "tiny-mixtral@1L: batch-1 decode step under eager / bytes floor" in table
    assert "graphs" not in table


def test_the_table_shortens_kernel_names_and_the_record_keeps_them(tmp_path: Path) -> None:
    """The committed record's table, rendered again: "void at::native::reduce_kernel<128, 4, a"
    was cut mid-template; now the name without return type and template arguments."""
    record = tmp_path / "decode_breakdown.json"
    record.write_text(RECORD.read_text())
    run_script("--table-from", record, "--out", tmp_path)
    table = (tmp_path / "decode_breakdown.md").read_text()
    # a templated name the committed record's table lists (eager top 4 of some model), as
    # the profiler gave it: "void at::native::reduce_kernel<128, 4, ...>(...)"
    listed = [k for m in json.loads(RECORD.read_text())["models"] for k in m["eager"]["top"][:4]]
    raw = next(k for k in listed if k["kernel"].startswith("void ") and "<" in k["kernel"])
    short = raw["kernel"].removeprefix("void ").split("<")[0]
    assert short == "at::native::reduce_kernel"
    shown = f"; {short} {raw['us_per_step']:.0f} µs ({raw['launches_per_step']:.0f}×)"
    assert shown in table, table
    assert "void " not in table and "<" not in table
    assert "under graphs / bytes floor" in table  # the H200 record's steps ran under graphs
    assert record.read_text() == RECORD.read_text()  # raw names kept, nothing else changed
