"""Merge stores: the runs of many stores (a sweep's jobs, each with its own) into one.

A source's run joins the target's run of the same key (infermeter.store.db.run_key: same spec,
stack, backend options and grid) where the two are one run, copied or seen at two moments:
every measurement both hold is identical, or one of the two failed (a trial measured again,
as a resumed run does), and one of them holds every measurement the other holds. Joined, each
row is kept once, by its natural key: a point or validation query by (p, o, batch, trial); a
Words-to-Watts configuration by (batch, max length, shards, cap), a batch by (configuration,
batch index), a response by (configuration, prompt); a power sample by (t, GPU); a fit by its
content; a replaced trial by (table, p, o, batch, trial, measured_at). Where one side failed
and the other did not, the table keeps the one that did not; a failed trial set aside is kept
in replaced_points, as in one store (a failed configuration is replaced, as in one store). A
fit is copied only where the source holds every measurement of the joined run, so a run's
newest fit describes its points; a source's fit of fewer points is left out, and said.

Two runs of the same settings measured apart (a measurement both hold differs and neither
failed, or each holds measurements the other lacks) are not one run: the source's is added as
a run of its own with all its rows and fits, keyed KEY+N (N = 2, 3, ...: the first free), so
nothing measured is dropped. A source merged again finds the run it made and adds nothing. A
run's status becomes the better of the two (complete > partial > incomplete > interrupted >
running).
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infermeter.errors import UserError
from infermeter.store.db import Store, utc_now
from infermeter.units import plural

MERGE_USAGE = "infermeter merge TARGET SOURCES..."  # as `infermeter merge --help` says
# How the stores' own errors (infermeter.store.db.Store) end when merge opens them.
MERGE_FIX = f"merge takes store files: {MERGE_USAGE}"
_RANK = {"complete": 5, "partial": 4, "incomplete": 3, "interrupted": 2, "running": 1}
_MEASURED = ("prompt_tokens", "output_tokens", "batch_size", "trial")
# table -> (natural key columns after run_id, "failed" test on a row, by column name), in the
# order merged: replaced_points before the trials, so a failed trial set aside by this merge
# is found among those the source already kept, not kept twice.
_TABLES: dict[str, tuple[tuple[str, ...], str | None]] = {
    "replaced_points": (("source", *_MEASURED, "measured_at"), None),
    "points": (_MEASURED, "status = 'error'"),
    "validation": (_MEASURED, "status = 'error'"),
    "power_samples": (("t", "gpu"), None),
    "fits": (("quantity", "model_json"), None),
    "energy_configs": (
        ("batch", "max_len", "shards", "power_cap_w"),
        "status NOT IN ('ok', 'infeasible')",
    ),
    "energy_batches": (("config_key", "batch_index"), None),
    "energy_responses": (("config_key", "prompt_index"), None),
}
# The tables of what was measured: two runs are one only where the rows they share agree.
_COMPARED = (
    "points", "validation", "power_samples", "energy_configs", "energy_batches",
    "energy_responses",
)  # fmt: skip
_TRIALS = ("points", "validation")  # a failed trial set aside is kept in replaced_points

# A table's rows of one run: natural key -> (the values of the columns merged, failed).
Rows = dict[tuple[Any, ...], tuple[tuple[Any, ...], bool]]
# A table as merged: (the columns both stores have, run_id and id aside; key; failed test).
Layout = tuple[list[str], tuple[str, ...], str | None]


@dataclass
class SourceMerge:
    """What merging one source store did. Its runs: `runs_new` (no run of the same settings
    in the target), `runs_joined` (one run with one there), `runs_apart` (one there has the
    same settings but other measurements: added as a run of its own). Rows, by table:
    `copied` into the target, `present` (already there, identical: skipped), `superseded`
    (a failed row set aside for the other side's measured one); `stale_fits`: fits of fewer
    points than the joined run holds, left out."""

    path: Path
    runs_new: int = 0
    runs_joined: int = 0
    runs_apart: int = 0
    copied: Counter[str] = field(default_factory=Counter)
    present: Counter[str] = field(default_factory=Counter)
    superseded: Counter[str] = field(default_factory=Counter)
    stale_fits: int = 0

    def line(self, target: Path) -> str:
        """The line `infermeter merge` prints for this source merged into `target`."""
        other = sum(n for table, n in self.copied.items() if table not in _TRIALS)
        why = " (same settings as a run there, other measurements)" if self.runs_apart else ""
        text = (
            f"merged {self.path} into {target}: {plural(self.runs_new, 'new run')}, "
            f"{plural(self.runs_joined, 'run')} joined, {plural(self.runs_apart, 'run')} added "
            f"apart{why}; copied {plural(self.copied['points'], 'measurement')}, "
            f"{plural(self.copied['validation'], 'validation row')} and "
            f"{plural(other, 'other row')}; skipped "
            f"{plural(sum(self.present.values()), 'row')} already present"
        )
        if superseded := sum(self.superseded.values()):
            text += (
                f"; set {plural(superseded, 'failed row')} aside for one measured again "
                "(failed trials kept in replaced_points)"
            )
        if self.stale_fits:
            text += (
                f"; left out {plural(self.stale_fits, 'fit')} of fewer points than the run "
                "holds there"
            )
        return text


@dataclass
class MergeReport:
    """What one merge did: one SourceMerge per source, in the order merged."""

    target: Path
    merged: list[SourceMerge] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The lines `infermeter merge` prints: one per source."""
        return [source.line(self.target) for source in self.merged]


def _tables(db: sqlite3.Connection) -> set[str]:
    """The tables of the store behind `db`."""
    return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}


