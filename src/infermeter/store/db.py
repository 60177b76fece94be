"""The store: every run and every measured point in one SQLite file, written as it is taken.

Each point is committed before the next one runs (WAL mode, one transaction per point), so a
profile killed at any moment loses at most the point in flight, and rerunning the same profile
resumes: a run is identified by a key over (model spec, stack, backend options, grid), and
points already stored with status "ok" are never measured again.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from infermeter.backends.base import Measurement, Point
from infermeter.errors import UserError
from infermeter.model.cost_model import CostModel
from infermeter.store import ownership, schema
from infermeter.store.ownership import Lease
from infermeter.store.provenance import git_commit, package_version
from infermeter.store.provenance import utc_date as utc_now  # ISO 8601 UTC, to the second
from infermeter.store.schema import SCHEMA_VERSION

# The store a command uses when none is named: $INFERMETER_STORE, else ./infermeter.sqlite.
DEFAULT_STORE = os.environ.get("INFERMETER_STORE", "infermeter.sqlite")
# How a store's one-line errors end, for the verbs that name it with --store.
STORE_FIX = "pass another --store PATH"
# What Store.runs counts for an energy run, said under a table that shows one.
ENERGY_COUNTS = "an energy run's points are its configurations, its measurements its batches"

__all__ = [
    "DEFAULT_STORE",
    "ENERGY_COUNTS",
    "SCHEMA_VERSION",
    "RunIdentity",
    "RunRecord",
    "Store",
    "require_store",
    "run_key",
    "run_kind",
    "utc_now",
]


def _opt(value: Any) -> float | None:
    return None if value is None or value != value else float(value)


def _is_read_only(exc: sqlite3.Error) -> bool:
    text = str(exc).lower()
    return "readonly" in text or "read-only" in text or "unable to open" in text


def run_key(parts: dict[str, Any]) -> str:
    """A stable identity for a profile: same inputs, same key, so a rerun resumes."""
    canonical = json.dumps(parts, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class RunIdentity:
    """What a run is recorded with (Store.open_run's arguments): `key` identifies it (same
    key, same run: see run_key); the rest is stored with it (dicts as JSON), `device` in words."""

    key: str
    model: str
    spec: dict[str, Any]
    stack: dict[str, Any]
    backend: str
    backend_info: dict[str, Any]
    grid: dict[str, Any]
    device: str


@dataclass(frozen=True, kw_only=True)
class RunRecord(RunIdentity):
    """A stored run: its identity, its id in the store, the infermeter commit and version that
    recorded it, when (ISO 8601, UTC), and its status ("running", "complete", "partial",
    "interrupted"; Store.runs shows a dead process's "running" as "interrupted")."""

    id: int
    commit_sha: str | None
    infermeter_version: str
    created_at: str
    updated_at: str
    status: str

    @property
    def kind(self) -> str:
        """What measured the run (run_kind of its grid)."""
        return run_kind(self.grid)


def run_kind(grid: dict[str, Any]) -> str:
    """What measured a run, as its grid records it: "load", "load-concurrent" or "load-rate"
    (`infermeter load`), "energy" (`infermeter energy`), or "profile" (a profile grid, of a
    local stack or an API, records no kind)."""
    return str(grid.get("kind") or grid.get("experiment") or "profile")


def require_store(path: str | Path) -> None:
    """Refuse, in one line, a store path that is missing or a folder: what a verb that reads
    or adds to an existing store checks before opening it, so a mistyped --store is never
    made into an empty store."""
    path = Path(path)
    if not path.exists():
        raise UserError(
            f"store {path} does not exist; check --store (profiles go into "
            "infermeter.sqlite unless told otherwise)"
        )
    if path.is_dir():
        raise UserError(f"store {path} is a folder; pass the store's .sqlite file")


class Store:
    """A SQLite file of runs, points and fits.

    Opened for writing, a store of an older schema is brought up to SCHEMA_VERSION by the
    migrations of infermeter.store.schema (a new file gets them all). Opening raises UserError
    for a file that is not a store, a store newer than this infermeter, or one that cannot be
    opened or written.

    `read_only=True` is how the verbs that only read open it: a missing file is an error (never
    an empty store made on the spot), nothing is written (no migration, no journal mode), and a
    store on read-only media or in a read-only folder opens all the same.

    `fix` ends those errors: how the verb that opens it takes another store (STORE_FIX: its
    --store option; `merge` names its stores as arguments).
    """

    def __init__(self, path: str | Path, read_only: bool = False, fix: str = STORE_FIX) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.fix = fix
        self._tables: set[str] | None = None
        self._leases: dict[str, Lease | None] = {}
        if read_only:
            self._db = self._open_read_only()
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise UserError(f"cannot open store {self.path}: {exc}; {self.fix}") from exc
        self._db.row_factory = sqlite3.Row
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._check_schema()
        except sqlite3.OperationalError as exc:
            self._db.close()
            if _is_read_only(exc):
                raise self._read_only_error(exc) from exc
            raise UserError(f"{self.path} is not an infermeter store ({exc}); {self.fix}") from exc
        except sqlite3.DatabaseError as exc:
            self._db.close()
            raise UserError(f"{self.path} is not an infermeter store ({exc}); {self.fix}") from exc

    def _read_only_error(self, exc: Exception) -> UserError:
        return UserError(
            f"cannot write to store {self.path} ({exc}): it is read-only or in a read-only "
            f"folder; copy it somewhere writable or {self.fix}"
        )

    def _open_read_only(self) -> sqlite3.Connection:
        """A connection that writes nothing. A store in WAL mode gets -wal and -shm files
        beside it while any connection is open; the last one to close removes them, unless it
        was opened read-only (sqlite.org/wal.html), which left them behind every `show`. So
        where no -wal holds frames yet to be folded into the file (a writer running, or one
        killed), the store is opened for writing with SQLite's query_only (it refuses the
        statements that change the database; the close then folds in nothing and removes
        the files); otherwise, or where the file cannot be written (SQLite then opens it
        read-only, files left as before), read-only; on read-only media, where even the
        shared-memory file cannot be made, immutable (nothing can change it)."""
        require_store(self.path)
        wal = self.path.with_name(self.path.name + "-wal")
        pending = wal.exists() and wal.stat().st_size > 0
        read_only = ("mode=ro", "mode=ro&immutable=1")
        last: Exception | None = None
        for flags in read_only if pending else ("mode=rw", *read_only):
            uri = f"{self.path.resolve().as_uri()}?{flags}"
            try:
                db = sqlite3.connect(uri, uri=True, timeout=30, isolation_level=None)
            except sqlite3.Error as exc:  # e.g. a file this user may not read
                last = exc
                continue
            db.row_factory = sqlite3.Row
            try:
                db.execute("PRAGMA query_only=ON")
                self._db = db
                self._check_schema()
                return db
            except UserError:
                db.close()
                raise
            except sqlite3.OperationalError as exc:
                db.close()
                last = exc
            except sqlite3.DatabaseError as exc:
                db.close()
                raise UserError(
                    f"{self.path} is not an infermeter store ({exc}); {self.fix}"
                ) from exc
        raise UserError(f"cannot read store {self.path} ({last}); check the file's permissions")

    def _check_schema(self) -> None:
        """Refuse a file that is not a store, or a store newer than this code; bring an older
        store up to SCHEMA_VERSION through infermeter.store.schema's migrations (never when
        read-only: an older store is then read as it is, a missing table reading empty)."""
        version = schema.stored_version(self._db)
        if version > schema.SCHEMA_VERSION:
            raise UserError(
                f"store {self.path} has schema version {version}, newer than this "
                f"infermeter's {schema.SCHEMA_VERSION}; update infermeter to the version that "
                f"wrote it (git pull, then ./scripts/setup.sh) or {self.fix}"
            )
        if version == schema.SCHEMA_VERSION:
            return
        if self._tables_but_no_meta():
            raise UserError(f"{self.path} is a SQLite file but not an infermeter store; {self.fix}")
        if self.read_only:
            if not self.has_table("meta"):
                raise UserError(f"{self.path} is empty, not an infermeter store; {self.fix}")
            return
        with self.transaction():  # again inside: another process may have just migrated it
            schema.migrate(self._db, schema.stored_version(self._db))
        self._tables = None

    def _tables_but_no_meta(self) -> bool:
        rows = self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")
        names = {r[0] for r in rows}
        return bool(names) and "meta" not in names

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        # BEGIN inside the try: a Ctrl-C landing just after it (it may wait for the lock) must
        # not leave a transaction open for the next one to trip over.
        """A write transaction (BEGIN IMMEDIATE, waiting up to 30 s for the lock) yielding the
        connection: committed if the block returns, rolled back if it raises. Raises UserError on
        a store opened read-only or on read-only media."""
        if self.read_only:
            raise UserError(f"store {self.path} was opened read-only; this verb cannot write it")
        try:
            self._db.execute("BEGIN IMMEDIATE")
            yield self._db
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            if _is_read_only(exc):
                raise self._read_only_error(exc) from exc
            raise
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction yielding the connection: every SELECT inside sees the store as
        it was at the first one, whatever another process commits meanwhile. Works on a store
        opened read-only (what `merge` reads its sources through); never writes."""
        self._db.execute("BEGIN")
        try:
            yield self._db
        finally:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")

    def frame(self, query: str, params: Sequence[Any] = ()) -> pd.DataFrame:
        """The rows of one SELECT as a DataFrame, for the store's own modules (store/energy.py
        and the like): SQL stays inside infermeter.store."""
        return pd.read_sql_query(query, self._db, params=list(params))

    def close(self) -> None:
        """Release this store's run claims and close the connection."""
        for lease in self._leases.values():
            if lease is not None:
                lease.release()
        self._leases.clear()
        self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- runs --------------------------------------------------------------------------
    def claim(self, key: str) -> None:
        """Own the run `key` until this store is closed, or refuse in one line naming the
        process that owns it (see infermeter.store.ownership). Holding it twice is a no-op."""
        if key in self._leases:
            return
        try:
            lease = ownership.acquire(self.path, key)
        except ownership.RunBusy as busy:
            raise UserError(self._busy_message(key, busy.here)) from None
        self._leases[key] = lease
        try:
            with self.transaction():
                self._db.execute(
                    "INSERT OR REPLACE INTO run_owners(key, pid, host, since) VALUES (?,?,?,?)",
                    (key, os.getpid(), socket.gethostname(), utc_now()),
                )
        except BaseException:
            if lease is not None:
                lease.release()
            del self._leases[key]
            raise

    def _busy_message(self, key: str, here: bool) -> str:
        row = self._db.execute("SELECT id, model FROM runs WHERE key = ?", (key,)).fetchone()
        what = f"run {row['id']} ({row['model']})" if row else "this run"
        if here:
            return f"{what} is already open in this process; close the other Store first"
        owner = None
        if self.has_table("run_owners"):
            owner = self._db.execute(
                "SELECT pid, host, since FROM run_owners WHERE key = ?", (key,)
            ).fetchone()
        who = (
            f"process {owner['pid']} on {owner['host']} (since {owner['since']})"
            if owner
            else "another process"
        )
        return (
            f"{what} in {self.path} is being measured by {who}; wait for it to finish, or stop "
            "it and rerun this command to resume where it stopped"
        )

    def find_run(self, key: str) -> RunRecord | None:
        """The run with this key, if stored (nothing is created)."""
        row = self._db.execute("SELECT id FROM runs WHERE key = ?", (key,)).fetchone()
        return self.get_run(int(row["id"])) if row else None

    def open_run(
        self,
        *,
        key: str,
        model: str,
        spec: dict[str, Any],
        stack: dict[str, Any],
        backend: str,
        backend_info: dict[str, Any],
        grid: dict[str, Any],
        device: str,
        commit_sha: str | None = None,
        version: str | None = None,
    ) -> tuple[RunRecord, bool]:
        """The run with this key, created if new. Returns (run, resumed).

        The infermeter commit and version default to those of the code running now.
        """
        self.claim(key)
        if commit_sha is None:
            commit_sha = git_commit()
        if version is None:
            version = package_version("infermeter") or "unknown"
        existing = self._db.execute("SELECT * FROM runs WHERE key = ?", (key,)).fetchone()
        now = utc_now()
        if existing:
            with self.transaction():
                self._db.execute(
                    "UPDATE runs SET status='running', updated_at=? WHERE id=?",
                    (now, existing["id"]),
                )
            return self.get_run(existing["id"]), True
        with self.transaction():
            cursor = self._db.execute(
                "INSERT INTO runs(key, model, spec_json, stack_json, backend, backend_json, "
                "grid_json, device, commit_sha, infermeter_version, created_at, updated_at, "
                "status) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                (
                    key,
                    model,
                    json.dumps(spec, sort_keys=True),
                    json.dumps(stack, sort_keys=True),
                    backend,
                    json.dumps(backend_info, sort_keys=True),
                    json.dumps(grid, sort_keys=True),
                    device,
                    commit_sha,
                    version,
                    now,
                    now,
                    "running",
                ),
            )
        return self.get_run(int(cursor.lastrowid)), False

    def discard_if_empty(self, run_id: int) -> bool:
        """Delete a run that holds nothing measured (a start-up that failed after the run was
        recorded: an API's calibration, say); its id is given to the next run. Returns whether
        it was deleted."""
        with self.transaction():
            if any(
                self.holds(t, run_id) for t in ("points", "validation", "power_samples", "fits")
            ):
                return False
            self._db.execute("DELETE FROM runs WHERE id = ?", (run_id,))
            self._db.execute(
                "UPDATE sqlite_sequence SET seq = (SELECT coalesce(max(id), 0) FROM runs) "
                "WHERE name = 'runs'"
            )
        return True

    def set_run_status(self, run_id: int, status: str) -> None:
        """Set run `run_id`'s status ("running", "complete", "partial", "interrupted") and its
        updated_at."""
        with self.transaction():
            self._db.execute(
                "UPDATE runs SET status=?, updated_at=? WHERE id=?", (status, utc_now(), run_id)
            )

    def update_run_backend(self, run_id: int, backend_info: dict[str, Any]) -> None:
        """Record what the backend reported once prepared (versions, device, dtype)."""
        with self.transaction():
            self._db.execute(
                "UPDATE runs SET backend_json=? WHERE id=?",
                (json.dumps(backend_info, sort_keys=True, default=str), run_id),
            )

    def get_run(self, run_id: int) -> RunRecord:
        """The run with id `run_id`; UserError naming `infermeter runs` if there is none."""
        row = self._db.execute("SELECT * FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is None:
            raise UserError(f"no run {run_id} in {self.path}; list runs with `infermeter runs`")
        return RunRecord(
            id=row["id"],
            key=row["key"],
            model=row["model"],
            spec=json.loads(row["spec_json"]),
            stack=json.loads(row["stack_json"]),
            backend=row["backend"],
            backend_info=json.loads(row["backend_json"]),
            grid=json.loads(row["grid_json"]),
            device=row["device"],
            commit_sha=row["commit_sha"],
            infermeter_version=row["infermeter_version"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            status=row["status"],
        )

    def runs(self) -> pd.DataFrame:
        """One row per run: its kind (run_kind: profile, load..., energy), its points, its
        measurements and those that are ok. A profile's or a load's points are its distinct
        (prompt size, output length, batch) and its measurements a point's trials or a load's
        requests; an energy run's points are its configurations and its measurements the
        batches it stored (each one energy window, stored only once measured, so all ok; a
        configuration that failed says so in its status, in `infermeter show RUN`). A run
        marked running whose process is gone (no one holds its lock: killed, or its machine
        rebooted) shows as interrupted. These count stored rows: a timed load's warm-up
        requests are among them (its table in `show` leaves them out)."""
        query = (
            "SELECT r.id, r.key, r.model, r.grid_json, r.backend, r.device, r.status, "
            "r.created_at, "
            "count(DISTINCT p.prompt_tokens || ',' || p.output_tokens || ',' || p.batch_size) "
            "AS points, count(p.run_id) AS measurements, "
            "coalesce(sum(p.status = 'ok'), 0) AS ok_measurements "
            "FROM runs r LEFT JOIN points p ON p.run_id = r.id GROUP BY r.id ORDER BY r.id"
        )
        frame = pd.read_sql_query(query, self._db)
        kinds = [run_kind(json.loads(grid)) for grid in frame["grid_json"]]
        frame.insert(frame.columns.get_loc("grid_json"), "kind", kinds)
        self._count_energy_runs(frame)
        running = frame["status"] == "running"
        for index in frame.index[running]:
            if ownership.is_owned(self.path, frame.at[index, "key"]) is False:
                frame.at[index, "status"] = "interrupted"
        return frame.drop(columns=["key", "grid_json"])

    def _count_energy_runs(self, frame: pd.DataFrame) -> None:
        """Set, in place, the energy runs' points to their configurations and their
        measurements (all ok) to their stored batches (see runs)."""
        energy = frame["kind"] == "energy"
        if not energy.any():
            return
        counts: dict[str, dict[int, int]] = {}
        for table in ("energy_configs", "energy_batches"):
            rows = (
                self._db.execute(f"SELECT run_id, count(*) FROM {table} GROUP BY run_id")
                if self.has_table(table)
                else []
            )
            counts[table] = {int(run_id): int(n) for run_id, n in rows}
        ids = frame.loc[energy, "id"].astype(int)
        batches = ids.map(lambda i: counts["energy_batches"].get(i, 0))
        frame.loc[energy, "points"] = ids.map(lambda i: counts["energy_configs"].get(i, 0))
        frame.loc[energy, "measurements"] = batches
        frame.loc[energy, "ok_measurements"] = batches

    def latest_run_id(self) -> int:
        """The id of the newest run; UserError if the store has none."""
        row = self._db.execute("SELECT max(id) AS id FROM runs").fetchone()
        if row["id"] is None:
            raise UserError(f"no runs in {self.path}; profile one with `infermeter profile`")
        return int(row["id"])

    # ---- points ------------------------------------------------------------------------
    def finished_points(self, run_id: int) -> set[Point]:
        """The grid trials stored (errors excepted: those are measured again)."""
        return self._finished("points", run_id)

    def finished_validation(self, run_id: int) -> set[Point]:
        """The validation trials stored (errors excepted)."""
        return self._finished("validation", run_id)

    def _finished(self, table: str, run_id: int) -> set[Point]:
        if not self.has_table(table):
            return set()
        rows = self._db.execute(
            f"SELECT prompt_tokens, output_tokens, batch_size, trial FROM {table} "
            "WHERE run_id = ? AND status != 'error'",
            (run_id,),
        ).fetchall()
        return {Point(r[0], r[1], r[2], r[3]) for r in rows}

    def record_point(self, run_id: int, point: Point, m: Measurement) -> None:
        """Commit one measurement durably before the caller moves on."""
        self.record_points(run_id, [(point, m)])

    def record_points(
        self, run_id: int, measured: list[tuple[Point, Measurement]], validation: bool = False
    ) -> None:
        """Commit the trials of one point together (grid points, or validation queries)."""
        table = "validation" if validation else "points"
        now = utc_now()
        rows = [
            (
                run_id,
                point.prompt_tokens,
                point.output_tokens,
                point.batch_size,
                point.trial,
                m.runtime_s,
                m.ttft_s,
                m.energy_j,
                m.output_tokens_actual,
                m.status,
                m.detail,
                json.dumps(m.extra, sort_keys=True) if m.extra else None,
                now,
            )
            for point, m in measured
        ]
        with self.transaction():
            # Nothing measured is lost: a trial measured again (it failed before) keeps the
            # record it replaces.
            self._db.executemany(
                f"INSERT INTO replaced_points SELECT run_id, '{table}', prompt_tokens, "
                "output_tokens, batch_size, trial, runtime_s, ttft_s, energy_j, "
                "output_tokens_actual, status, detail, extra_json, measured_at, ? "
                f"FROM {table} WHERE run_id = ? AND prompt_tokens = ? AND output_tokens = ? "
                "AND batch_size = ? AND trial = ?",
                [(now, *row[:5]) for row in rows],
            )
            self._db.executemany(
                f"INSERT OR REPLACE INTO {table} VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows
            )
            self._db.execute("UPDATE runs SET updated_at=? WHERE id=?", (now, run_id))

    def record_samples(self, run_id: int, samples: pd.DataFrame) -> None:
        """Append power/utilisation samples (t in Unix seconds)."""
        if samples.empty:
            return
        rows = [
            (run_id, float(r.t), int(r.gpu), float(r.power_w), _opt(r.sm_util), _opt(r.mem_util))
            for r in samples.itertuples(index=False)
        ]
        with self.transaction():
            self._db.executemany("INSERT INTO power_samples VALUES (?,?,?,?,?,?)", rows)

    def samples(self, run_id: int) -> pd.DataFrame:
        """Run `run_id`'s power samples: t (Unix s), gpu (index), power_w (W), sm_util and mem_util
        (%, NaN if unread), ordered by time and GPU."""
        return pd.read_sql_query(
            "SELECT t, gpu, power_w, sm_util, mem_util FROM power_samples WHERE run_id = ? "
            "ORDER BY t, gpu",
            self._db,
            params=(run_id,),
        )

    def points(self, run_id: int) -> pd.DataFrame:
        """The grid's trials, one row each (the columns of the points table)."""
        return self._table("points", run_id)

    def replaced_points(self, run_id: int) -> pd.DataFrame:
        """Records of trials measured again (failed attempts), with when they were replaced."""
        return pd.read_sql_query(
            "SELECT * FROM replaced_points WHERE run_id = ? ORDER BY replaced_at",
            self._db,
            params=(run_id,),
        )

    def validation(self, run_id: int) -> pd.DataFrame:
        """The validation queries' trials, with the same columns as points."""
        return self._table("validation", run_id)

    def has_table(self, table: str) -> bool:
        """Whether the store holds `table` (an older store read as it is may lack one)."""
        if self._tables is None or table not in self._tables:
            rows = self._db.execute("SELECT name FROM sqlite_master WHERE type='table'")
            self._tables = {r[0] for r in rows}
        return table in self._tables

    def holds(self, table: str, run_id: int) -> bool:
        """Whether `table` holds a row of run `run_id` (False where the store lacks the table):
        the query stops at the first row (found through the key's index in points and
        validation), where `points(run_id).empty` would load them all."""
        return self.has_table(table) and (
            self._db.execute(
                f"SELECT 1 FROM {table} WHERE run_id = ? LIMIT 1", (run_id,)
            ).fetchone()
            is not None
        )

    def _table(self, table: str, run_id: int) -> pd.DataFrame:
        if not self.has_table(table):  # an older store read as it is: the points' columns
            return self.frame("SELECT * FROM points WHERE 0")
        return pd.read_sql_query(
            f"SELECT * FROM {table} WHERE run_id = ? "
            "ORDER BY prompt_tokens, output_tokens, batch_size, trial",
            self._db,
            params=(run_id,),
        )

    # ---- fits --------------------------------------------------------------------------
    def record_fit(self, run_id: int, model: CostModel) -> int:
        """Store a fitted cost model of run `run_id` (quantity and JSON); returns the fit's id."""
        with self.transaction():
            cursor = self._db.execute(
                "INSERT INTO fits(run_id, quantity, model_json, created_at) VALUES (?,?,?,?)",
                (run_id, model.quantity, json.dumps(model.to_dict()), utc_now()),
            )
        return int(cursor.lastrowid)

    def latest_fits(self, run_id: int) -> list[CostModel]:
        """The newest stored model of each (quantity, batch size): runtime first."""
        rows = self._db.execute(
            "SELECT model_json FROM fits WHERE run_id = ? ORDER BY id DESC", (run_id,)
        ).fetchall()
        newest: dict[tuple[str, int], CostModel] = {}
        for row in rows:
            model = CostModel.from_dict(json.loads(row["model_json"]))
            newest.setdefault((model.quantity, model.batch_size), model)
        order = {"runtime_s": 0, "energy_j": 1}
        return [newest[k] for k in sorted(newest, key=lambda k: (order.get(k[0], 2), k[1]))]

    def latest_fit(self, run_id: int, quantity: str = "runtime_s") -> CostModel | None:
        """The newest stored model of run `run_id` for `quantity` ("runtime_s" or "energy_j"), or
        None."""
        row = self._db.execute(
            "SELECT model_json FROM fits WHERE run_id = ? AND quantity = ? "
            "ORDER BY id DESC LIMIT 1",
            (run_id, quantity),
        ).fetchone()
        return CostModel.from_dict(json.loads(row["model_json"])) if row else None
