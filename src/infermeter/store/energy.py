"""The store's Words-to-Watts tables (paper 2): configurations, batches and responses.

infermeter.experiments.energy measures; this module is all it reads and writes of the store.
The tables are made by migration 4 of infermeter.store.schema (5 adds two batch columns):

    energy_configs    one row per configuration of a run (CONFIG_COLUMNS): the paper's
                      figures (§III-C) or the reason it is infeasible (Table II)
    energy_batches    one row per batch (BATCH_COLUMNS): its energy window, start and end in
                      Unix seconds, joules, SM/memory utilisation (%), peak memory (GB) and
                      the power limit (W) NVML reported
    energy_responses  one row per prompt answered (RESPONSE_COLUMNS): its tokens, words and
                      its share of its batch window's joules

A configuration is keyed by (batch, max_len, shards, power_cap_w); its batches and responses
by its `config_key` string (infermeter.experiments.energy.EnergyConfig.key). Readers return
DataFrames with the tables' columns, empty where a store opened read-only predates the tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from infermeter.store.db import Store

CONFIG_COLUMNS = [
    "run_id", "dataset", "batch", "max_len", "shards", "power_cap_w", "tokens_per_s",
    "words_per_s", "responses_per_s", "watts", "j_per_token", "j_per_response", "sm_util",
    "mem_util", "peak_mem_gb", "status", "detail",
]  # fmt: skip
RESPONSE_COLUMNS = [
    "run_id", "config_key", "batch_index", "prompt_index", "prompt_tokens", "output_tokens",
    "words", "energy_j", "batch_window_j",
]  # fmt: skip
BATCH_COLUMNS = [
    "run_id", "config_key", "batch_index", "responses", "prompt_width", "runtime_s",
    "window_s", "start_unix", "end_unix", "energy_j", "integrated_j", "method", "sm_util",
    "mem_util", "peak_mem_gb", "power_limit_w",
]  # fmt: skip
# A configuration stored with one of these is not run again on resume.
DONE_STATUSES = ("ok", "infeasible")
# (batch, max_len, shards, power_cap_w or None): a configuration as the store keys it.
ConfigIdent = tuple[int, int, int, "float | None"]

_COLUMNS = {
    "energy_configs": CONFIG_COLUMNS,
    "energy_responses": RESPONSE_COLUMNS,
    "energy_batches": BATCH_COLUMNS,
}


def _read(store: Store, table: str, query: str, params: Sequence[Any] = ()) -> pd.DataFrame:
    if not store.has_table(table):  # an older store opened read-only
        return pd.DataFrame(columns=_COLUMNS[table])
    return store.frame(query, params)


def energy_configs(store: Store, run_id: int | None = None) -> pd.DataFrame:
    """Per-configuration rows (CONFIG_COLUMNS) of every run, or of run `run_id`, ordered by
    run, shards, power cap, max length and batch."""
    where, params = ("", []) if run_id is None else ("WHERE run_id = ?", [run_id])
    return _read(
        store,
        "energy_configs",
        f"SELECT * FROM energy_configs {where} ORDER BY run_id, shards, power_cap_w, max_len, "
        "batch",
        params,
    )


def energy_responses(store: Store, run_id: int, config_key: str | None = None) -> pd.DataFrame:
    """Per-response rows (RESPONSE_COLUMNS) of a run, or of one configuration of it, ordered
    by configuration and prompt."""
    extra, params = ("AND config_key = ?", [run_id, config_key]) if config_key else ("", [run_id])
    return _read(
        store,
        "energy_responses",
        f"SELECT * FROM energy_responses WHERE run_id = ? {extra} "
        "ORDER BY config_key, prompt_index",
        params,
    )


def energy_batches(store: Store, run_id: int | None = None) -> pd.DataFrame:
    """Per-batch energy windows (BATCH_COLUMNS; start/end in Unix seconds, for power
    timelines) of every run or of one, in the order they ran."""
    where, params = ("", []) if run_id is None else ("WHERE run_id = ?", [run_id])
    return _read(
        store,
        "energy_batches",
        f"SELECT * FROM energy_batches {where} ORDER BY run_id, start_unix",
        params,
    )


def done_configs(store: Store, run_id: int) -> set[ConfigIdent]:
    """The configurations of run `run_id` stored as done (DONE_STATUSES), as
    (batch, max_len, shards, power_cap_w or None)."""
    frame = energy_configs(store, run_id)
    frame = frame[frame.status.isin(DONE_STATUSES)]
    return {
        (
            int(r.batch),
            int(r.max_len),
            int(r.shards),
            None if pd.isna(r.power_cap_w) else float(r.power_cap_w),
        )
        for r in frame.itertuples(index=False)
    }


def measured_anything(store: Store, run_id: int) -> bool:
    """Whether run `run_id` stored a measurement: a batch (stored as each finishes, before
    its configuration's row) or an ok configuration; infeasible rows measured nothing."""
    batches = _read(
        store, "energy_batches", "SELECT 1 FROM energy_batches WHERE run_id = ? LIMIT 1", [run_id]
    )
    ok = _read(
        store,
        "energy_configs",
        "SELECT 1 FROM energy_configs WHERE run_id = ? AND status = 'ok' LIMIT 1",
        [run_id],
    )
    return not (batches.empty and ok.empty)


def record_config(store: Store, run_id: int, row: dict[str, Any]) -> None:
    """Store one configuration's row, replacing the one with the same (batch, max_len, shards,
    power_cap_w); `row` maps CONFIG_COLUMNS (run_id aside) to values, a missing one NULL."""
    ident = (run_id, row["batch"], row["max_len"], row["shards"], row.get("power_cap_w"))
    values = {**row, "run_id": run_id}
    with store.transaction() as db:
        db.execute(
            "DELETE FROM energy_configs WHERE run_id = ? AND batch = ? AND max_len = ? "
            "AND shards = ? AND power_cap_w IS ?",
            ident,
        )
        db.execute(
            f"INSERT INTO energy_configs VALUES ({','.join('?' * len(CONFIG_COLUMNS))})",
            [values.get(c) for c in CONFIG_COLUMNS],
        )


def record_batch(store: Store, responses: Sequence[Sequence[Any]], batch: Sequence[Any]) -> None:
    """Store one batch window (a tuple in BATCH_COLUMNS order) and its responses (tuples in
    RESPONSE_COLUMNS order) in one transaction, replacing the same batch of the same run and
    configuration if stored."""
    run_id, config_key, index = batch[:3]
    with store.transaction() as db:
        for table in ("energy_responses", "energy_batches"):
            db.execute(
                f"DELETE FROM {table} WHERE run_id = ? AND config_key = ? AND batch_index = ?",
                (run_id, config_key, index),
            )
        db.executemany(
            f"INSERT INTO energy_responses VALUES ({','.join('?' * len(RESPONSE_COLUMNS))})",
            responses,
        )
        db.execute(
            f"INSERT INTO energy_batches VALUES ({','.join('?' * len(BATCH_COLUMNS))})", batch
        )


def stored_batches(store: Store, run_id: int, config_key: str) -> set[int]:
    """The batch indices of one configuration of a run already stored."""
    frame = _read(
        store,
        "energy_batches",
        "SELECT batch_index FROM energy_batches WHERE run_id = ? AND config_key = ?",
        [run_id, config_key],
    )
    return {int(i) for i in frame.batch_index}


def config_batches(
    store: Store, run_id: int, config_key: str, batches: int
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The first `batches` stored batches of one configuration (in order) and their responses:
    what its row of figures is computed from."""
    params = [run_id, config_key, batches]
    return (
        _read(
            store,
            "energy_batches",
            "SELECT * FROM energy_batches WHERE run_id = ? AND config_key = ? "
            "AND batch_index < ? ORDER BY batch_index",
            params,
        ),
        _read(
            store,
            "energy_responses",
            "SELECT * FROM energy_responses WHERE run_id = ? AND config_key = ? "
            "AND batch_index < ?",
            params,
        ),
    )


def read_energy_configs(path: str | Path) -> pd.DataFrame:
    """Every energy_configs row of the store at `path`, with its run's model, device and date
    (YYYY-MM-DD) and the store's file name in `store`; empty (same columns) if it has none.

    Opened read-only: nothing is written, a store without the table is left as it is. Raises
    UserError for a missing file, or one that is not a store (see Store).
    """
    with Store(path, read_only=True) as store:
        if not store.has_table("energy_configs"):
            return pd.DataFrame(columns=[*CONFIG_COLUMNS, "model", "device", "date", "store"])
        frame = store.frame(
            "SELECT e.*, r.model AS model, r.device AS device, substr(r.created_at, 1, 10) "
            "AS date FROM energy_configs e LEFT JOIN runs r ON r.id = e.run_id"
        )
    return frame.assign(store=Path(path).name)
