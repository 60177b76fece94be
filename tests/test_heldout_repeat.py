"""benchmarks/heldout_repeat.py on the stored held-out runs: a run compared with itself moves
by nothing and its errors correlate fully; two runs give the spread the record states; a
missing run folder is one line, not a traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from paths import REPO

SCRIPT = REPO / "benchmarks" / "heldout_repeat.py"
STORES = REPO / "docs" / "benchmarks" / "stores" / "heldout"


def run(tmp_path: Path, a: Path, b: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, str(SCRIPT), "--a", str(a), "--b", str(b), "--out", str(tmp_path)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_a_run_against_itself_and_against_another(tmp_path: Path) -> None:
    assert run(tmp_path, STORES, STORES).returncode == 0
    same = json.loads((tmp_path / "heldout_repeat.json").read_text())["models"]
    for model in same:
        assert model["queries"] == 60
        assert model["all"]["runtime_repeat_max_pct"] == 0.0
        assert model["all"]["runtime_error_correlation"] == pytest.approx(1.0)
    assert run(tmp_path, STORES / "64afd9d", STORES / "131bb40").returncode == 0
    two = json.loads((tmp_path / "heldout_repeat.json").read_text())["models"]
    seven = next(m for m in two if m["model"] == "llama-7b")
    assert seven["run_a"]["commit"].startswith("64afd9d") and seven["run_b"]["commit"] == "131bb40"
    assert seven["workload"]["runtime_repeat_max_pct"] > seven["uniform"]["runtime_repeat_max_pct"]


def test_a_missing_run_folder_is_one_line(tmp_path: Path) -> None:
    done = run(tmp_path, tmp_path / "nowhere", STORES)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--a/--b" in done.stderr and "no such file" in done.stderr
