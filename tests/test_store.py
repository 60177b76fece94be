"""The SQLite store: durable points, resumable runs, schema guard."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from infermeter.backends.base import Measurement, Point
from infermeter.errors import UserError
from infermeter.model.cost_model import CostModel
from infermeter.store.db import SCHEMA_VERSION, Store, run_key


def open_run(db: Store, key: str = "k1"):
    return db.open_run(
        key=key,
        model="tiny",
        spec={"name": "tiny"},
        stack={"backend": "hf"},
        backend="hf",
        backend_info={"device": "cpu"},
        grid={"trials": 1},
        device="cpu",
        commit_sha="abc",
        version="0.1.0",
    )


def test_points_survive_reopen_and_runs_resume(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with Store(path) as db:
        run, resumed = open_run(db)
        assert not resumed
        db.record_point(run.id, Point(1, 2), Measurement(0.5, 0.1, 2))
        db.record_point(run.id, Point(1, 4), Measurement(0.0, status="error", detail="oom"))
    with Store(path) as db:
        again, resumed = open_run(db)
        assert resumed and again.id == run.id
        # Errors are retried on resume; good points are not.
        assert db.finished_points(run.id) == {Point(1, 2)}
        points = db.points(run.id)
        assert list(points.runtime_s) == [0.5, 0.0]
        assert db.runs().loc[0, "ok_points"] == 1


def test_fits_are_stored(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as db:
        run, _ = open_run(db)
        model = CostModel([1, 2], [0.1, 0.2], 0.01, model="tiny")
        db.record_fit(run.id, model)
        assert db.latest_fit(run.id) == model
        assert db.latest_fit(run.id, "energy_j") is None


def test_newer_schema_is_refused_untouched(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with Store(path) as db:
        open_run(db)
    con = sqlite3.connect(path)
    con.execute("UPDATE meta SET value=? WHERE key='schema_version'", (str(SCHEMA_VERSION + 1),))
    con.commit()
    con.close()
    before = path.read_bytes()
    with pytest.raises(UserError, match="newer"):
        Store(path)
    assert path.read_bytes() == before


def test_foreign_files_are_refused(tmp_path: Path) -> None:
    text = tmp_path / "notes.sqlite"
    text.write_text("hello, not a database at all" * 100)
    with pytest.raises(UserError, match="not an infermeter store"):
        Store(text)
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    with pytest.raises(UserError, match="not an infermeter store"):
        Store(other)


def test_unknown_run(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as db:
        with pytest.raises(UserError, match="no runs"):
            db.latest_run_id()
        with pytest.raises(UserError, match="no run 7"):
            db.get_run(7)


def test_run_key_is_stable_and_order_free() -> None:
    assert run_key({"a": 1, "b": [1, 2]}) == run_key({"b": [1, 2], "a": 1})
    assert run_key({"a": 1}) != run_key({"a": 2})


class _InterruptedAfterBegin:
    """A connection whose BEGIN goes through and is then hit by a Ctrl-C, as when the signal
    lands the moment a wait for the write lock ends."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def execute(self, sql: str, *args: object) -> sqlite3.Cursor:
        cursor = self.db.execute(sql, *args)
        if sql.startswith("BEGIN"):
            raise KeyboardInterrupt
        return cursor

    @property
    def in_transaction(self) -> bool:
        return self.db.in_transaction


def test_a_ctrl_c_right_after_begin_leaves_no_transaction_open(tmp_path: Path) -> None:
    with Store(tmp_path / "s.sqlite") as store:
        real = store._db
        store._db = _InterruptedAfterBegin(real)  # type: ignore[assignment]
        with pytest.raises(KeyboardInterrupt), store.transaction():
            pass
        store._db = real
        assert not real.in_transaction
        run, _ = store.open_run(
            key="k", model="m", spec={}, stack={}, backend="b", backend_info={}, grid={},
            device="cpu",
        )  # fmt: skip
        store.set_run_status(run.id, "interrupted")  # the next transaction starts cleanly
        assert store.get_run(run.id).status == "interrupted"


def test_a_failed_trial_measured_again_keeps_its_first_record(tmp_path: Path) -> None:
    """Nothing measured is lost: the error a rerun replaces moves to replaced_points."""
    with Store(tmp_path / "s.sqlite") as db:
        run, _ = db.open_run(
            key="k", model="m", spec={}, stack={}, backend="b", backend_info={}, grid={},
            device="d",
        )  # fmt: skip
        failed = Measurement(float("nan"), status="error", detail="http_5xx: overloaded")
        db.record_point(run.id, Point(8, 2), failed)
        assert Point(8, 2) not in db.finished_points(run.id)  # measured again on resume
        db.record_point(run.id, Point(8, 2), Measurement(0.25, output_tokens_actual=2))
        points = db.points(run.id)
        replaced = db.replaced_points(run.id)
    assert list(points.status) == ["ok"] and points.runtime_s.iloc[0] == 0.25
    assert list(replaced.status) == ["error"] and replaced.source.iloc[0] == "points"
    assert replaced.detail.iloc[0] == "http_5xx: overloaded"
