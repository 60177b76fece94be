"""benchmarks/heldout_noise.py on held-out runs: copies of one run show no noise and an oracle
that prices them exactly; one query measured 10% slower in one copy moves that run's oracle by
its share; the committed runs give the record's figures; too few runs is one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from paths import REPO

SCRIPT = REPO / "benchmarks" / "heldout_noise.py"
STORES = REPO / "docs" / "benchmarks" / "stores" / "heldout"
MODELS = ("llama-7b", "llama-13b")


def run(tmp_path: Path, stores: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, str(SCRIPT), "--stores", str(stores), "--out", str(tmp_path)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def copies(tmp_path: Path, count: int) -> Path:
    """`count` run folders, each a copy of the newest run's CSVs."""
    stores = tmp_path / "stores"
    for index in range(count):
        folder = stores / f"run{index}"
        folder.mkdir(parents=True)
        for model in MODELS:
            for kind in ("measured", "estimates"):
                shutil.copy(STORES / f"{model}.{kind}.csv", folder)
    return stores


def model_figures(tmp_path: Path, model: str) -> dict:
    record = json.loads((tmp_path / "out" / "heldout_noise.json").read_text())
    return next(m for m in record["models"] if m["model"] == model)


def test_copies_have_no_noise_and_one_slow_query_shows(tmp_path: Path) -> None:
    stores = copies(tmp_path, 3)
    assert run(tmp_path / "out", stores).returncode == 0
    same = model_figures(tmp_path, "llama-7b")
    assert same["runs"] == ["run0", "run1", "run2"] and same["queries"] == 60
    assert same["measurement_repeat_std_pct"] == pytest.approx(0.0, abs=1e-9)
    assert max(same["oracle_max_error_pct"].values()) == pytest.approx(0.0, abs=1e-9)
    assert same["estimate_rest_std_pct"] == pytest.approx(0.0, abs=1e-9)
    measured = pd.read_csv(STORES / "llama-7b.measured.csv")
    estimates = pd.read_csv(STORES / "llama-7b.estimates.csv")
    errors = (estimates.runtime_s / measured.measured_s - 1).abs() * 100
    assert same["estimate_systematic_max_pct"] == pytest.approx(errors.max())

    slow = stores / "run1" / "llama-7b.measured.csv"
    frame = pd.read_csv(slow)
    frame.loc[5, "measured_s"] *= 1.10
    frame.to_csv(slow, index=False)
    assert run(tmp_path / "out", stores).returncode == 0
    moved = model_figures(tmp_path, "llama-7b")
    # The others' mean prices that query 10% below run1's measurement: -1/1.1 + 1.
    assert moved["oracle_max_error_pct"]["run1"] == pytest.approx(100 / 11, rel=1e-6)
    assert moved["oracle_runs_over_goal"] == 3  # the other two see it +5% from their mean
    assert moved["measurement_repeat_std_pct"] > 0
    assert model_figures(tmp_path, "llama-13b")["measurement_repeat_std_pct"] == pytest.approx(
        0.0, abs=1e-9
    )


def test_the_committed_runs_give_the_record(tmp_path: Path) -> None:
    assert run(tmp_path / "out", STORES).returncode == 0
    committed = json.loads((REPO / "docs" / "benchmarks" / "heldout_noise.json").read_text())
    for model in MODELS:
        fresh = model_figures(tmp_path, model)
        kept = next(m for m in committed["models"] if m["model"] == model)
        for key in ("measurement_repeat_std_pct", "oracle_max_error_pct"):
            assert fresh[key] == pytest.approx(kept[key])
        assert [
            (q["prompt_tokens"], q["output_tokens"], pytest.approx(q["mean_error_pct"]))
            for q in kept["largest_systematic"]
        ] == [
            (q["prompt_tokens"], q["output_tokens"], q["mean_error_pct"])
            for q in fresh["largest_systematic"]
        ]


def test_too_few_runs_is_one_line(tmp_path: Path) -> None:
    done = run(tmp_path / "out", copies(tmp_path, 2))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "need 3" in done.stderr