def _columns(db: sqlite3.Connection, table: str) -> list[str]:
    """`table`'s columns, in order."""
    return [row[1] for row in db.execute(f"PRAGMA table_info({table})")]


def merge_stores(target: str | Path, sources: Sequence[str | Path]) -> MergeReport:
    """Merge every run of `sources` into the store at `target` (made if missing), each
    measurement once and none dropped (see the module's docstring), all in one transaction of
    the target; returns what was done, per source. Each source is opened once, read-only
    (never written: a source of an older schema is read as it is, a table it lacks read as
    empty), and read in one snapshot.

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
                    report.merged.append(_merge_one(path, src, dst))
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


def _merge_one(path: Path, src: sqlite3.Connection, dst: sqlite3.Connection) -> SourceMerge:
    """Merge every run of the source at `path` (read through `src`) into the target (written
    through `dst`): each joins the target's run that is one run with it, or is added."""
    done = SourceMerge(path)
    have = _tables(src)
    layouts = {
        table: (_common_columns(src, dst, table), key, failed)
        for table, (key, failed) in _TABLES.items()
        if table in have
    }
    run_columns = _columns(src, "runs")
    for row in src.execute("SELECT * FROM runs ORDER BY id").fetchall():
        run = dict(zip(run_columns, row, strict=True))
        theirs = _run_rows(src, layouts, run["id"])
        run_id, ours, holds_all = _place(dst, layouts, run, theirs, done)
        for table, layout in layouts.items():
            if table == "fits" and not holds_all:  # fitted on fewer points than the run holds
                done.stale_fits += len(theirs[table].keys() - ours[table].keys())
                done.present[table] += len(theirs[table].keys() & ours[table].keys())
            else:
                _copy_rows(dst, table, layout, theirs[table], ours.get(table, {}), run_id, done)
    return done


