"""The sustained price: a profile whose points carry their time back to back
(`sustained_runtime_s`, as experiments.profile.measure_point stores it) gives, beside its
runtime model of queries sent alone, a second one fitted to those times. `fit --output`
writes it as OUTPUT.sustained.json and `estimate --sustained-profile` adds
`runtime_sustained_s`.

The stores are real SQLite files of points on known lines (no timing is involved): alone,
t(p, o); back to back, 1.1·t(p, o) + 1 ms, so each price can be checked exactly."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pandas as pd
import pytest

from cli_runner import invoke
from infermeter.backends.base import Measurement, Point
from infermeter.spec.catalog import get_spec
from infermeter.spec.hardware import Stack, get_accelerator
from infermeter.store.db import Store

PROMPTS, OUTPUTS = (1, 16, 64), (1, 4, 8)


def t(p: int, o: int) -> float:
    """A query's time sent alone."""
    return 0.01 + 0.002 * p / 16 + 0.005 * (o - 1)


def back_to_back(p: int, o: int) -> float:
    """The same query's time a second into a stream of it."""
    return 1.1 * t(p, o) + 0.001


def _store(
    tmp: Path, sustained: bool = True, missing_one: bool = False, device: str = "cpu"
) -> Path:
    """A run of tiny-llama on a CPU stack: grid points and 4 validation queries, each with
    its time back to back in the extra when `sustained` (but for one point's trials when
    `missing_one`)."""
    spec = get_spec("tiny-llama")
    stack = Stack("engine", get_accelerator("cpu"), dtype="float32").to_dict()
    path = tmp / "s.sqlite"

    def measured(p: int, o: int, k: int, first: bool) -> tuple[Point, Measurement]:
        extra = {"sustained_runtime_s": back_to_back(p, o)}
        if not sustained or (missing_one and first):
            extra = {}
        return Point(p, o, 1, k), Measurement(t(p, o), extra=extra)

    points = [
        measured(p, o, k, (p, o) == (16, 4)) for p in PROMPTS for o in OUTPUTS for k in range(2)
    ]
    queries = [measured(p, o, 0, False) for p, o in ((8, 3), (40, 6), (50, 2), (30, 7))]
    with Store(path) as db:
        run, _ = db.open_run(key="cpu", model=spec.name, spec=spec.to_dict(), stack=stack,
                             backend="engine", backend_info={}, grid={}, device=device)  # fmt: skip
        db.record_points(run.id, points)
        db.record_points(run.id, queries, validation=True)
    return path


def _fit(store: Path, output: Path) -> str:
    result = invoke("fit", "--store", store, "--output", output)
    assert result.exit_code == 0, result.output
    return result.output


def test_fit_writes_the_sustained_model_and_estimate_prices_both_states(tmp_path: Path) -> None:
    store, model = _store(tmp_path), tmp_path / "m.json"
    said = " ".join(_fit(store, model).split())
    sustained = tmp_path / "m.sustained.json"
    assert sustained.exists()
    assert "runtime back to back (sustained, batch 1)" in said
    assert "validated on 4 queries never profiled: MAPE 0.00%" in said  # its own times
    body = json.loads(sustained.read_text())
    assert body["fit"]["state"] == "sustained"

    out = tmp_path / "e.csv"
    sizes = ["--prompt-tokens", "8,40", "--output-tokens", "2,6"]
    result = invoke(
        "estimate", "--profile", model, "--sustained-profile", sustained, *sizes, "--output", out
    )
    assert result.exit_code == 0, result.output
    frame = pd.read_csv(out)
    for row in frame.itertuples():
        assert row.runtime_s == pytest.approx(t(row.prompt_tokens, row.output_tokens))
        expected = back_to_back(row.prompt_tokens, row.output_tokens)
        assert row.runtime_sustained_s == pytest.approx(expected)


