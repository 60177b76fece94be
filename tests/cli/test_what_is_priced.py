"""Say what is priced (issue 18): a nominal CPU and rated-power energy are labelled, an API
run is priced only on hardware the user names, estimates outside the profile are warned about
and past the model's context refused, `compare` refuses two models, and the small verbs
(--version, --num-accelerators 0, --folds) answer as a user expects."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cli_runner import assert_one_line, invoke
from timed_server import TimedServer

GRID = ["--prompt-sizes", "1,16", "--output-sizes", "1,4,8", "--trials", "2"]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """CPU profiles of two tiny models (one store), as a user makes them."""
    tmp = tmp_path_factory.mktemp("priced")
    out = {"store": tmp / "s.sqlite"}
    for name in ("tiny-llama", "tiny-gpt2"):
        out[name] = tmp / f"{name}.json"
        result = invoke("profile", name, "--device", "cpu", *GRID, "--accept-poor-fit",
                        "--store", out["store"], "--output", out[name])  # fmt: skip
        assert result.exit_code == 0, result.output
        if name == "tiny-llama":
            out["profile_output"] = result.stdout + result.stderr  # type: ignore[assignment]
    return out


def test_cpu_prices_are_labelled_nominal_and_energy_rated(models: dict[str, Path]) -> None:
    said = str(models["profile_output"])
    assert "nominal part" in said and "not measured" in said
    # the table's title labels the part, and the note alone says what that means, once
    words = " ".join(said.split())  # a table's title wraps at the table's width
    assert "1 × cpu (nominal: $" in words and words.count("nominal part") == 1, said
    result = invoke("estimate", "--profile", models["tiny-llama"], "--prompt-tokens", "8",
                    "--output-tokens", "4")  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "cpu is priced as a nominal part" in result.stderr
    assert "energy_j is rated power × runtime" in result.stderr and "not measured" in result.stderr


def test_profile_summary_stays_within_the_profile(models: dict[str, Path]) -> None:
    """The profile's own table priced o = 64 from a grid whose largest o was 32."""
    said = str(models["profile_output"])
    words = " ".join(said.split())  # a table's title wraps at the table's width
    assert "within the profiled range" in words
    assert "longer than the profile's largest" not in said and "more output tokens" not in said
    table = said.split("estimates on ", 1)[1]
    rows = [line.split("│")[1:3] for line in table.splitlines() if line.count("│") > 3]
    sizes = [(int(p), int(o)) for p, o in rows]
    assert max(p for p, _ in sizes) == 16 and max(o for _, o in sizes) == 8


def test_estimates_outside_the_profile_are_warned_and_past_the_context_refused(
    models: dict[str, Path],
) -> None:
    model = models["tiny-llama"]
    beyond = invoke("estimate", "--profile", model, "--prompt-tokens", "100", "--output-tokens",
                    "50")  # fmt: skip
    assert beyond.exit_code == 0, beyond.output
    assert "longer than the profile's largest (16 tokens" in beyond.stderr
    assert "more output tokens than the profile's longest (8" in beyond.stderr
    past = invoke("estimate", "--profile", model, "--prompt-tokens", "2000", "--output-tokens",
                  "1")  # fmt: skip
    assert_one_line(past, "exceeds tiny-llama's context of 512 tokens")


