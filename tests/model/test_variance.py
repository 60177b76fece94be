"""Variation over trials (infermeter variance)."""

from __future__ import annotations

import json

import pandas as pd

from infermeter.model.variance import trial_variation


def _points(rows: list[tuple[int, int, int, float, int | None]]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "prompt_tokens": [r[0] for r in rows],
            "output_tokens": [r[1] for r in rows],
            "batch_size": [r[2] for r in rows],
            "trial": list(range(len(rows))),
            "runtime_s": [r[3] for r in rows],
            "status": "ok",
            "extra_json": [json.dumps({} if r[4] is None else {"concurrency": r[4]}) for r in rows],
        }
    )


def test_load_levels_are_not_pooled_as_trials() -> None:
    # `variance` on a load run pooled every concurrency level's requests as trials of one
    # (p, o): 14 "trials" whose spread was the load's effect, not noise.
    rows = [(16, 4, 1, 0.10, 1)] * 3 + [(16, 4, 1, 0.30, 4)] * 4
    table = trial_variation(_points(rows))
    assert list(table.concurrency) == [1, 4] and list(table.trials) == [3, 4]
    assert list(table.taken) == [3, 4]
    assert (table.cv == 0).all()
    plain = trial_variation(_points([(16, 4, 1, 0.1, None), (16, 4, 1, 0.2, None)]))
    assert "concurrency" not in plain.columns and list(plain.trials) == [2]


def test_a_point_measured_once_has_no_spread_not_a_spread_of_zero() -> None:
    # A 1-trial run printed "mean CV 0.000, max CV 0.000": a spread never measured, shown as
    # none at all (found 2026-12-03).
    from infermeter.model.runfit import noise_line
    from infermeter.model.variance import noise_summary

    once = _points([(16, 4, 1, 0.1, None), (32, 4, 1, 0.2, None)])
    table = trial_variation(once)
    assert table.cv.isna().all() and list(table.trials) == [1, 1]
    comparison = pd.DataFrame({"raw_s": [0.1, 0.2], "denoised_s": [0.1, 0.2]})
    line = noise_line(noise_summary(once, comparison))
    assert "CV" not in line and "measured once" in line and "--trials 2" in line

    failed = _points([(16, 4, 1, 0.1, None), (16, 4, 1, 0.3, None), (32, 4, 1, 0.2, None)])
    failed.loc[1, "status"] = "error"  # --trials 2, one of them failed: not a --trials advice
    line = noise_line(noise_summary(failed, comparison))
    assert "no point has two usable measurements" in line and "--trials" not in line
    assert list(trial_variation(failed).taken) == [2, 1]
    # a load's levels are not trials of one another: one request a level is one trial each
    levels = _points([(16, 4, 1, 0.1, 1), (16, 4, 1, 0.3, 2)])
    assert "each point was measured once" in noise_line(noise_summary(levels, comparison))

    mixed = _points([(16, 4, 1, 0.1, None), (16, 4, 1, 0.3, None), (32, 4, 1, 0.2, None)])
    stats = noise_summary(mixed, comparison)
    assert stats["repeated"] == 1 and stats["points"] == 2
    assert stats["max_cv"] == trial_variation(mixed).cv.max() > 0.5
    assert "(over the 1 of 2 points measured more than once)" in noise_line(stats)


def test_a_timed_loads_warm_up_requests_are_not_trials() -> None:
    # A timed load stores the requests it sent in its warm-up (marked, for the record); the
    # load's summary leaves them out, but `variance` counted them as trials, so a level's
    # spread held the server's ramp-up (found 2026-12-03).
    rows = [(16, 4, 1, 0.9, 2), (16, 4, 1, 0.10, 2), (16, 4, 1, 0.11, 2), (16, 4, 1, 0.12, 2)]
    points = _points(rows)
    points.loc[0, "extra_json"] = json.dumps({"concurrency": 2, "warmup": True})
    table = trial_variation(points)
    assert list(table.trials) == [3] and list(table.taken) == [3]
    assert table.max_s.iloc[0] == 0.12 and table.max_over_min.iloc[0] < 1.3
    from infermeter.store.extra import measured  # raw vs denoised reads the same rows

    assert len(measured(points)) == 3


def test_a_fit_leaves_a_timed_loads_warm_up_out() -> None:
    # `variance` fits a load run's denoised model (the minimum over trials) from every ok row,
    # and a timed load's warm-up requests, stored for the record, are rows too: one faster
    # than the load's own requests set the minimum (found 2026-12-03).
    from infermeter.model.fit import FitPolicy, fit_profile

    rows = []
    for p in (16, 32, 64):
        for o in (2, 4, 8, 16):
            runtime = 0.01 + 0.0001 * p + 0.002 * o
            rows += [(p, o, 1, runtime, 1), (p, o, 1, runtime * 1.01, 1), (p, o, 1, runtime / 2, 1)]
    points = _points(rows)
    points.loc[2::3, "extra_json"] = json.dumps({"concurrency": 1, "warmup": True})
    (model,) = fit_profile(points, FitPolicy(), quantities=("runtime_s",))
    assert model.fit["n_trials"] == 24
    for p, o in ((16, 2), (40, 10), (64, 16)):
        assert abs(float(model.predict(p, o)) - (0.01 + 0.0001 * p + 0.002 * o)) < 1e-6
