"""benchmarks/refit_stores.py on a stored H100 profile: the same source as its baseline changes
nothing; a validation query measured 25 % dearer in the store moves its error by exactly that
(the script prices what the store holds, a change still in SQLite's -wal file included); no
stores, or a baseline that is no source tree, end in one line."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from paths import REPO

SCRIPT = REPO / "benchmarks" / "refit_stores.py"
STORE = REPO / "docs" / "benchmarks" / "stores" / "tile_bucket_7732325" / "gpt-oss-20b.sqlite"
QUERY = (12654, 234)  # one of its 16 validation queries


def run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, str(SCRIPT), "--out", str(tmp_path / "out"), *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def stores(tmp_path: Path) -> Path:
    folder = tmp_path / "stores" / "h100"
    folder.mkdir(parents=True)
    shutil.copy(STORE, folder / "gpt-oss-20b.sqlite")
    return tmp_path / "stores"


def record(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "out" / "refit_stores.json").read_text())


def error_of(figures: dict, quantity: str) -> float:
    (store,) = figures.values()
    return next(e for p, o, e in store[quantity]["queries"] if (p, o) == QUERY)


def test_the_same_source_as_baseline_changes_nothing(tmp_path: Path) -> None:
    done = run(tmp_path, "--stores", str(stores(tmp_path)), "--baseline-src", str(REPO / "src"))
    assert done.returncode == 0, done.stderr
    got = record(tmp_path)
    assert list(got["stores"]) == ["h100/gpt-oss-20b.sqlite"]
    for quantity in ("runtime_s", "energy_j"):
        assert got["stores"]["h100/gpt-oss-20b.sqlite"][quantity]["n"] == 16
        assert got["pooled"][quantity] == got["baseline_pooled"][quantity]
        assert got["against_baseline"][quantity] == {
            "stores": 1, "mape_pct_lower": 0, "max_error_pct_lower": 0,
            "mape_pct_higher": 0, "max_error_pct_higher": 0,
            "priced_by_this_checkout_only": [], "priced_by_baseline_only": [],
        }  # fmt: skip
    assert (tmp_path / "out" / "refit_stores.md").read_text().startswith("# refit_stores")
    left = [p.name for p in (tmp_path / "stores" / "h100").iterdir()]
    assert left == ["gpt-oss-20b.sqlite"]  # no -wal or -shm beside it


def test_a_file_that_is_no_store_is_named_with_its_reason(tmp_path: Path) -> None:
    root = stores(tmp_path)
    (root / "h100" / "notes.sqlite").write_text("not a database")
    done = run(tmp_path, "--stores", str(root))
    assert done.returncode == 0, done.stderr
    got = record(tmp_path)["stores"]
    assert got["h100/gpt-oss-20b.sqlite"]["energy_j"]["n"] == 16
    assert "not an infermeter store" in got["h100/notes.sqlite"]["error"]
    table = (tmp_path / "out" / "refit_stores.md").read_text()
    assert "h100/notes.sqlite: refused by this checkout" in table


def test_a_query_measured_dearer_moves_its_error_by_that(tmp_path: Path) -> None:
    root = stores(tmp_path)
    assert run(tmp_path, "--stores", str(root)).returncode == 0
    before = error_of(record(tmp_path)["stores"], "energy_j")
    db = sqlite3.connect(root / "h100" / "gpt-oss-20b.sqlite")
    try:
        changed = db.execute(
            "UPDATE validation SET energy_j = energy_j * 1.25 "
            "WHERE prompt_tokens = ? AND output_tokens = ?",
            QUERY,
        ).rowcount
        db.commit()
        assert changed == 3  # its three trials
        wal = root / "h100" / "gpt-oss-20b.sqlite-wal"
        assert wal.stat().st_size > 0  # committed, still in the -wal file (db is open)
        assert run(tmp_path, "--stores", str(root)).returncode == 0
    finally:
        db.close()
    after = error_of(record(tmp_path)["stores"], "energy_j")
    assert 1 + after / 100 == pytest.approx((1 + before / 100) / 1.25, rel=1e-9)


def test_user_mistakes_end_in_one_line(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "infermeter").mkdir()  # a folder of that name, but no package
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    root = stores(tmp_path)
    cases = [
        (["--stores", str(empty)], f"no store under {empty} holds validation queries"),
        (["--stores", str(tmp_path / "nowhere")], "does not exist"),
        (["--stores", str(empty), "--baseline-src", str(empty)], "holds no infermeter/__init__"),
        (["--stores", str(root), "--out", str(a_file / "out")], "cannot write the record"),
    ]
    for args, message in cases:
        done = run(tmp_path, *args)
        assert done.returncode == 1 and message in done.stderr
        assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_record_name_that_is_a_path_and_another_copy_of_infermeter_are_refused(
    tmp_path: Path,
) -> None:
    done = run(tmp_path, "--stores", str(stores(tmp_path)), "--name", "../escaped")
    assert done.returncode == 1 and "--name must be a file name" in done.stderr
    assert not (tmp_path / "escaped.json").exists()
    other = tmp_path / "other" / "src"
    shutil.copytree(REPO / "src" / "infermeter", other / "infermeter")
    env = {**os.environ, "PYTHONPATH": str(other)}
    command = [sys.executable, str(SCRIPT), "--out", str(tmp_path / "out")]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "run with PYTHONPATH=src" in done.stderr
