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
        runs = db.runs()
        assert runs.loc[0, ["points", "measurements", "ok_measurements"]].tolist() == [2, 2, 1]


def test_reading_a_store_leaves_nothing_beside_it(tmp_path: Path) -> None:
    # A read-only SQLite connection to a WAL store leaves its -wal and -shm files behind when
    # it closes: every `show`, `variance` or `export` left two files beside the user's store
    # (found 2026-12-03). A read opens it for writing where it may, with writes refused.
    path = tmp_path / "s.sqlite"
    with Store(path) as db:
        run, _ = open_run(db)
        db.record_point(run.id, Point(1, 2), Measurement(0.5, 0.1, 2))
    files = sorted(f.name for f in tmp_path.iterdir())
    assert not any(name.endswith(("-wal", "-shm")) for name in files)  # the writer's removed
    before = path.read_bytes()
    with Store(path, read_only=True) as db:
        assert db.points(run.id).runtime_s.tolist() == [0.5]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            db._db.execute("DELETE FROM points")
    assert sorted(f.name for f in tmp_path.iterdir()) == files
    assert path.read_bytes() == before
    # beside a writer (a profile still running), the reader leaves the writer's files alone
    with Store(path) as writer:
        with Store(path, read_only=True) as reader:
            assert reader.points(run.id).runtime_s.tolist() == [0.5]
        assert (tmp_path / "s.sqlite-wal").exists()
        writer.record_point(run.id, Point(1, 4), Measurement(0.7, 0.1, 4))
    with Store(path, read_only=True) as db:
        assert db.points(run.id).runtime_s.tolist() == [0.5, 0.7]


def test_reading_a_killed_writers_store_writes_nothing(tmp_path: Path) -> None:
    # A profile killed mid-run leaves committed points in the -wal file; a read shows them
    # and leaves the file as it found it (closing a writable connection would fold them in).
    live = tmp_path / "live"
    live.mkdir()
    with Store(live / "s.sqlite") as db:
        run, _ = open_run(db)
        db.record_point(run.id, Point(1, 2), Measurement(0.5, 0.1, 2))
    writer = sqlite3.connect(live / "s.sqlite", isolation_level=None)
    writer.execute("UPDATE points SET runtime_s = 0.25")  # committed, in the -wal, not folded
    killed = tmp_path / "killed"
    killed.mkdir()
    for name in ("s.sqlite", "s.sqlite-wal"):  # the files as a SIGKILL leaves them
        (killed / name).write_bytes((live / name).read_bytes())
    writer.close()
    path = killed / "s.sqlite"
    before = path.read_bytes()
    assert (killed / "s.sqlite-wal").stat().st_size > 0
    with Store(path, read_only=True) as db:
        assert db.points(run.id).runtime_s.tolist() == [0.25]
    assert path.read_bytes() == before and (killed / "s.sqlite-wal").stat().st_size > 0


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


# The schema as infermeter wrote it before numbered migrations (store/db.py's _SCHEMA at
# schema_version 2, the run_owners table made at a run's first claim, and
# experiments/energy.py's tables), copied literally: stores in the wild look like this.
_V2_MEASURED = """
    run_id INTEGER NOT NULL REFERENCES runs(id), prompt_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL, batch_size INTEGER NOT NULL, trial INTEGER NOT NULL,
    runtime_s REAL, ttft_s REAL, energy_j REAL, output_tokens_actual INTEGER,
    status TEXT NOT NULL, detail TEXT, extra_json TEXT, measured_at TEXT NOT NULL,
    PRIMARY KEY (run_id, prompt_tokens, output_tokens, batch_size, trial)
"""
_V2_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, model TEXT NOT NULL,
    spec_json TEXT NOT NULL, stack_json TEXT NOT NULL, backend TEXT NOT NULL,
    backend_json TEXT NOT NULL, grid_json TEXT NOT NULL, device TEXT NOT NULL,
    commit_sha TEXT, infermeter_version TEXT NOT NULL, created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL, status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS points ({_V2_MEASURED});