def _place(
    dst: sqlite3.Connection,
    layouts: dict[str, Layout],
    run: dict[str, Any],
    theirs: dict[str, Rows],
    done: SourceMerge,
) -> tuple[int, dict[str, Rows], bool]:
    """Where the source's `run` (its runs row, by column; its rows `theirs`) goes in the
    target: the first run of its settings that is one run with it (its status joined), or a
    run added. Returns (that run's id, its rows before the merge, whether the source holds
    every measurement of the two); counts the run in `done`."""
    family = _family(dst, run["key"])
    for run_id, _ in family:
        ours = _run_rows(dst, layouts, run_id)
        one, holds_all = _compare(theirs, ours)
        if one:
            _join_status(dst, run_id, run)
            done.runs_joined += 1
            return run_id, ours, holds_all
    if family:
        done.runs_apart += 1
    else:
        done.runs_new += 1
    return _add_run(dst, run, family), {}, True


def _common_columns(src: sqlite3.Connection, dst: sqlite3.Connection, table: str) -> list[str]:
    """`table`'s columns that both stores have (the target's order), id and run_id aside: what
    is compared and copied (a source of an older schema lacks some)."""
    theirs = set(_columns(src, table))
    return [c for c in _columns(dst, table) if c in theirs and c not in ("id", "run_id")]


def _run_rows(db: sqlite3.Connection, layouts: dict[str, Layout], run_id: int) -> dict[str, Rows]:
    """Run `run_id`'s rows of every table in `layouts`, by table and natural key (a key
    stored twice: its first row)."""
    out: dict[str, Rows] = {}
    for table, (columns, key, failed) in layouts.items():
        index = [columns.index(c) for c in key]
        rows: Rows = {}
        for *values, bad in db.execute(
            f"SELECT {', '.join(columns)}, {failed or 0} FROM {table} WHERE run_id = ?",
            (run_id,),
        ):
            rows.setdefault(tuple(values[i] for i in index), (tuple(values), bool(bad)))
        out[table] = rows
    return out


def _family(dst: sqlite3.Connection, key: str) -> list[tuple[int, str]]:
    """The target's runs of the settings `key` names, oldest first, as (id, key): the run of
    that key and those added apart from it (KEY+N; a source's KEY+N names KEY's settings)."""
    base = key.split("+")[0]
    rows = dst.execute(
        "SELECT id, key FROM runs WHERE key = ? OR substr(key, 1, ?) = ? ORDER BY id",
        (base, len(base) + 1, f"{base}+"),
    )
    return [(int(run_id), str(name)) for run_id, name in rows]


def _compare(theirs: dict[str, Rows], ours: dict[str, Rows]) -> tuple[bool, bool]:
    """Whether a source's run (its rows, `theirs`) and a target's (`ours`) are one run, and
    whether the source holds every measurement of the two (so its fits describe the run
    joined). One run: no measurement both hold differs unless one of the two failed, and
    one of the two holds every measurement the other holds."""
    adds = lacks = False  # the source holds one the target lacks; the target, one it lacks
    for table in _COMPARED:
        mine, other = theirs.get(table, {}), ours.get(table, {})
        lacks |= bool(other.keys() - mine.keys())
        for ident, (values, bad) in mine.items():
            if ident not in other:
                adds = True
                continue
            here, failed = other[ident]
            if values == here:
                continue
            if not bad and not failed:
                return False, False  # measured apart
            adds |= failed and not bad
            lacks |= bad and not failed
    return not (adds and lacks), not lacks


def _join_status(dst: sqlite3.Connection, run_id: int, run: dict[str, Any]) -> None:
    """Give target run `run_id` the source run's status (and backend record) where it is the
    better one (_RANK)."""
    mine = dst.execute("SELECT status FROM runs WHERE id = ?", (run_id,)).fetchone()[0]
    if _RANK.get(run["status"], 0) > _RANK.get(mine, 0):
        dst.execute(
            "UPDATE runs SET status = ?, backend_json = ?, updated_at = max(updated_at, ?) "
            "WHERE id = ?",
            (run["status"], run["backend_json"], run["updated_at"], run_id),
        )


