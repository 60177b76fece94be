"""The store's schema: one version number, reached by numbered migrations applied in order.

A store records the version it is at in SQLite's `PRAGMA user_version`; the row
`meta.schema_version` is what infermeters from before this module check (META_SCHEMA_VERSION).
Opening a store for writing applies, in one transaction, every migration above its version;
opening it read-only applies none (a table an older store lacks reads as empty). A store whose
version is above SCHEMA_VERSION is refused (infermeter.store.db.Store), read-only or not.

Stores written before user_version was used (user_version 0 beside a `meta` table) start from
their `meta.schema_version` (1 or 2). Those versions made the run-owner and Words-to-Watts
tables when first needed, whatever the version, so every migration is idempotent: a table is
created only if absent and a column added only if missing.

Add a migration by appending (next number, what it does, SQL or a function of the connection)
to MIGRATIONS; never edit or reorder one already released.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

# A measured trial's columns after its run (and, in replaced_points, its source table).
_TRIAL = """
    prompt_tokens INTEGER NOT NULL,
    output_tokens INTEGER NOT NULL,
    batch_size INTEGER NOT NULL,
    trial INTEGER NOT NULL,
    runtime_s REAL,
    ttft_s REAL,
    energy_j REAL,
    output_tokens_actual INTEGER,
    status TEXT NOT NULL,
    detail TEXT,
    extra_json TEXT,
    measured_at TEXT NOT NULL"""
# A measured trial: the grid's points and the validation queries have the same columns.
_MEASURED = f"""
    run_id INTEGER NOT NULL REFERENCES runs(id),{_TRIAL},
    PRIMARY KEY (run_id, prompt_tokens, output_tokens, batch_size, trial)
"""

_RUNS = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL,
    spec_json TEXT NOT NULL,
    stack_json TEXT NOT NULL,
    backend TEXT NOT NULL,
    backend_json TEXT NOT NULL,
    grid_json TEXT NOT NULL,
    device TEXT NOT NULL,
    commit_sha TEXT,
    infermeter_version TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    status TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS points ({measured});
CREATE TABLE IF NOT EXISTS power_samples (
    run_id INTEGER NOT NULL REFERENCES runs(id),
    t REAL NOT NULL,
    gpu INTEGER NOT NULL,
    power_w REAL NOT NULL,
    sm_util REAL,
    mem_util REAL
);
CREATE TABLE IF NOT EXISTS fits (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id INTEGER NOT NULL REFERENCES runs(id),
    quantity TEXT NOT NULL,
    model_json TEXT NOT NULL,
    created_at TEXT NOT NULL
);
""".replace("{measured}", _MEASURED)

_VALIDATION = """
CREATE TABLE IF NOT EXISTS validation ({measured});
CREATE TABLE IF NOT EXISTS replaced_points (
    run_id INTEGER NOT NULL,
    source TEXT NOT NULL,{trial},
    replaced_at TEXT NOT NULL
);
""".replace("{measured}", _MEASURED).replace("{trial}", _TRIAL)

# Who measures a run now (see infermeter.store.ownership).
_OWNERS = """
CREATE TABLE IF NOT EXISTS run_owners (key TEXT PRIMARY KEY, pid INTEGER NOT NULL,
    host TEXT NOT NULL, since TEXT NOT NULL);
"""

# The Words-to-Watts tables (infermeter.store.energy), as first released: energy_batches
# gained peak_mem_gb and power_limit_w in migration 5.
_ENERGY = """
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
);
CREATE INDEX IF NOT EXISTS energy_configs_run ON energy_configs(run_id);
CREATE INDEX IF NOT EXISTS energy_responses_run ON energy_responses(run_id, config_key);
CREATE INDEX IF NOT EXISTS energy_batches_run ON energy_batches(run_id, config_key);
"""


def _batch_peaks(db: sqlite3.Connection) -> None:
    """energy_batches gains each batch's peak memory and power limit (if it lacks them)."""
    have = {row[1] for row in db.execute("PRAGMA table_info(energy_batches)")}
    for column in ("peak_mem_gb", "power_limit_w"):
        if column not in have:
            db.execute(f"ALTER TABLE energy_batches ADD COLUMN {column} REAL")


Migration = tuple[int, str, "str | Callable[[sqlite3.Connection], None]"]

MIGRATIONS: list[Migration] = [
    (1, "runs, their points, power samples and fits", _RUNS),
    (2, "validation queries, and replaced_points for trials measured again", _VALIDATION),
    (3, "run_owners: which process measures a run", _OWNERS),
    (4, "the Words-to-Watts tables: configurations, batches, responses", _ENERGY),
    (5, "energy_batches: peak_mem_gb and power_limit_w", _batch_peaks),
]
SCHEMA_VERSION = MIGRATIONS[-1][0]
# What meta.schema_version says, for infermeters from before user_version: they refuse a store
# whose meta is above the 2 they know. Migrations 3-5 only add what those versions made
# themselves when first needed, so they still read and write a store at 5: it stays 2. A
# migration they could not live with sets it to its own number.
META_SCHEMA_VERSION = 2


def stored_version(db: sqlite3.Connection) -> int:
    """The schema version of the store behind `db`: its user_version, or for a store from
    before user_version its meta.schema_version; 0 for an empty file (nothing read fails)."""
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    has_meta = db.execute(
        "SELECT 1 FROM sqlite_master WHERE type='table' AND name='meta'"
    ).fetchone()
    if has_meta:
        row = db.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone()
        if row is not None:
            version = max(version, int(row[0]))
    return version


def migrate(db: sqlite3.Connection, version: int) -> int:
    """Apply every migration above `version`, in order, on `db` (inside the caller's
    transaction); record the new version in user_version (and META_SCHEMA_VERSION in meta, for
    older infermeters). Returns it."""
    for number, _, step in MIGRATIONS:
        if number <= version:
            continue
        if callable(step):
            step(db)
        else:
            for statement in step.split(";"):
                if statement.strip():
                    db.execute(statement)
    db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    db.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
        (str(META_SCHEMA_VERSION),),
    )
    return SCHEMA_VERSION
