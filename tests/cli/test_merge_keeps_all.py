"""`infermeter merge` loses nothing measured and says what it did, per source: two stores
profiled with the same settings but measured apart stay two runs, each with its own fit; a
store merged again, or an identical copy of it, adds nothing and says its rows were already
there.

Stores are built from synthetic points through the store's own functions, fitted with
`infermeter fit` as a user fits them; nothing here runs a model.
"""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pytest
from test_newcomer_errors import profile_store

from cli_runner import invoke
from infermeter.backends.base import Measurement, Point
from infermeter.model.fitted import fit_run
from infermeter.store.db import Store

VALIDATION = [(Point(128, 2, 1, 0), 0.11), (Point(128, 2, 1, 1), 0.12), (Point(8, 24, 1, 0), 0.2)]
ROW = "prompt_tokens, output_tokens, batch_size, trial, runtime_s, status, measured_at"


def profiled(path: Path, slower: float) -> Path:
    """A complete profile (run key "profile", the same in every store: 18 measurements, each
    `slower` times the fixture's runtimes), 3 validation measurements and the fit
    `infermeter fit` stores."""
    profile_store(path, slower)
    with Store(path) as db:
        queries = [(point, Measurement(runtime * slower)) for point, runtime in VALIDATION]
        db.record_points(1, queries, validation=True)
    fitted = invoke("fit", "--store", path)
    assert fitted.exit_code == 0, fitted.output
    return path


def rows(path: Path, table: str, run_id: int) -> set[tuple]:
    """Run `run_id`'s rows of `table` (points or validation) in the store at `path`, by
    content."""
    with sqlite3.connect(path) as db:
        return set(db.execute(f"SELECT {ROW} FROM {table} WHERE run_id = ?", (run_id,)))


def fit_json(path: Path, run_id: int) -> list[str]:
    """The stored fits of run `run_id` (their JSON), oldest first."""
    with sqlite3.connect(path) as db:
        found = db.execute("SELECT model_json FROM fits WHERE run_id = ? ORDER BY id", (run_id,))
        return [row[0] for row in found]


def merge_lines(*args: Path) -> list[str]:
    """`infermeter merge ARGS...`'s lines, after checking it succeeded."""
    merged = invoke("merge", *args)
    assert merged.exit_code == 0, merged.output
    return merged.stdout.splitlines()


def test_two_stores_measured_apart_stay_two_runs_each_with_its_fit(tmp_path: Path) -> None:
    first = profiled(tmp_path / "a.sqlite", slower=1.0)
    second = profiled(tmp_path / "b.sqlite", slower=1.5)
    target = tmp_path / "all.sqlite"
    said_first, said_second = merge_lines(target, first, second)
    assert said_first.startswith(f"merged {first} into {target}: 1 new run, 0 runs joined")
    assert said_second.startswith(f"merged {second} into {target}: 0 new runs, 0 runs joined")
    assert "1 run added apart" in said_second
    for line in (said_first, said_second):
        assert "copied 18 measurements, 3 validation rows and 1 other row" in line
        assert "skipped 0 rows already present" in line
    with sqlite3.connect(target) as db:
        runs = [row[0] for row in db.execute("SELECT id FROM runs ORDER BY id")]
    assert len(runs) == 2
    for run_id, source in zip(runs, (first, second), strict=True):
        for table in ("points", "validation"):
            assert rows(target, table, run_id) == rows(source, table, 1)
        assert fit_json(target, run_id) == fit_json(source, 1)
        with Store(target) as db:
            stored, refit = db.latest_fit(run_id), fit_run(db, run_id)[0]
        assert stored is not None
        assert stored.prompt_encoding == pytest.approx(refit.prompt_encoding)
        assert stored.per_output_token == pytest.approx(refit.per_output_token)


def test_a_store_merged_again_or_copied_adds_nothing_and_says_so(tmp_path: Path) -> None:
    source = profiled(tmp_path / "a.sqlite", slower=1.0)
    assert not Path(f"{source}-wal").exists()  # closed: the file holds the whole store
    copy = tmp_path / "copy.sqlite"
    shutil.copy(source, copy)
    target = tmp_path / "all.sqlite"
    merge_lines(target, source)
    again = merge_lines(target, source, copy)
    assert [line.split(": ", 1)[0] for line in again] == [
        f"merged {source} into {target}",
        f"merged {copy} into {target}",
    ]
    for line in again:
        assert "0 new runs, 1 run joined, 0 runs added apart" in line
        assert "copied 0 measurements, 0 validation rows and 0 other rows" in line
        assert "skipped 22 rows already present" in line  # 18 + 3 validation + 1 fit
    with sqlite3.connect(target) as db:
        counts = [
            db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("runs", "points", "validation", "fits")
        ]
    assert counts == [1, 18, 3, 1]
    assert rows(target, "points", 1) == rows(source, "points", 1)
