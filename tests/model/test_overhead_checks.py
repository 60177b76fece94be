"""`fit --overhead S`: a given overhead is checked against what was measured before fitting.

No query can take less than the overhead, so one above the fastest measured query is refused
in one line naming both (it once set PE to 0 and priced that query ~5x its measured time); one
below it that still exceeds a line's fitted PE is kept, with a note saying PE is 0 there.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from cli_runner import assert_one_line, invoke
from infermeter.backends.base import Measurement, Point
from infermeter.errors import UserError
from infermeter.experiments.profile import ProfileGrid
from infermeter.model.fit import FitPolicy, fit_cost_model, fit_profile
from infermeter.spec.catalog import get_spec
from infermeter.store.db import Store

PROMPTS, OUTPUTS = (1, 16, 64), (1, 8, 16)


def t(p: int, o: int) -> float:
    """A local stack's runtime: 0.0425 s at p = 1, o = 1 (the fastest query)."""
    return 0.042 + 0.0005 * p + 0.003 * (o - 1)


def points(trials: int = 2) -> pd.DataFrame:
    """Trial k measured (1 + 1%·k) times t: the fastest trial of each point is t itself."""
    rows = [
        (p, o, k, t(p, o) * (1 + 0.01 * k)) for p in PROMPTS for o in OUTPUTS for k in range(trials)
    ]
    return pd.DataFrame(rows, columns=["prompt_tokens", "output_tokens", "trial", "runtime_s"])


def make_store(path: Path) -> Path:
    """A complete engine run of these points, stored as a profile stores them."""
    spec = get_spec("tiny-llama")
    grid = ProfileGrid(PROMPTS, OUTPUTS, (1,), 2)
    with Store(path) as db:
        run, _ = db.open_run(key="overhead", model=spec.name, spec=spec.to_dict(),
                             stack={"backend": "engine"}, backend="engine", backend_info={},
                             grid=grid.to_dict(), device="cpu: test")  # fmt: skip
        db.record_points(
            run.id, [(Point(r[0], r[1], 1, r[2]), Measurement(r[3])) for r in points().values]
        )
        db.set_run_status(run.id, "complete")
    return path


@pytest.mark.parametrize("overhead", [0.2, 0.5, 0.0426])
def test_an_overhead_above_the_fastest_query_is_refused(overhead: float) -> None:
    with pytest.raises(UserError) as refused:
        fit_cost_model(points(), overhead=overhead, decode="curve")
    message = str(refused.value)
    assert f"--overhead {overhead:g} s exceeds the fastest measured query" in message
    assert "(0.0425 s at p=1, o=1)" in message and "--overhead auto" in message
    assert "noisy" not in message  # the user's value, not the machine, is the problem


def test_the_fastest_query_is_its_fastest_trial_and_batch_is_named() -> None:
    slow_first = points().assign(runtime_s=lambda f: f.runtime_s * (1 + 0.5 * (f.trial == 0)))
    with pytest.raises(UserError, match=r"0\.04293 s at p=1, o=1"):  # trial 1: 1.01 × 0.0425
        fit_cost_model(slow_first, overhead=0.05, denoise="mean")
    batched = points().assign(batch_size=4)
    with pytest.raises(UserError, match=r"at p=1, o=1, batch 4\)"):
        fit_profile(batched, FitPolicy(overhead=0.1))


def test_an_overhead_above_a_lines_prompt_encoding_says_pe_is_zero_there() -> None:
    """A line through bent points meets o = 1 below the measured 0.05 s: an overhead of
    0.048 s is possible (below every query) yet exceeds that PE, which is then 0, said so."""
    rows = [
        (1, 1, 0.050), (1, 8, 0.060), (1, 16, 0.100),
        (64, 1, 0.080), (64, 8, 0.090), (64, 16, 0.130),
    ]  # fmt: skip
    bent = pd.DataFrame(rows, columns=["prompt_tokens", "output_tokens", "runtime_s"])
    model = fit_cost_model(bent, overhead=0.048, decode="line")
    notes = " ".join(model.fit["notes"])
    assert "exceeds the fitted prompt encoding at prompt size(s) 1;" in notes, notes
    assert "PE is priced as 0 there" in notes
    assert model.prompt_encoding[0] == 0.0 and model.prompt_encoding[1] > 0
    # below every PE: the fastest query priced as measured, and nothing to say
    within = fit_cost_model(points(), overhead=0.04, decode="curve")
    assert within.overhead == 0.04
    assert within.predict([1], [1])[0] == pytest.approx(t(1, 1))
    assert not any("overhead" in note for note in within.fit["notes"])


def test_cli_refuses_before_fitting_and_writes_nothing(tmp_path: Path) -> None:
    store = make_store(tmp_path / "j.sqlite")
    output = tmp_path / "ov.json"
    for overhead in ("0.2", "0.5"):
        result = invoke("fit", "--store", store, "--overhead", overhead, "--output", output)
        assert_one_line(
            result,
            f"--overhead {overhead} s exceeds the fastest measured query (0.0425 s at p=1, o=1)",
            "use a smaller overhead or --overhead auto",
        )
        assert not output.exists()
    kept = invoke("fit", "--store", store, "--overhead", "0.04", "--output", output)
    assert kept.exit_code == 0, kept.output
    assert json.loads(output.read_text())["overhead"] == 0.04