def test_the_sustained_model_is_never_stored_as_the_runs_fit(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _fit(store, tmp_path / "m.json")
    with sqlite3.connect(store) as db:
        fits = [json.loads(row[0]) for row in db.execute("SELECT model_json FROM fits")]
    assert fits, "the default fit is stored"
    assert all((f.get("fit") or {}).get("state") != "sustained" for f in fits)
    with Store(store) as db:
        runtime = db.latest_fit(1)
    assert runtime is not None
    assert float(runtime.predict(64, 8)) == pytest.approx(t(64, 8))


@pytest.mark.parametrize("missing_one", [False, True])
def test_without_times_back_to_back_there_is_no_sustained_model(
    tmp_path: Path, missing_one: bool
) -> None:
    """A run before the times were stored (or one point without them) gets none: a model
    fitted to a mix of states would price neither."""
    store = _store(tmp_path, sustained=missing_one, missing_one=missing_one)
    said = _fit(store, tmp_path / "m.json")
    assert not (tmp_path / "m.sustained.json").exists()
    said = " ".join(said.split())
    assert "no runtime model back to back (sustained): not every point of the run carries" in said
    assert "written to" not in said.split("runtime model written to")[-1]  # only m.json


def test_an_energy_model_as_the_sustained_profile_is_one_line(tmp_path: Path) -> None:
    model = tmp_path / "m.json"
    _fit(_store(tmp_path), model)
    energy = tmp_path / "e.json"
    body = json.loads(model.read_text())
    body["quantity"] = "energy_j"
    energy.write_text(json.dumps(body))
    result = invoke("estimate", "--profile", model, "--sustained-profile", energy,
                    "--prompt-tokens", "8", "--output-tokens", "2")  # fmt: skip
    assert result.exit_code != 0
    assert "the sustained profile given is an energy model" in result.output
    assert "Traceback" not in result.output


@pytest.mark.slow
def test_a_metered_profiles_points_give_a_sustained_model(tmp_path: Path) -> None:
    """End to end on a real (CPU) backend with the meter on a fake NVML: every metered point
    stores its time back to back, so the run has a sustained model beside its default one,
    fitted on the same points. Real CPU timings are noisy, so the fit's quality is not
    asserted (accept_poor_fit); the model must run through the fastest time back to back
    the store holds at each profiled point (read here from the store's JSON apart)."""
    from fake_nvml import FakeClock, FakeGpu, FakeNvml, clock_generation
    from infermeter.backends.hf import HFBackend
    from infermeter.experiments.profile import ProfileGrid, run_profile
    from infermeter.measure.meter import Meter
    from infermeter.model.fit import FitPolicy
    from infermeter.model.fitted import fit_run, fit_sustained

    clock = FakeClock()
    meter = Meter(interval_s=0.005, nvml=FakeNvml([FakeGpu(power=lambda _: 250.0)], clock=clock),
                  clock=clock)  # fmt: skip
    backend = clock_generation(HFBackend(device="cpu"), clock, prefill_s=0.01)
    grid = ProfileGrid((1, 32), (1, 8, 16), (1,), 2)
    policy = FitPolicy(api=False, accept_poor_fit=True)
    with Store(tmp_path / "s.sqlite") as store:
        run = run_profile(store, get_spec("tiny-llama"), {}, backend, {}, grid, meter=meter,
                          min_energy_window_s=0.05)  # fmt: skip
        (alone,) = [m for m in fit_run(store, run.id, policy) if m.quantity == "runtime_s"]
        (sustained,) = fit_sustained(store, run.id, policy)
    assert sustained.fit["state"] == "sustained" and "state" not in alone.fit
    assert sustained.prompt_sizes == alone.prompt_sizes
    assert sustained.quantity == "runtime_s"
    with Store(tmp_path / "s.sqlite") as store:
        points = store.points(run.id)
    times = points["extra_json"].map(lambda text: json.loads(text)["sustained_runtime_s"])
    assert times.notna().all() and len(times) == 2 * 3 * 2  # prompts x outputs x trials
    for p in (1, 32):
        at_p = points["prompt_tokens"] == p
        best = times[at_p].groupby(points.loc[at_p, "output_tokens"]).min()
        for o in (1, 8, 16):  # the local stack's "curve" fit runs through every point
            assert float(sustained.predict(p, o)) == pytest.approx(best[o], rel=1e-6)


def _estimate(*args: str | Path) -> tuple[int, str]:
    result = invoke("estimate", *args, "--prompt-tokens", "8", "--output-tokens", "2")
    assert "Traceback" not in result.output
    return result.exit_code, " ".join(result.output.split())


def test_a_sustained_profile_that_is_not_the_runtime_profiles_twin_is_refused(
    tmp_path: Path,
) -> None:
    """Found by a fresh user: the model of queries alone, another profile run's sustained
    model, or another model's, priced without a word. Each is one line naming the fix."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    model, other = tmp_path / "a" / "m.json", tmp_path / "b" / "m.json"
    _fit(_store(tmp_path / "a"), model)
    _fit(_store(tmp_path / "b", device="another machine's cpu"), other)
    fix = "pass the OUTPUT.sustained.json that `fit --output OUTPUT.json` wrote with --profile"
    code, said = _estimate("--profile", model, "--sustained-profile", model)
    assert code == 2 and "prices queries sent alone" in said and fix in said
    code, said = _estimate(
        "--profile", model, "--sustained-profile", tmp_path / "b" / "m.sustained.json"
    )
    assert code == 2 and "fitted on another profile run" in said and fix in said
    body = json.loads((tmp_path / "a" / "m.sustained.json").read_text())
    body["model"] = "llama-13b"
    renamed = tmp_path / "renamed.json"
    renamed.write_text(json.dumps(body))
    code, said = _estimate("--profile", model, "--sustained-profile", renamed)
    assert code == 2 and "is of llama-13b, the runtime profile of tiny-llama" in said
    code, said = _estimate(
        "--profile", model, "--sustained-profile", tmp_path / "a" / "m.sustained.json"
    )
    assert code == 0, said


def test_the_sustained_model_as_the_profile_says_what_runtime_s_then_is(tmp_path: Path) -> None:
    _fit(_store(tmp_path), tmp_path / "m.json")
    code, said = _estimate("--profile", tmp_path / "m.sustained.json")
    assert code == 0, said
    assert "the runtime profile given is the sustained one (times back to back)" in said


def test_a_refit_without_times_back_to_back_removes_the_earlier_sustained_model(
    tmp_path: Path,
) -> None:
    """A stale OUTPUT.sustained.json beside a new OUTPUT.json would price another run (a fresh
    user paired 13B's with 7B's fit); the fit that has none removes it and says so, and says
    why it made none."""
    (tmp_path / "with").mkdir()
    (tmp_path / "without").mkdir()
    model = tmp_path / "m.json"
    _fit(_store(tmp_path / "with"), model)
    assert (tmp_path / "m.sustained.json").exists()
    said = " ".join(_fit(_store(tmp_path / "without", sustained=False), model).split())
    assert not (tmp_path / "m.sustained.json").exists()
    assert (
        f"removed {tmp_path / 'm.sustained.json'}: an earlier fit's runtime model back to back"
        in said
    )
    assert "no runtime model back to back (sustained): not every point of the run" in said


def test_the_profiles_own_estimates_carry_the_sustained_price(tmp_path: Path) -> None:
    """`profile` ends with a few queries priced in the profiled range: with the sustained
    model beside, each also at its time back to back."""
    from infermeter.model.fitted import fit_run, fit_sustained
    from infermeter.model.pricing import price_profile

    with Store(_store(tmp_path)) as db:
        models, sustained = fit_run(db, 1), fit_sustained(db, 1)
    priced = price_profile(models, 2048, None, None, {}, None, sustained)
    frame = priced.estimates
    assert len(frame) > 1
    for row in frame.itertuples():
        expected = back_to_back(row.prompt_tokens, row.output_tokens)
        assert row.runtime_sustained_s == pytest.approx(expected)
    alone = price_profile(models, 2048, None, None, {}, None).estimates
    assert "runtime_sustained_s" not in alone.columns


def test_the_same_run_fitted_from_a_copied_store_pairs(tmp_path: Path) -> None:
    """A fresh user was refused m.json with the m.sustained.json of the same store copied
    elsewhere (the check compared store paths): a run is its id, time and device."""
    import shutil

    (tmp_path / "copy").mkdir()
    store = _store(tmp_path)
    _fit(store, tmp_path / "m.json")
    _fit(shutil.copy(store, tmp_path / "copy" / "s.sqlite"), tmp_path / "copy" / "m.json")
    twin = tmp_path / "copy" / "m.sustained.json"
    code, said = _estimate("--profile", tmp_path / "m.json", "--sustained-profile", twin)
    assert code == 0, said


def test_the_sustained_model_as_both_profiles_is_refused(tmp_path: Path) -> None:
    _fit(_store(tmp_path), tmp_path / "m.json")
    sustained = tmp_path / "m.sustained.json"
    code, said = _estimate("--profile", sustained, "--sustained-profile", sustained)
    assert code == 2 and "the runtime profile given is the sustained one too" in said


def test_a_file_fit_did_not_write_is_left_where_it_lies(tmp_path: Path) -> None:
    """Only a model infermeter wrote is removed as an earlier fit's."""
    mine = tmp_path / "m.sustained.json"
    mine.write_text('{"hello": 1}')
    said = _fit(_store(tmp_path, sustained=False), tmp_path / "m.json")
    assert mine.read_text() == '{"hello": 1}'
    assert "removed" not in said


def test_show_gives_the_sustained_price_and_stores_nothing(tmp_path: Path) -> None:
    store = _store(tmp_path)
    _fit(store, tmp_path / "m.json")
    with sqlite3.connect(store) as db:
        before = db.execute("SELECT * FROM fits ORDER BY rowid").fetchall()
    result = invoke("show", "--store", store)
    assert result.exit_code == 0, result.output
    said = " ".join(result.output.split())
    assert "runtime back to back (sustained, batch 1)" in said
    assert "validated on 4 queries never profiled: MAPE 0.00%" in said
    with sqlite3.connect(store) as db:
        assert db.execute("SELECT * FROM fits ORDER BY rowid").fetchall() == before
    (tmp_path / "old").mkdir()
    without = _store(tmp_path / "old", sustained=False)
    said = invoke("show", "--store", without).output
    assert "back to back" not in said  # a run without the times says nothing of them
