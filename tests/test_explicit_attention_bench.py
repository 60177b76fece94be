"""benchmarks/explicit_attention.py's --quick: its flex arm (soft-capping as a score
modification, windows as a block mask, sinks from the log-sum-exp) computes what the engine's
blocked_attend computes, so a GPU run's times compare like with like."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from paths import REPO

pytest.importorskip("torch")

SCRIPT = REPO / "benchmarks" / "explicit_attention.py"


@pytest.mark.slow
def test_quick_flex_matches_the_engine_and_records_every_size(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, str(SCRIPT), "--quick", "--trials", "1", "--out", str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "explicit_attention_quick.json").read_text())
    assert {"device", "date", "commit"} <= record.keys()
    shapes = {r["shape"]["name"]: r for r in record["rows"]}
    assert set(shapes) == {"tiny capped global", "tiny sinks local"}
    for row in shapes.values():
        assert row["max_rel_diff"] < 1e-5  # float32 on both arms
        n = len(row["sizes"])
        assert len(row["engine_s"]) == len(row["flex_s"]) == len(row["flex_over_engine_pct"]) == n
        assert row["engine_aligned_residual_pct"] is not None  # 32 and 48 against the rest
    table = (tmp_path / "explicit_attention_quick.md").read_text()
    assert "tiny sinks local: flex vs engine, largest difference / largest output" in table


def test_a_run_without_a_gpu_is_one_line() -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        [sys.executable, str(SCRIPT)], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 2
    assert "no CUDA GPU here: run with --quick" in done.stderr
    assert "Traceback" not in done.stderr
