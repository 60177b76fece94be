"""Waiting, from a test, for a command in another process to store its first rows."""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path


def wait_for_rows(
    store: Path, table: str, rows: int, alive: Callable[[], bool], poll_s: float = 0.05
) -> int:
    """Poll `table` of the SQLite file `store` until it holds `rows` rows, `alive()` turns
    false, or 120 s pass; the rows it last held (0 while the file or table is not made)."""
    stored, deadline = 0, time.monotonic() + 120
    while stored < rows and time.monotonic() < deadline and alive():
        time.sleep(poll_s)
        try:
            with sqlite3.connect(store, timeout=1) as db:
                stored = db.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        except sqlite3.OperationalError:  # not made yet, or busy
            continue
    return stored