CREATE TABLE IF NOT EXISTS validation ({_V2_MEASURED});
CREATE TABLE IF NOT EXISTS replaced_points (
    run_id INTEGER NOT NULL, source TEXT NOT NULL, prompt_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL, batch_size INTEGER NOT NULL, trial INTEGER NOT NULL,
    runtime_s REAL, ttft_s REAL, energy_j REAL, output_tokens_actual INTEGER,
    status TEXT NOT NULL, detail TEXT, extra_json TEXT, measured_at TEXT NOT NULL,
    replaced_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS power_samples (
    run_id INTEGER NOT NULL REFERENCES runs(id), t REAL NOT NULL, gpu INTEGER NOT NULL,
    power_w REAL NOT NULL, sm_util REAL, mem_util REAL
);
CREATE TABLE IF NOT EXISTS fits (
    id INTEGER PRIMARY KEY AUTOINCREMENT, run_id INTEGER NOT NULL REFERENCES runs(id),
    quantity TEXT NOT NULL, model_json TEXT NOT NULL, created_at TEXT NOT NULL
);
INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', '2');
INSERT INTO runs VALUES (1, 'k1', 'tiny', '{{}}', '{{}}', 'hf', '{{}}', '{{}}', 'cpu', NULL,
    '0.1.0', '2026-01-01T00:00:00+00:00', '2026-01-01T00:00:00+00:00', 'complete');
INSERT INTO points VALUES (1, 1, 2, 1, 0, 0.5, 0.1, 2.0, 2, 'ok', NULL, NULL, '2026-01-01');
"""
_V2_OWNERS = (
    "CREATE TABLE IF NOT EXISTS run_owners (key TEXT PRIMARY KEY, pid INTEGER NOT NULL, "
    "host TEXT NOT NULL, since TEXT NOT NULL)"
)
_V2_ENERGY = """
CREATE TABLE IF NOT EXISTS energy_configs (
    run_id INTEGER, dataset TEXT, batch INTEGER, max_len INTEGER, shards INTEGER,
    power_cap_w REAL, tokens_per_s REAL, words_per_s REAL, responses_per_s REAL, watts REAL,
    j_per_token REAL, j_per_response REAL, sm_util REAL, mem_util REAL, peak_mem_gb REAL,
    status TEXT, detail TEXT
);
CREATE TABLE IF NOT EXISTS energy_responses (
    run_id INTEGER, config_key TEXT, batch_index INTEGER, prompt_index INTEGER,
    prompt_tokens INTEGER, output_tokens INTEGER, words INTEGER, energy_j REAL,
    batch_window_j REAL
);
CREATE TABLE IF NOT EXISTS energy_batches (
    run_id INTEGER, config_key TEXT, batch_index INTEGER, responses INTEGER,
    prompt_width INTEGER, runtime_s REAL, window_s REAL, start_unix REAL, end_unix REAL,
    energy_j REAL, integrated_j REAL, method TEXT, sm_util REAL, mem_util REAL
    {batch_peaks}
);
CREATE INDEX IF NOT EXISTS energy_configs_run ON energy_configs(run_id);
CREATE INDEX IF NOT EXISTS energy_responses_run ON energy_responses(run_id, config_key);
CREATE INDEX IF NOT EXISTS energy_batches_run ON energy_batches(run_id, config_key);
INSERT INTO energy_configs (run_id, batch, max_len, shards, status) VALUES (1, 4, 8, 1, 'ok');
INSERT INTO energy_batches (run_id, config_key, batch_index) VALUES (1, 'b4-l8-s1-nocap', 0);
"""


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as db:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


@pytest.mark.parametrize(
    "extra",
    [
        [],  # a profile store
        [_V2_OWNERS],  # one that ran a profile since run ownership
        [_V2_OWNERS, _V2_ENERGY.replace("{batch_peaks}", "")],  # energy, before batch peaks
        [_V2_ENERGY.replace("{batch_peaks}", ", peak_mem_gb REAL, power_limit_w REAL")],
    ],
)
def test_a_store_of_the_previous_schema_opens_and_keeps_its_data(
    tmp_path: Path, extra: list[str]
) -> None:
    from infermeter.store.energy import BATCH_COLUMNS, energy_batches, energy_configs

    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.executescript(_V2_SCHEMA + ";".join(extra))
    db.close()
    before = path.read_bytes()
    with Store(path, read_only=True) as db:  # read as it is: nothing migrated or written
        assert db.points(1).runtime_s.tolist() == [0.5]
    assert path.read_bytes() == before
    with Store(path) as db:
        assert db.get_run(1).status == "complete"
        assert db.points(1).runtime_s.tolist() == [0.5]
        assert db.finished_points(1) == {Point(1, 2)}
        assert len(energy_configs(db, 1)) == (1 if extra[-1:] and "energy" in extra[-1] else 0)
        assert list(energy_batches(db).columns) == BATCH_COLUMNS
        run, resumed = open_run(db, key="k2")  # and it takes new runs
        assert run.id == 2 and not resumed
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        meta = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        assert meta == ("2",)  # what older infermeters check: they can still open it
    db.close()
    assert {"run_owners", "energy_configs", "energy_batches", "energy_responses"} <= _tables(path)
    after = path.read_bytes()
    Store(path).close()  # at the current version: opening writes nothing more
    assert path.read_bytes() == after


def test_a_newer_user_version_is_refused_in_one_line(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    Store(path).close()
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    before = path.read_bytes()
    for read_only in (False, True):
        with pytest.raises(UserError, match="newer") as error:
            Store(path, read_only=read_only)
        assert "\n" not in str(error.value)
        assert f"schema version {SCHEMA_VERSION + 1}" in str(error.value)
    assert path.read_bytes() == before


def test_migrations_are_numbered_in_order() -> None:
    from infermeter.store.schema import MIGRATIONS

    assert [m[0] for m in MIGRATIONS] == list(range(1, SCHEMA_VERSION + 1))
