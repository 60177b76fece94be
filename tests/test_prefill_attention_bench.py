"""benchmarks/prefill_attention.py: rendered from the profiles measured on an H100 (their
stores kept in docs/benchmarks/stores), its record says what each profile printed about
itself and which attention the engine took; the stores are read, never written; mistakes
are refused in one line."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench_script import assert_refused
from paths import REPO

SCRIPT = REPO / "benchmarks" / "prefill_attention.py"
STORES = REPO / "docs" / "benchmarks" / "stores" / "prefill_attention_9c5052d"
PRINTED = re.compile(
    r"^(runtime_s|energy_j): validated on (\d+) queries never profiled: "
    r"MAPE ([\d.]+)%, max ([\d.]+)%, mean error ([-+][\d.]+)%$",
    re.MULTILINE,
)


ROW = re.compile(r"^│\s+(\d+) │\s+([\d.e-]+) │\s+([\d.e-]+) │\s+([\d.]+) │\s+(\d+) │$")
ESTIMATE = re.compile(r"^│\s+(\d+) │\s+(\d+) │\s+([\d.e-]+) │")


def _printed_runtime(log: str) -> tuple[list[float], dict[tuple[int, int], float]]:
    """What a profile printed: its runtime model's per-p R² (the first table: p, PE, g, R²,
    points) and its estimates' runtime_s by (p, o)."""
    r2: list[float] = []
    estimates: dict[tuple[int, int], float] = {}
    table = 0
    for line in log.splitlines():
        if "┏" in line:
            table += 1
        if table == 1 and (m := ROW.match(line.strip())):
            r2.append(float(m[4]))
        elif "output_tokens" not in line and (m := ESTIMATE.match(line.strip())) and table > 2:
            estimates[(int(m[1]), int(m[2]))] = float(m[3])
    return r2, estimates


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.glob("*.sqlite")}


def test_the_record_says_what_each_profile_printed(tmp_path: Path) -> None:
    stores = tmp_path / "stores"
    shutil.copytree(STORES, stores)
    before = _digest(stores)
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, str(SCRIPT), "--from-stores", str(stores), "--out", str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _digest(stores) == before  # read, not refitted into the store
    record = json.loads((tmp_path / "prefill_attention.json").read_text())
    assert record["device"] == "NVIDIA H100 80GB HBM3" and record["commit"] == "9c5052d"
    runs = {(r["model"], r["mode"]): r for r in record["runs"]}
    models = ("gemma-2-9b", "gpt-oss-20b")
    assert set(runs) == {(m, a) for m in models for a in ("auto", "explicit")}
    for (model, mode), run in runs.items():
        assert run["prefill_attention"] == ("flex" if mode == "auto" else "explicit")
        printed = {
            m[1]: (int(m[2]), float(m[3]), float(m[4]), float(m[5]))
            for m in PRINTED.finditer((stores / f"{model}_{mode}.log").read_text())
        }
        for quantity in ("runtime_s", "energy_j"):
            v = run[f"{quantity.split('_')[0]}_validation"]
            got = (v["n"], v["mape_pct"], v["max_error_pct"], v["bias_pct"])
            assert got[0] == printed[quantity][0]
            assert got[1:] == pytest.approx(printed[quantity][1:], abs=0.006)  # printed to 0.01
        assert run["largest_knot_p"] == 4095
        r2, estimates = _printed_runtime((stores / f"{model}_{mode}.log").read_text())
        assert run["min_r2_per_p"] == pytest.approx(min(r2), abs=6e-7)  # printed to 1e-6
        # one output token: the estimate is PE at that p (paper, eq. 1)
        assert run["pe_at_largest_knot_s"] == pytest.approx(estimates[(4095, 1)], rel=5e-4)
    # flex's prefill of 4,095 tokens is the faster one in both models (recorded, not assumed)
    for model in models:
        flex, explicit = runs[(model, "auto")], runs[(model, "explicit")]
        assert flex["pe_at_largest_knot_s"] < explicit["pe_at_largest_knot_s"]
    table = (tmp_path / "prefill_attention.md").read_text()
    row = "| gemma-2-9b: prefill attention the engine took | explicit: explicit; auto: flex |"
    assert row in table
    # the committed record is this rendering (but for where its stores were read)
    committed = json.loads((REPO / "docs" / "benchmarks" / "prefill_attention.json").read_text())
    for mine in (committed, record):
        mine.pop("rendered_from_stores")
    assert committed == record


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--from-stores", "MISSING"], "is not a folder"),
        (["--from-stores", "EMPTY"], "no profile was stored"),
    ],
)
def test_mistakes_are_refused_in_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty") if a == "EMPTY" else str(tmp_path / "missing")
            if a == "MISSING" else a for a in args]  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    assert_refused("prefill_attention.py", args, says, out)


def test_each_profile_runs_with_its_own_setting(tmp_path: Path) -> None:
    """The measuring mode on a CPU: two real profiles of a tiny soft-capped model, each in a
    process of its own; each store's record shows the setting that reached its process (on a
    CPU auto falls back to the explicit path, saying why)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    env.pop("INFERMETER_PREFILL_ATTENTION", None)
    stores = tmp_path / "stores"
    command = [
        sys.executable, str(SCRIPT), "--models", "tiny-gemma2", "--max-context", "64",
        "--warmup-s", "0", "--stores", str(stores), "--out", str(tmp_path),
    ]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "prefill_attention.json").read_text())
    runs = {r["mode"]: r for r in record["runs"]}
    assert set(runs) == {"explicit", "auto"} and record["max_context"] == 64
    for mode, run in runs.items():
        assert run["exit_code"] == 0 and (stores / run["store"]).is_file()
        assert run["command"].startswith(f"INFERMETER_PREFILL_ATTENTION={mode} infermeter profile")
        assert run["prefill_attention"] == "explicit" and run["runtime_validation"]["n"] > 0
    assert runs["explicit"]["prefill_attention_note"] == "INFERMETER_PREFILL_ATTENTION=explicit"
    assert "not CUDA" in runs["auto"]["prefill_attention_note"]