def _add_run(dst: sqlite3.Connection, run: dict[str, Any], family: list[tuple[int, str]]) -> int:
    """Add the source's `run` (its runs row, by column) to the target; returns its new id.
    Its key is its own, or where the target has runs of its settings (`family`) KEY+N, N the
    first free from 2."""
    key = run["key"]
    if family:
        base, taken = key.split("+")[0], {name for _, name in family}
        key = next(f"{base}+{n}" for n in range(2, len(taken) + 3) if f"{base}+{n}" not in taken)
    names = [c for c in run if c != "id"]
    cursor = dst.execute(
        f"INSERT INTO runs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
        [key if c == "key" else run[c] for c in names],
    )
    return int(cursor.lastrowid)  # type: ignore[arg-type]


def _copy_rows(
    dst: sqlite3.Connection,
    table: str,
    layout: Layout,
    theirs: Rows,
    ours: Rows,
    run_id: int,
    done: SourceMerge,
) -> None:
    """Copy a source run's rows of `table` (`theirs`) into target run `run_id` (holding
    `ours`), counting in `done`: a row already there (the same, or for a fit or a replaced
    trial the same key) is skipped; where the two differ one failed (_compare), and the
    failed one is set aside (a trial kept in replaced_points), the target's only where the
    source's did not fail."""
    columns, key, _ = layout
    insert = f"INSERT INTO {table} (run_id, {', '.join(columns)}) VALUES (?{', ?' * len(columns)})"
    for ident, (values, bad) in theirs.items():
        here = ours.get(ident)
        if here is not None and (here[0] == values or table not in _COMPARED):
            done.present[table] += 1
        elif here is not None and not (here[1] and not bad):  # the target's stays
            record = dict(zip(columns, values, strict=True))
            if table in _TRIALS and not _keep_replaced(dst, table, run_id, record):
                done.present[table] += 1  # kept there already, by an earlier merge
            else:
                done.superseded[table] += 1
        else:
            if here is not None:  # the target's failed and the source's did not
                _set_aside(dst, table, key, run_id, ident)
                done.superseded[table] += 1
            dst.execute(insert, (run_id, *values))
            done.copied[table] += 1


def _set_aside(
    dst: sqlite3.Connection, table: str, key: tuple[str, ...], run_id: int, ident: tuple
) -> None:
    """Delete target run `run_id`'s row of `table` keyed `ident`, a trial kept in
    replaced_points first."""
    where = " AND ".join(f"{c} IS ?" for c in key)
    if table in _TRIALS:
        cursor = dst.execute(
            f"SELECT * FROM {table} WHERE run_id = ? AND {where}", (run_id, *ident)
        )
        names = [d[0] for d in cursor.description]
        _keep_replaced(dst, table, run_id, dict(zip(names, cursor.fetchone(), strict=True)))
    dst.execute(f"DELETE FROM {table} WHERE run_id = ? AND {where}", (run_id, *ident))


def _keep_replaced(
    dst: sqlite3.Connection, table: str, run_id: int, record: dict[str, Any]
) -> bool:
    """Keep `record`, a failed trial of `table` ("points" or "validation") of target run
    `run_id` that a measured one replaces, in replaced_points as Store.record_points keeps
    one, replaced now; once: not where replaced_points holds it already. Returns whether it
    was added."""
    ident = ("run_id", "source", *_MEASURED, "measured_at")
    found = dst.execute(
        f"SELECT 1 FROM replaced_points WHERE {' AND '.join(f'{c} IS ?' for c in ident)}",
        (run_id, table, *(record.get(c) for c in ident[2:])),
    ).fetchone()
    if found:
        return False
    names = [c for c in _columns(dst, "replaced_points") if c in record and c != "run_id"]
    dst.execute(
        f"INSERT INTO replaced_points (run_id, source, replaced_at, {', '.join(names)}) "
        f"VALUES (?, ?, ?{', ?' * len(names)})",
        (run_id, table, utc_now(), *(record[c] for c in names)),
    )
    return True
