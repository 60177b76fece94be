"""A stored point's `extra_json` (the Measurement's `extra` dict, JSON in the store) read back
as Python values, and the rows kept for the record that are not measurements.

Every reader of a point's extra fields goes through `parse_extra` (a row) or `extras` (a
frame); `measured` is the one rule for which rows count: ok, timed, and not sent during a
timed load's warm-up (experiments.load stores those requests, marked `"warmup": true`, so
that nothing sent is lost, but the server was still ramping up then).
"""

from __future__ import annotations

import json
from typing import Any

import pandas as pd

# A metered point's time back to back (experiments.profile.measure_point): the sustained price.
SUSTAINED_KEY = "sustained_runtime_s"


def extras(points: pd.DataFrame) -> pd.Series:
    """Each row's extra fields as a dict (`parse_extra`; empty where the column is absent);
    same index as `points`."""
    if "extra_json" not in points.columns:
        return pd.Series([{} for _ in range(len(points))], index=points.index, dtype=object)
    return points["extra_json"].map(parse_extra)


def parse_extra(text: Any) -> dict[str, Any]:
    """One stored extra_json as a dict: empty for none, and for text that is not a JSON
    object (the store writes only objects; a points file from elsewhere may hold anything,
    and its fields are then read as absent)."""
    if not isinstance(text, str) or not text:
        return {}
    try:
        value = json.loads(text)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def extra_field(points: pd.DataFrame, key: str) -> pd.Series:
    """Field `key` of each row's extra fields (None where absent); same index as `points`."""
    values = [extra.get(key) for extra in extras(points)]
    return pd.Series(values, index=points.index, dtype=object)


def named_field(points: pd.DataFrame, key: str) -> pd.Series:
    """extra_field, parsing only the rows whose text names `key` (an API run's rows hold every
    token's gap: parsing them all is slow); None elsewhere; same index as `points`."""
    values = pd.Series([None] * len(points), index=points.index, dtype=object)
    if "extra_json" not in points.columns or points.empty:
        return values
    named = points["extra_json"].map(lambda text: isinstance(text, str) and f'"{key}"' in text)
    if named.any():
        values[named.to_numpy()] = extra_field(points[named.to_numpy()], key).to_numpy()
    return values


def is_warmup(points: pd.DataFrame) -> pd.Series:
    """True for the rows a timed load sent during its warm-up; same index as `points`."""
    return named_field(points, "warmup").eq(True).astype(bool)


def without_warmup(points: pd.DataFrame) -> pd.DataFrame:
    """`points` less the rows a timed load sent during its warm-up."""
    return points if points.empty else points[~is_warmup(points)]


def succeeded(points: pd.DataFrame, quantity: str = "runtime_s") -> pd.DataFrame:
    """The rows with a value of `quantity` and, where a status is stored, status ok (a timed
    load's warm-up rows included: `measured` leaves them out)."""
    rows = points[points[quantity].notna()] if quantity in points.columns else points.iloc[:0]
    return rows[rows["status"] == "ok"] if "status" in rows.columns else rows


def measured(points: pd.DataFrame, quantity: str = "runtime_s") -> pd.DataFrame:
    """The rows that are measurements of `quantity`: succeeded, and not a timed load's
    warm-up."""
    return without_warmup(succeeded(points, quantity))
