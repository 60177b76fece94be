"""benchmarks/heldout_noise.py on held-out runs: copies of one run show no noise and an oracle
that prices them exactly, also where a copy is slower as a whole or in its short queries only
(a card's speed, not noise); one query measured 10% slower in one copy moves that run's oracle
by its share; a query moved by known factors gives the std in closed form; the committed runs
give the record's figures; too few runs is one line."""

from __future__ import annotations

import json
import math
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


def scale(stores: Path, run: str, factor: float, rows: object = slice(None)) -> None:
    """Multiply `run`'s LLaMA-7B measurements (its trials too) in `rows` by `factor`."""
    path = stores / run / "llama-7b.measured.csv"
    frame = pd.read_csv(path)
    rows = [rows] if isinstance(rows, int) else rows
    frame.loc[rows, "measured_s"] *= factor
    frame.loc[rows, "trials_s"] = frame.loc[rows, "trials_s"].map(
        lambda t: json.dumps([x * factor for x in json.loads(t)])
    )
    frame.to_csv(path, index=False)


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

    for name in same["runs"]:  # each run's own max error, as heldout_bench reports it
        assert same["estimate_max_error_pct"][name] == pytest.approx(errors.max())

    scale(stores, "run1", 1.10, 5)
    assert run(tmp_path / "out", stores).returncode == 0
    moved = model_figures(tmp_path, "llama-7b")
    # The others' mean prices that query 10% below run1's measurement: -1/1.1 + 1.
    assert moved["oracle_max_error_pct"]["run1"] == pytest.approx(100 / 11, rel=1e-6)
    assert moved["oracle_runs_over_goal"] == 3  # the other two see it +5% from their mean
    assert moved["measurement_repeat_std_pct"] > 0
    assert model_figures(tmp_path, "llama-13b")["measurement_repeat_std_pct"] == pytest.approx(
        0.0, abs=1e-9
    )


def test_a_card_s_speed_is_not_noise(tmp_path: Path) -> None:
    stores = copies(tmp_path, 3)
    scale(stores, "run0", 1.05)  # a slower card, every query
    measured = pd.read_csv(stores / "run1" / "llama-7b.measured.csv")
    short = measured.index[measured.output_tokens <= 5]
    scale(stores, "run2", 1.03, short)  # a card slower at prefill only
    assert run(tmp_path / "out", stores).returncode == 0
    figures = model_figures(tmp_path, "llama-7b")
    assert figures["measurement_repeat_std_pct"] == pytest.approx(0.0, abs=1e-9)
    assert max(figures["oracle_max_error_pct"].values()) == pytest.approx(0.0, abs=1e-9)
    # With one speed per run, run2's short queries look 3% off (its median is a long query's
    # speed or a short one's: either way one group is off by about 3%).
    assert figures["measurement_repeat_std_one_speed_pct"] > 0.5
    assert max(figures["oracle_one_speed_max_error_pct"].values()) > 1.0


def test_one_query_moved_by_known_factors(tmp_path: Path) -> None:
    stores = copies(tmp_path, 3)
    measured = pd.read_csv(stores / "run0" / "llama-7b.measured.csv")
    slowest = int(measured.measured_s.idxmax())  # far from any median
    step = 0.01
    scale(stores, "run1", math.exp(step), slowest)
    scale(stores, "run2", math.exp(-step), slowest)
    assert run(tmp_path / "out", stores).returncode == 0
    figures = model_figures(tmp_path, "llama-7b")
    # Deviations +-step at 2 of 60 x 3 entries: std sqrt(2 step^2 / 180), times sqrt(3 / 2).
    expected = step * math.sqrt(2 / 180 * 3 / 2) * 100
    assert figures["measurement_repeat_std_pct"] == pytest.approx(expected, rel=1e-6)
    # run1's oracle: the others' geometric mean is e^(-step / 2) against e^step.
    assert figures["oracle_max_error_pct"]["run1"] == pytest.approx(
        -math.expm1(-1.5 * step) * 100, rel=1e-6
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


def test_what_the_profile_said_against_the_benchmark(tmp_path: Path) -> None:
    # Issue 15 asks the profile's own maximum (16 validation queries) within 1 point of the
    # benchmark's (60 queries); the script sets each run's beside it and the benchmark's own
    # maximum over 16 of its queries, half of each shape.
    stores = copies(tmp_path, 3)
    record = json.loads((STORES / "heldout_llama-7b.json").read_text())
    entry = next(m for m in record["models"] if m["model"] == "llama-7b")
    rows = pd.DataFrame(entry["rows"])
    bench = float(rows.runtime_error_pct.abs().max())
    for name, said in (("run0", bench + 0.5), ("run1", bench - 2.0), ("run2", bench)):
        entry["profile_said"]["runtime_validation_max_error_pct"] = said
        (stores / name / "heldout_llama-7b.json").write_text(json.dumps(record))
    assert run(tmp_path / "out", stores).returncode == 0
    said = model_figures(tmp_path, "llama-7b")["profile_said"]
    assert said["runtime_runs_compared"] == 3 and said["runtime_runs_within_pt"] == 2
    assert said["runs"]["run1"]["runtime"]["profile_said_max_error_pct"] == bench - 2.0
    figures = said["runs"]["run0"]["runtime"]
    assert figures["benchmark_max_error_pct"] == pytest.approx(bench)
    # a maximum over 16 never exceeds the maximum over all 60, and it reaches it only when
    # the worst query is drawn (at most 8 of its shape's 30)
    assert figures["benchmark_16_max_error_p90_pct"] <= bench
    assert figures["benchmark_16_max_error_p10_pct"] < bench
    share = said["runtime_benchmark_16_within_pt_share"]
    assert 0 < share <= 1
    # no record in a folder: that run is left out, not a failure
    assert model_figures(tmp_path, "llama-13b")["profile_said"]["runtime_runs_compared"] == 0


def test_too_few_runs_is_one_line(tmp_path: Path) -> None:
    done = run(tmp_path / "out", copies(tmp_path, 2))
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert "need 3" in done.stderr
