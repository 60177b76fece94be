"""A point's extra fields read back (infermeter.store.extra): which rows are measurements."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from hypothesis import given
from hypothesis import strategies as st

from infermeter.store.extra import extra_field, extras, is_warmup, measured, without_warmup

# What an extra_json can be: absent (NULL), empty, or an object with or without the mark (all
# the store writes); in a points file from elsewhere, also JSON that is no object, or no JSON.
OBJECT = st.fixed_dictionaries({}, optional={"warmup": st.booleans(), "level": st.integers(1, 9)})
EXTRA = st.one_of(
    st.none(),
    st.just(""),
    OBJECT,
    st.sampled_from(["[]", "null", '"warmup"', "5", "note: from my tool", '{"warmup": tru']),
    OBJECT.map(lambda extra: json.dumps(extra, separators=(",", ":"))),  # written compactly
)
ROW = st.tuples(
    EXTRA,
    st.sampled_from(["ok", "error", "flagged"]),
    st.one_of(st.none(), st.floats(0.001, 10.0)),
)


def _object(extra: object) -> dict:
    """What the row's extra fields are: an object's, else none."""
    if isinstance(extra, str) and extra.startswith("{") and extra.endswith("}"):
        extra = json.loads(extra)
    return extra if isinstance(extra, dict) else {}


def _frame(rows: list[tuple[object, str, float | None]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "extra_json": [json.dumps(e) if isinstance(e, dict) else e for e, _, _ in rows],
            "status": [s for _, s, _ in rows],
            "runtime_s": [np.nan if r is None else r for _, _, r in rows],
        },
        index=[10 + i for i in range(len(rows))],  # not 0..n-1: the index must be kept
    )


@given(st.lists(ROW, max_size=12))
def test_measured_rows_are_ok_timed_and_not_a_warm_up(rows: list) -> None:
    frame = _frame(rows)
    expected = [
        index
        for index, (extra, status, runtime) in zip(frame.index, rows, strict=True)
        if status == "ok" and runtime is not None and _object(extra).get("warmup") is not True
    ]
    assert list(measured(frame).index) == expected
    warm = [_object(e).get("warmup") is True for e, _, _ in rows]
    assert list(is_warmup(frame)) == warm
    kept = [i for i, w in zip(frame.index, warm, strict=True) if not w]
    assert list(without_warmup(frame).index) == kept
    levels = [_object(e).get("level") for e, _, _ in rows]
    assert list(extra_field(frame, "level")) == levels


def test_points_without_the_column_are_all_measurements() -> None:
    # a --points file a user wrote has no extra_json: every ok, timed row counts
    frame = pd.DataFrame({"runtime_s": [0.1, np.nan], "status": ["ok", "ok"]})
    assert list(extras(frame)) == [{}, {}]
    assert list(measured(frame).index) == [0]
    assert measured(frame, "energy_j").empty  # no such column: nothing measured


def test_a_points_file_whose_extra_json_is_not_an_object_still_fits() -> None:
    # Fits read extra_json for the warm-up mark; a user's file holding a list or plain text
    # there gave a traceback (AttributeError, JSONDecodeError) instead of a fit (found
    # 2026-12-03 by a review).
    from infermeter.model.fit import FitPolicy, fit_profile

    rows = [(p, o, 0.01 + 0.0001 * p + 0.002 * o) for p in (16, 32, 64) for o in (2, 4, 8)]
    frame = pd.DataFrame(rows, columns=["prompt_tokens", "output_tokens", "runtime_s"])
    frame["extra_json"] = ["[]", "note: from my tool", "null"] * 3
    (model,) = fit_profile(frame, FitPolicy(), quantities=("runtime_s",))
    assert model.fit["n_trials"] == 9
