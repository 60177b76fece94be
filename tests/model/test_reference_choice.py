"""Which stored run stands for a model: a sound fit over a poor one, then the newest.

A run whose fit only --accept-poor-fit keeps (here: time falling as outputs grow, far beyond
the noise) must not price a model over an older sound run of it, in the report and tradeoffs
(reference_for) or in compare (newer_runs_stand); the notes say which run was left out and why.
"""

from __future__ import annotations

from pathlib import Path

from infermeter.backends.base import Measurement, Point
from infermeter.model.fitted import load_runs, reference_candidates, reference_for
from infermeter.model.sources import left_out_runs, newer_runs_stand
from infermeter.spec.catalog import get_spec
from infermeter.spec.hardware import Stack, get_accelerator
from infermeter.store.db import Store

PROMPTS, OUTPUTS, TRIALS = (1, 32, 64), (1, 64, 128), 3


def record_run(store: Store, key: str, per_token_s: float, backend: str = "engine") -> int:
    """A complete run of tiny-llama whose time changes by `per_token_s` a token (trials 1%
    apart), recorded as a backend records its points."""
    run, _ = store.open_run(
        key=key,
        model="tiny-llama",
        spec=get_spec("tiny-llama").to_dict(),
        stack=Stack(backend, get_accelerator("cpu"), dtype="float32").to_dict(),
        backend=backend,
        backend_info={"device": "cpu"},
        grid={},
        device="cpu: test machine",
    )
    for p in PROMPTS:
        for o in OUTPUTS:
            for trial in range(TRIALS):
                runtime = (0.2 + 0.001 * p + per_token_s * (o - 1)) * (1 + 0.01 * trial)
                store.record_point(run.id, Point(p, o, 1, trial), Measurement(runtime))
    store.set_run_status(run.id, "complete")
    return run.id


def test_a_newer_poor_run_does_not_stand_over_an_older_sound_one(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    with Store(path) as store:
        sound = record_run(store, "sound", 0.001)
        poor = record_run(store, "poor", -0.001)  # newer, and time falls with o
    runs = load_runs([path])
    by_id = {r.record.id: r for r in runs}
    assert not by_id[sound].poor_fit and by_id[poor].poor_fit
    assert by_id[poor].fit().per_output_token == 0.0  # kept, priced as 0, with its note

    used = reference_for("tiny-llama", runs)
    assert used is not None and used.record.id == sound
    assert [r.record.id for r in reference_candidates("tiny-llama", runs)] == [sound, poor]
    note = left_out_runs("tiny-llama", runs)
    assert note is not None and f"priced with run runs.sqlite#{sound} (" in note
    assert f"left out: runs.sqlite#{poor} (" in note and "its fit poor" in note

    kept, notes = newer_runs_stand(runs)
    assert kept == {}  # one stack: nothing to compare, but the note says which run stands
    (why,) = notes["tiny-llama"]
    assert why.startswith(f"runs.sqlite#{poor} left out: its fit is poor (kept only as ")
    assert f"runs.sqlite#{sound}, a run of tiny-llama whose fit is sound" in why


def record_rough_run(store: Store, key: str) -> int:
    """A complete run of tiny-llama whose trials scatter (R² well below 0.9, above 0)."""
    run, _ = store.open_run(
        key=key,
        model="tiny-llama",
        spec=get_spec("tiny-llama").to_dict(),
        stack=Stack("engine", get_accelerator("cpu"), dtype="float32").to_dict(),
        backend="engine",
        backend_info={"device": "cpu"},
        grid={},
        device="cpu: test machine",
    )
    scatter = (1.0, 1.6, 0.7, 1.3, 0.8, 1.5, 0.9, 1.2, 1.1)  # one per (p, o), all trials
    for i, (p, o) in enumerate((p, o) for p in PROMPTS for o in OUTPUTS):
        for trial in range(TRIALS):
            runtime = (0.2 + 0.001 * p + 0.001 * (o - 1)) * scatter[i]
            store.record_point(run.id, Point(p, o, 1, trial), Measurement(runtime))
    store.set_run_status(run.id, "complete")
    return run.id


def test_a_newer_rough_run_stands_after_a_sound_one_and_before_a_poor_one(
    tmp_path: Path,
) -> None:
    path = tmp_path / "runs.sqlite"
    with Store(path) as store:
        sound = record_run(store, "sound", 0.001)
        poor = record_run(store, "poor", -0.001)
        rough = record_rough_run(store, "rough")  # the newest
    runs = load_runs([path])
    by_id = {r.record.id: r for r in runs}
    assert [by_id[i].fit_quality for i in (sound, poor, rough)] == ["sound", "poor", "rough"]
    r2 = by_id[rough].fit().fit["r2_overall"]
    assert 0 <= r2 < 0.9 and by_id[rough].fit_quality_words == f"rough (R² = {r2:.2f}, below 0.9)"
    assert [r.record.id for r in reference_candidates("tiny-llama", runs)] == [sound, rough, poor]
    note = left_out_runs("tiny-llama", runs)
    assert note is not None and f"runs.sqlite#{rough} (" in note and "its fit rough (R² = " in note
    assert "--output FILE.json` (with --accept-poor-fit for a poor one)" in note
    _, notes = newer_runs_stand(runs)
    assert [n.split(" left out: ")[0] for n in notes["tiny-llama"]] == [
        f"runs.sqlite#{poor}",
        f"runs.sqlite#{rough}",
    ]
    assert (
        notes["tiny-llama"][1].startswith(f"runs.sqlite#{rough} left out: its fit is rough (R² = ")
        and f"runs.sqlite#{sound}, a run of tiny-llama whose fit is sound" in notes["tiny-llama"][1]
    )


def test_among_sound_runs_the_newest_engine_run_stands(tmp_path: Path) -> None:
    path = tmp_path / "runs.sqlite"
    with Store(path) as store:
        older = record_run(store, "older", 0.001)
        hf = record_run(store, "hf", 0.001, backend="hf")
        newer = record_run(store, "newer", 0.002)
    runs = load_runs([path])
    assert not any(r.poor_fit for r in runs)
    order = [r.record.id for r in reference_candidates("tiny-llama", runs)]
    assert order == [newer, older, hf]
    _, notes = newer_runs_stand(runs)
    (why,) = notes["tiny-llama"]
    assert why.startswith(f"runs.sqlite#{older} left out: runs.sqlite#{newer} is a newer run")
