"""Merge stores: the runs of many stores (a sweep's jobs, each with its own) into one.

A run is the same run wherever its key is the same (infermeter.store.db.run_key: same spec,
stack, backend options and grid), so a run found in several sources, or merged twice, is one
run in the target, and each of its measurements is kept once, by its natural key: a point or
validation query by (p, o, batch, trial); a Words-to-Watts configuration by (batch, max length,
shards, cap), a batch by (configuration, batch index), a response by (configuration, prompt);
a power sample by (t, GPU); a fit by its content. Where both have one, the target keeps its
own unless it failed and the source's did not (an "error" point, a configuration not "ok" or
"infeasible"): what a rerun measured again replaces what failed, as in one store. A run's
status becomes the better of the two (complete > partial > incomplete > interrupted > running).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from infermeter.errors import UserError
from infermeter.store.db import Store

MERGE_USAGE = "infermeter merge TARGET SOURCES..."  # as `infermeter merge --help` says
# How the stores' own errors (infermeter.store.db.Store) end when merge opens them.
MERGE_FIX = f"merge takes store files: {MERGE_USAGE}"
_RANK = {"complete": 5, "partial": 4, "incomplete": 3, "interrupted": 2, "running": 1}
_MEASURED = ("prompt_tokens", "output_tokens", "batch_size", "trial")
# table -> (natural key columns after run_id, "failed" test on a row, by column name)
_TABLES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "points": (_MEASURED, "status = 'error'"),
    "validation": (_MEASURED, "status = 'error'"),
    "replaced_points": (("source", *_MEASURED, "measured_at", "replaced_at"), None),
    "power_samples": (("t", "gpu"), None),
    "fits": (("quantity", "model_json"), None),
    "energy_configs": (
        ("batch", "max_len", "shards", "power_cap_w"),
        "status NOT IN ('ok', 'infeasible')",
    ),
    "energy_batches": (("config_key", "batch_index"), None),
    "energy_responses": (("config_key", "prompt_index"), None),
}


@dataclass
class MergeReport:
    """What one merge did: runs added or joined, rows added or replaced per table."""

    target: Path
    sources: int = 0
    runs_added: int = 0
    runs_joined: int = 0
    rows_added: dict[str, int] = field(default_factory=dict)
    rows_replaced: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        """The one line `infermeter merge` prints."""
        added = sum(self.rows_added.values())
        replaced = sum(self.rows_replaced.values())
        return (
            f"merged {self.sources} store(s) into {self.target}: {self.runs_added} run(s) "
            f"added, {self.runs_joined} joined; {self.rows_added.get('points', 0)} "
            f"measurement(s) and {added} row(s) in all added, {replaced} failed one(s) replaced"
        )


def _tables(db: sqlite3.Connection) -> set[str]:
    """The tables of the store behind `db`."""
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    """`table`'s columns, in order."""
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def merge_stores(target: str | Path, sources: Sequence[str | Path]) -> MergeReport:
    """Merge every run of `sources` into the store at `target` (made if missing), each
    measurement once, all in one transaction of the target. Each source is opened once,
    read-only (never written: a source of an older schema is read as it is, a table it lacks
    read as empty), and read in one snapshot.

    Raises UserError, in one line that says how merge takes its stores, for a source named
    twice or that is the target itself (checked before any file is opened), one that is
    missing or not a store, or one whose schema is newer than this infermeter's. A failed
    merge leaves the target as it was: the transaction is rolled back, and a target this merge
    made is removed, so a mistyped source never leaves an empty store."""
    report = MergeReport(Path(target))
    paths = _source_paths(Path(target), sources)
    made = not Path(target).exists()
    try:
        with contextlib.ExitStack() as opened:
            dst: sqlite3.Connection | None = None
            for path in paths:
                with Store(path, read_only=True, fix=MERGE_FIX) as source, source.snapshot() as src:
                    if dst is None:  # made only once a source has proved to be a store
                        out = opened.enter_context(Store(target, fix=MERGE_FIX))
                        dst = opened.enter_context(out.transaction())
                    _merge_one(src, dst, report)
                report.sources += 1
    except BaseException:
        if made:
            _remove_store(Path(target))
        raise
    return report


