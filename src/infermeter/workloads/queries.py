"""Numbers read from users' files, checked before anything is computed with them.

Every parser (queries and points tables, HELM efficiency_data, cost-model files, config.json)
goes through these helpers, so a bad cell is one line naming the file, the row, the field, the
value and the fix, and never a NaN model, a negative cost or an integer that wrapped around.
The rules: numbers only (true/false is not a number), finite, within the field's range, whole
where the field counts something, and of a sane size (an output of 1e308 tokens is a typo, not
a query).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from infermeter.errors import UserError

# Token counts: ten times the longest context of any model today (10M tokens). Past this a
# count is a typo, and products with it (runtime, dollars) stop being meaningful.
MAX_TOKENS = 100_000_000
MAX_BATCH = 1_000_000
# Seconds of one measured query or one fitted term: a year. Joules: a gigawatt-hour.
MAX_SECONDS = 3.2e7
MAX_JOULES = 3.6e12


def _shown(value: Any) -> str:
    if isinstance(value, np.generic):
        value = value.item()
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _wanted(
    whole: bool, minimum: float, strict_minimum: bool, maximum: float | None, unit: str
) -> str:
    """'a positive whole number, at most 100,000,000 (tokens)' and the like."""
    kind = "whole number" if whole else "number"
    if (whole and minimum == 1 and not strict_minimum) or (minimum == 0 and strict_minimum):
        text = f"a positive {kind}"
    elif minimum == 0 and not strict_minimum:
        text = f"a {kind} of 0 or more"
    else:
        text = f"a {kind} {'>' if strict_minimum else '>='} {minimum:g}"
    if maximum is not None:
        text += f", at most {maximum:,.0f}" if whole else f", at most {maximum:g}"
    return text + (f" {unit}" if unit else "")


def _number(value: Any) -> float | None:
    """A cell as a float; None when it is not a number (true/false, text, a list)."""
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        try:
            return float(value)
        except OverflowError:
            return math.inf
    if isinstance(value, (float, np.floating)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except (ValueError, OverflowError):
            return None
    return None


def _missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, (float, np.floating)) and math.isnan(value)


def numeric_column(
    frame: pd.DataFrame,
    column: str,
    origin: str,
    *,
    whole: bool = False,
    minimum: float = 0.0,
    strict_minimum: bool = False,
    maximum: float | None = None,
    allow_missing: bool = False,
    unit: str = "",
) -> np.ndarray:
    """The values of `frame[column]` as floats, each checked; NaN only where `allow_missing`.

    Raises a UserError naming `origin`, the 1-based row, the column, the value and the range.
    """
    series = frame[column]
    if isinstance(series, pd.DataFrame):
        raise UserError(f"{origin}: column {column} appears more than once; keep one")
    if series.dtype.kind in "fiu":
        values = series.to_numpy(dtype=float)
        bad_type = np.zeros(values.shape, dtype=bool)
        missing = np.isnan(values)
    else:
        cells = series.tolist()
        missing = np.array([_missing(v) for v in cells], dtype=bool)
        numbers = [None if m else _number(v) for v, m in zip(cells, missing, strict=True)]
        bad_type = np.array(
            [n is None and not m for n, m in zip(numbers, missing, strict=True)], dtype=bool
        )
        values = np.array([np.nan if n is None else n for n in numbers], dtype=float)
    wanted = _wanted(whole, minimum, strict_minimum, maximum, unit)

    def fail(mask: np.ndarray, why: str) -> None:
        row = int(np.flatnonzero(mask)[0])
        value = "" if why == "has no value" else f" = {_shown(series.iloc[row])}"  # not "= nan"
        raise UserError(
            f"{origin}: row {row + 1}, {column}{value} {why}; each {column} must be {wanted}"
        )

    if bad_type.any():
        fail(bad_type, "is not a number")
    if not allow_missing and missing.any():
        fail(missing, "has no value")  # an empty cell, NA, null or a missing key
    present = ~missing
    with np.errstate(invalid="ignore"):
        if (present & ~np.isfinite(values)).any():
            fail(present & ~np.isfinite(values), "is not finite")
        below = values <= minimum if strict_minimum else values < minimum
        if (present & below).any():
            fail(present & below, "is too small")
        if maximum is not None and (present & (values > maximum)).any():
            fail(present & (values > maximum), "is too large")
        if whole and (present & (values % 1 != 0)).any():
            fail(present & (values % 1 != 0), "is not a whole number")
    return values


def whole_column(
    frame: pd.DataFrame,
    column: str,
    origin: str,
    *,
    minimum: int = 1,
    maximum: int = MAX_TOKENS,
) -> np.ndarray:
    """`frame[column]` as int64, every value a whole number in [minimum, maximum]."""
    values = numeric_column(frame, column, origin, whole=True, minimum=minimum, maximum=maximum)
    return values.astype(np.int64)


def number(
    value: Any,
    where: str,
    *,
    minimum: float = 0.0,
    strict_minimum: bool = False,
    maximum: float | None = None,
    whole: bool = False,
) -> float:
    """One value of a JSON file (a HELM entry, a cost model): a finite number in range.

    Text is refused too: JSON has numbers, and a quoted one is a sign of a hand-edit gone
    wrong. `where` names the file and field for the message.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(f"{where} is {_shown(value)}, not a number; write a JSON number")
    try:
        result = float(value)
    except OverflowError:
        result = math.inf
    if not math.isfinite(result):
        raise UserError(f"{where} is {_shown(value)}, not a finite number")
    if result < minimum or (strict_minimum and result == minimum):
        sign = ">" if strict_minimum else ">="
        raise UserError(f"{where} is {_shown(value)}; it must be {sign} {minimum:g}")
    if maximum is not None and result > maximum:
        raise UserError(f"{where} is {_shown(value)}, more than the sane {maximum:g}; fix it")
    if whole and result % 1 != 0:
        raise UserError(f"{where} is {_shown(value)}; it must be a whole number")
    return result