def test_an_api_run_is_priced_only_on_named_hardware(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("INFERMETER_CACHE_DIR", str(tmp_path / "cache"))
    model = tmp_path / "api.json"
    with TimedServer() as server:
        profiled = invoke("profile", "api-model", "--backend", "openai", "--base-url", server.url,
                          "--prompt-sizes", "8,16", "--output-sizes", "1,4", "--trials", "2",
                          "--store", tmp_path / "s.sqlite", "--output", model,
                          "--accept-poor-fit")  # fmt: skip
    assert profiled.exit_code == 0, profiled.output
    assert "not priced" in profiled.stdout and "cost_usd" not in profiled.stdout
    unpriced = invoke("estimate", "--profile", model, "--prompt-tokens", "8", "--output-tokens",
                      "2", "--output", tmp_path / "e.csv")  # fmt: skip
    assert unpriced.exit_code == 0, unpriced.output
    assert "an API run is not priced" in unpriced.stderr
    assert list(pd.read_csv(tmp_path / "e.csv").columns) == [
        "prompt_tokens", "output_tokens", "runtime_s"
    ]  # fmt: skip
    priced = invoke("estimate", "--profile", model, "--prompt-tokens", "8", "--output-tokens",
                    "2", "--accelerator", "h100", "--output", tmp_path / "p.csv")  # fmt: skip
    assert priced.exit_code == 0, priced.output
    assert (pd.read_csv(tmp_path / "p.csv")["cost_usd"] > 0).all()


def test_compare_refuses_two_models_unless_told(models: dict[str, Path]) -> None:
    pair = ["--profile", models["tiny-llama"], "--profile", models["tiny-gpt2"]]
    assert_one_line(invoke("compare", *pair), "different models", "--allow-different-models")
    allowed = invoke("compare", *pair, "--allow-different-models")
    assert allowed.exit_code == 0, allowed.output
    assert "different model" in allowed.stdout
    assert "faster and cheaper" not in allowed.stdout and "slower" not in allowed.stdout


def test_small_verbs(models: dict[str, Path]) -> None:
    version = invoke("--version")
    assert version.exit_code == 0 and version.stdout.startswith("infermeter ")
    assert_one_line(
        invoke("estimate", "--profile", models["tiny-llama"], "--prompt-tokens", "8",
               "--output-tokens", "2", "--num-accelerators", "0"),
        "--num-accelerators must be",
    )  # fmt: skip
    assert_one_line(
        invoke("profile", "tiny-llama", "--device", "cpu", "--num-accelerators", "0"),
        "--num-accelerators must be at least 1",
    )
    assert_one_line(invoke("fit", "--store", models["store"], "--folds", "1"), "--folds")
    fitted = invoke("fit", "--store", models["store"], "--folds", "0", "--accept-poor-fit")
    assert fitted.exit_code == 0 and "nan" not in fitted.stdout.lower(), fitted.output


def _store_with_validation(path: Path, off_by: float) -> None:
    """A run whose points lie on t = 0.01 + 0.002·p/16 + 0.005·(o − 1) and whose validation
    queries measured `off_by` times that: what a machine busy with other work produces."""
    from infermeter.backends.base import Measurement, Point
    from infermeter.spec.catalog import get_spec
    from infermeter.store.db import Store

    def t(p: int, o: int) -> float:
        return 0.01 + 0.002 * p / 16 + 0.005 * (o - 1)

    spec = get_spec("tiny-llama")
    with Store(path) as db:
        run, _ = db.open_run(key="noisy", model=spec.name, spec=spec.to_dict(),
                             stack={"backend": "engine"}, backend="engine", backend_info={},
                             grid={}, device="cpu: test")  # fmt: skip
        grid = [(Point(p, o, 1, k), Measurement(t(p, o))) for p in (1, 16, 64)
                for o in (1, 4, 8) for k in range(2)]  # fmt: skip
        db.record_points(run.id, grid)
        checks = [(Point(p, o, 1, 0), Measurement(off_by * t(p, o))) for p, o in ((9, 3), (40, 6))]
        db.record_points(run.id, checks, validation=True)


def test_a_noisy_profile_says_so(tmp_path: Path) -> None:
    for off_by, warned in ((1.01, False), (1.5, True)):
        store = tmp_path / f"s{off_by}.sqlite"
        _store_with_validation(store, off_by)
        shown = invoke("show", "--store", store)
        assert shown.exit_code == 0, shown.output
        assert ("too noisy for a trustworthy time fit" in shown.stderr) == warned, shown.stderr