def _source_paths(target: Path, sources: Sequence[str | Path]) -> list[Path]:
    """`sources` as paths, each checked to be a file; UserError for one named twice (by any
    spelling of its path), the target among them, or one that is missing."""
    seen: dict[Path, Path] = {target.resolve(): target}
    paths = []
    for source in sources:
        path = Path(source)
        resolved = path.resolve()
        if resolved == target.resolve():
            raise UserError(
                f"{path} is the target of the merge and one of its sources; drop it from the "
                f"sources ({MERGE_USAGE})"
            )
        if resolved in seen:
            also = f" (also as {seen[resolved]})" if seen[resolved] != path else ""
            raise UserError(
                f"{path} is named twice among the sources{also}; give each store once "
                f"({MERGE_USAGE})"
            )
        if not path.is_file():
            raise UserError(
                f"no store at {path}; give the stores to merge as files ({MERGE_USAGE})"
            )
        seen[resolved] = path
        paths.append(path)
    return paths


def _remove_store(path: Path) -> None:
    """Remove the store file at `path` and the journal files SQLite keeps beside it."""
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm"), Path(f"{path}-journal")):
        name.unlink(missing_ok=True)


def _merge_one(src: sqlite3.Connection, dst: sqlite3.Connection, report: MergeReport) -> None:
    run_columns = _columns(src, "runs")
    run_map: dict[int, int] = {}
    for row in src.execute("SELECT * FROM runs ORDER BY id").fetchall():
        values = dict(zip(run_columns, row, strict=True))
        mine = dst.execute("SELECT id, status FROM runs WHERE key = ?", (values["key"],)).fetchone()
        if mine is None:
            names = [c for c in run_columns if c != "id"]
            cursor = dst.execute(
                f"INSERT INTO runs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
                [values[c] for c in names],
            )
            run_map[values["id"]] = int(cursor.lastrowid)  # type: ignore[arg-type]
            report.runs_added += 1
            continue
        run_map[values["id"]] = int(mine[0])
        report.runs_joined += 1
        if _RANK.get(values["status"], 0) > _RANK.get(mine[1], 0):
            dst.execute(
                "UPDATE runs SET status = ?, backend_json = ?, updated_at = max(updated_at, ?) "
                "WHERE id = ?",
                (values["status"], values["backend_json"], values["updated_at"], mine[0]),
            )
    have = _tables(src)
    for table, (key, failed) in _TABLES.items():
        if table in have:
            _merge_table(src, dst, table, key, failed, run_map, report)


def _merge_table(
    src: sqlite3.Connection,
    dst: sqlite3.Connection,
    table: str,
    key: tuple[str, ...],
    failed: str | None,
    run_map: dict[int, int],
    report: MergeReport,
) -> None:
    """Copy `table`'s rows of the mapped runs: new keys added; where the target's row failed
    and the source's did not, the source's replaces it."""
    src_columns = _columns(src, table)
    columns = [c for c in _columns(dst, table) if c in src_columns and c != "id"]
    select = ", ".join(columns)
    flag = f", ({failed})" if failed else ", 0"
    for old, new in run_map.items():
        existing = {
            tuple(row[:-1]): bool(row[-1])
            for row in dst.execute(
                f"SELECT {', '.join(key)}{flag} FROM {table} WHERE run_id = ?", (new,)
            )
        }
        rows = src.execute(f"SELECT {select}{flag} FROM {table} WHERE run_id = ?", (old,))
        added = replaced = 0
        for *values, bad in rows.fetchall():
            record = dict(zip(columns, values, strict=True))
            record["run_id"] = new
            ident = tuple(record[c] for c in key)
            if ident in existing and not (existing[ident] and not bad):
                continue  # the target's is as good: keep it
            if ident in existing:
                where = " AND ".join(f"{c} IS ?" for c in key)
                dst.execute(f"DELETE FROM {table} WHERE run_id = ? AND {where}", (new, *ident))
                replaced += 1
            else:
                added += 1
            dst.execute(
                f"INSERT INTO {table} ({select}) VALUES ({', '.join('?' * len(columns))})",
                [record[c] for c in columns],
            )
            existing[ident] = bool(bad)
        report.rows_added[table] = report.rows_added.get(table, 0) + added
        report.rows_replaced[table] = report.rows_replaced.get(table, 0) + replaced