def flag(value: Any, where: str) -> bool:
    """A JSON boolean, strictly: "false" (text) is not false, and 0/1 are not booleans."""
    if isinstance(value, bool):
        return value
    raise UserError(f"{where} is {_shown(value)}; it must be true or false (a JSON boolean)")


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    """The parsed JSON of a file, or one line saying why it cannot be read (missing, a
    folder, unreadable, not UTF-8, not JSON, nested too deep). `what` names the file's role,
    e.g. "profile"."""
    file = Path(path)
    try:
        raw = file.read_bytes()
        if raw.startswith(b"SQLite format 3\x00"):  # a store where a fitted model belongs
            raise UserError(
                f"{what} {file} is an infermeter store (SQLite), not a fitted model; write a "
                f"run's fit with `infermeter fit RUN --store {file} --output model.json` and "
                "pass that"
            )
        text = raw.decode("utf-8")
    except FileNotFoundError:
        raise UserError(f"{what} {file} does not exist; check the path") from None
    except IsADirectoryError:
        raise UserError(f"{what} {file} is a folder, not a file; pass the file's path") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {file}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} {file} is not UTF-8 text (a binary file?); pass JSON") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(
            f"{what} {file} is not valid JSON ({exc.msg}, line {exc.lineno}); fix or regenerate it"
        ) from None
    except (ValueError, RecursionError) as exc:  # a 5,000-digit number; nesting past the limit
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise UserError(f"{what} {file} cannot be read as JSON ({reason})") from None


N = TypeVar("N", int, float)


def parse_list(
    text: str | None,
    label: str,
    kind: Callable[[str], N] = int,  # type: ignore[assignment]
    example: str = "1,64,128",
    what: str = "whole numbers",
    empty: str | None = None,
) -> tuple[N, ...] | None:
    """Comma-separated values of `kind` (None stays None); UserError if malformed or empty."""
    if text is None:
        return None
    try:
        values = tuple(kind(part) for part in text.replace(" ", "").split(",") if part)
    except ValueError:
        raise UserError(f"{label} must be comma-separated {what}, e.g. {example}") from None
    if not values:
        raise UserError(f"{label} is empty; give {empty or 'comma-separated ' + what}")
    return values
