"""benchmarks/host_share.py on real stores: a CPU profile made here records each call's host
parts and the script reports them consistently; a store from before they were recorded gives
wall − device alone; a missing store and a malformed --store are one line, not a
traceback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from cli_runner import invoke
from paths import REPO

SCRIPT = REPO / "benchmarks" / "host_share.py"
OLD_STORE = REPO / "docs/benchmarks/stores/heldout/3b91f5a/llama-7b.store.sqlite"


def run(tmp_path: Path, *stores: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    args = [a for s in stores for a in ("--store", s)]
    command = [sys.executable, str(SCRIPT), *args, "--out", str(tmp_path)]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_a_fresh_profile_records_its_calls_host_parts(tmp_path: Path) -> None:
    store = tmp_path / "s.db"
    grid = ["--prompt-sizes", "1,16", "--output-sizes", "1,4,8", "--trials", "2"]
    # --accept-poor-fit: a loaded machine's timings may fit poorly; the fit is not the subject
    result = invoke("profile", "tiny-llama", "--device", "cpu", *grid, "--accept-poor-fit",
                    "--store", str(store))  # fmt: skip
    assert result.exit_code == 0, result.output
    done = run(tmp_path, f"tiny={store}")
    assert done.returncode == 0, done.stderr
    model = json.loads((tmp_path / "host_share.json").read_text())["models"][0]
    assert model["model"] == "tiny-llama" and model["label"] == "tiny"
    points = model["points"]
    assert points["shapes"] == 6  # 2 prompt sizes x 3 output lengths, fastest trial each
    for part in ("host", "host_before", "host_after"):
        assert 0 < points[f"{part}_min_ms"] <= points[f"{part}_median_ms"]
        assert points[f"{part}_median_ms"] <= points[f"{part}_max_ms"]
    # the parts are inside wall − device: before and after alone never exceed it
    assert points["host_before_min_ms"] + points["host_after_min_ms"] <= points["host_max_ms"]


def test_one_run_of_a_store_of_several_and_a_run_without_validation(tmp_path: Path) -> None:
    store = tmp_path / "s.db"
    for sizes in ("1,16", "1,8,24"):  # two grids: two runs in one store
        grid = ["--prompt-sizes", sizes, "--output-sizes", "1,4", "--trials", "2"]
        args = ("profile", "tiny-llama", "--device", "cpu", *grid, "--validate", "0",
                "--accept-poor-fit")  # fmt: skip
        result = invoke(*args, "--store", str(store))
        assert result.exit_code == 0, result.output
    done = run(tmp_path, f"newest={store}", f"first={store}#1")
    assert done.returncode == 0, done.stderr
    newest, first = json.loads((tmp_path / "host_share.json").read_text())["models"]
    assert (newest["run_id"], newest["runs_in_store"], newest["points"]["shapes"]) == (2, 2, 6)
    assert (first["run_id"], first["points"]["shapes"]) == (1, 4)
    assert newest["validation"] == {"shapes": 0}
    assert "none in this run" in (tmp_path / "host_share.md").read_text()
    missing = run(tmp_path, f"x={store}#9")
    assert missing.returncode != 0 and "Traceback" not in missing.stderr
    assert "no run 9 (its runs: 1, 2)" in missing.stderr


def test_a_store_from_before_the_host_parts_gives_wall_minus_device(tmp_path: Path) -> None:
    done = run(tmp_path, f"old={OLD_STORE}")
    assert done.returncode == 0, done.stderr
    points = json.loads((tmp_path / "host_share.json").read_text())["models"][0]["points"]
    assert points["shapes"] == 42 and points["host_before_median_ms"] is None
    assert 0 < points["host_min_ms"] < points["host_median_ms"] < points["host_max_ms"]
    assert "no host parts recorded" in (tmp_path / "host_share.md").read_text()


@pytest.mark.parametrize(
    ("store", "says"),
    [
        ("x=/nowhere/s.db", "no such store"),
        ("nolabel", "give MODEL=PATH"),
        ("x=s.db#one", "give MODEL=PATH"),
    ],
)
def test_what_it_cannot_read_is_one_line(tmp_path: Path, store: str, says: str) -> None:
    done = run(tmp_path, store)
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert says in done.stderr
