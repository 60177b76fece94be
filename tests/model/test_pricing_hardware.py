"""`estimate` prices with the hardware the user names: a --hardware-config entry for the
accelerator a profile ran on beats the figures the profile stored (flags beat both), the
title says where the price and power came from, and a profile priced on another accelerator
than the one it was measured on says that its runtime is not converted.

The profiles are fitted by `infermeter fit` from a stored run of points on a known line (a
CPU stack, as `profile --device cpu` stores it), so no figure here depends on timing."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from cli_runner import invoke
from infermeter.spec.hardware import ACCELERATORS, Stack, get_accelerator, load_hardware_config

CPU = ACCELERATORS["cpu"]  # the built-in nominal socket: $4.8384/h, 350 W
H100 = ACCELERATORS["h100-sxm"]
QUERIES = ["--prompt-tokens", "1,64", "--output-tokens", "1,8"]


def t(p: int, o: int) -> float:
    """The runtime the stored points lie on (and so the fit's, exactly)."""
    return 0.01 + 0.002 * p / 16 + 0.005 * (o - 1)


def _fitted_cpu_profile(tmp: Path, overrides: dict[str, float] | None = None) -> Path:
    """A fitted model JSON of a CPU run of tiny-llama; `overrides` as profiled with
    --price-per-hour / --power-watts (stored in the run's stack)."""
    from infermeter.backends.base import Measurement, Point
    from infermeter.spec.catalog import get_spec
    from infermeter.store.db import Store

    spec = get_spec("tiny-llama")
    stack = Stack("engine", get_accelerator("cpu", overrides), dtype="float32").to_dict()
    store, model = tmp / "s.sqlite", tmp / "m.json"
    points = [
        (Point(p, o, 1, k), Measurement(t(p, o)))
        for p in (1, 16, 64)
        for o in (1, 4, 8)
        for k in range(2)
    ]
    with Store(store) as db:
        run, _ = db.open_run(key="cpu", model=spec.name, spec=spec.to_dict(), stack=stack,
                             backend="engine", backend_info={}, grid={}, device="cpu")  # fmt: skip
        db.record_points(run.id, points)
    fitted = invoke("fit", "--store", store, "--output", model)
    assert fitted.exit_code == 0, fitted.output
    return model


@pytest.fixture(scope="module")
def profile(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _fitted_cpu_profile(tmp_path_factory.mktemp("cpu"))


def _config(tmp: Path, text: str) -> Path:
    path = tmp / "hw3.toml"
    path.write_text(text)
    return path


def _estimate(model: Path, tmp: Path, *flags: object) -> tuple[pd.DataFrame, str, str]:
    """(the estimates written, the title and table printed as one line, the notes)."""
    out = tmp / "e.csv"
    result = invoke("estimate", "--profile", model, *QUERIES, "--output", out, *flags)
    assert result.exit_code == 0, result.output
    return pd.read_csv(out), " ".join(result.stdout.split()), result.stderr


def _priced_at(frame: pd.DataFrame, usd_per_hour: float, watts: float) -> None:
    """Every row's dollars and joules are its runtime × the given price and power."""
    expected = [t(p, o) for p, o in zip(frame.prompt_tokens, frame.output_tokens, strict=True)]
    assert frame.runtime_s.tolist() == pytest.approx(expected, rel=1e-9)
    assert frame.cost_usd.tolist() == pytest.approx([s * usd_per_hour / 3600 for s in expected])
    assert frame.energy_j.tolist() == pytest.approx([s * watts for s in expected])


CPU_CONFIG = "[accelerators.cpu]\nprice_per_hour_usd = 1.0\ntdp_watts = 100\n"


def test_a_config_entry_for_the_profiled_accelerator_prices_it(
    profile: Path, tmp_path: Path
) -> None:
    """The user's report (ff17809): the config's $1/h and 100 W were ignored for the profile's
    own accelerator, and the nominal 350 W socket priced instead."""
    config = _config(tmp_path, CPU_CONFIG)
    frame, said, notes = _estimate(profile, tmp_path, "--hardware-config", config)
    _priced_at(frame, 1.0, 100.0)
    assert "1 × cpu ($1/h, 100 W rated each; $/h and W from hardware config hw3.toml)" in said
    assert "nominal" not in said and "nominal part" not in notes, notes
    assert "(100 W), not measured" in notes
    # the same figures as naming the accelerator, and as `hardware` lists
    named, _, _ = _estimate(profile, tmp_path, "--hardware-config", config, "--accelerator", "cpu")
    assert named.cost_usd.tolist() == pytest.approx(frame.cost_usd.tolist())
    assert named.energy_j.tolist() == pytest.approx(frame.energy_j.tolist())


def test_flags_beat_the_config_and_the_config_beats_the_profile(
    profile: Path, tmp_path: Path
) -> None:
    config = _config(tmp_path, CPU_CONFIG)
    frame, said, _ = _estimate(profile, tmp_path, "--hardware-config", config,
                               "--price-per-hour", "3", "--power-watts", "40")  # fmt: skip
    _priced_at(frame, 3.0, 40.0)
    assert "($3/h, 40 W rated each; $/h and W overridden)" in said
    frame, said, _ = _estimate(profile, tmp_path, "--hardware-config", config,
                               "--power-watts", "40")  # fmt: skip
    _priced_at(frame, 1.0, 40.0)
    assert "$/h from hardware config hw3.toml, W overridden" in said


def test_a_config_that_sets_only_the_price_keeps_the_profiles_power(
    profile: Path, tmp_path: Path
) -> None:
    config = _config(tmp_path, "[accelerators.cpu]\nprice_per_hour_usd = 1.0\n")
    frame, said, notes = _estimate(profile, tmp_path, "--hardware-config", config)
    _priced_at(frame, 1.0, CPU.tdp_watts)
    assert "1 × cpu ($1/h, nominal 350 W rated each; $/h from hardware config hw3.toml)" in said
    # the power alone is still the nominal socket's, and only its flag is suggested
    assert "nominal part (350 W rated)" in notes and "pass --power-watts (or" in notes, notes


def test_a_config_for_other_hardware_leaves_the_profiles_own_figures(tmp_path: Path) -> None:
    """A profile made with --price-per-hour 2 keeps that price under a config that names
    another accelerator only; its power is the catalog's."""
    model = _fitted_cpu_profile(tmp_path, {"price_per_hour_usd": 2.0})
    config = _config(tmp_path, "[accelerators.h100]\nprice_per_hour_usd = 1.0\n")
    frame, said, notes = _estimate(model, tmp_path, "--hardware-config", config)
    _priced_at(frame, 2.0, CPU.tdp_watts)
    assert "1 × cpu ($2/h, nominal 350 W rated each; $/h as profiled)" in said
    assert "measured on" not in notes


def test_another_accelerator_is_said_to_price_the_measured_runtime(
    profile: Path, tmp_path: Path
) -> None:
    """Bug 6: a CPU profile priced at H100 rates said nothing of its CPU-measured runtime."""
    frame, said, notes = _estimate(profile, tmp_path, "--accelerator", "h100")
    _priced_at(frame, H100.price_per_hour_usd, H100.tdp_watts)  # the runtime is not converted
    assert "1 × h100-sxm ($12.29/h, 700 W rated each)" in said
    note = " ".join(notes.split())
    assert "runtime_s was measured on cpu and is priced at h100-sxm's rates" in note, notes
    assert "not converted" in note
    for same in ("cpu", "CPU"):  # the accelerator the profile ran on: nothing to say
        _, _, notes = _estimate(profile, tmp_path, "--accelerator", same)
        assert "measured on" not in notes, notes
    _, _, notes = _estimate(profile, tmp_path)
    assert "measured on" not in notes, notes


def test_the_config_says_which_entries_and_fields_it_sets(tmp_path: Path) -> None:
    path = tmp_path / "hw.toml"
    path.write_text('[accelerators.H100]\ntdp_watts = 500\ndisplay_name = "ours"\n'
                    "[accelerators.cpu]\nprice_per_hour_usd = 1.0\n")  # fmt: skip
    catalog = load_hardware_config(path)
    assert catalog["h100-sxm"].tdp_watts == 500 and catalog["a100-sxm-80gb"].tdp_watts == 400
    assert catalog.configured_fields("h100") == {
        "tdp_watts": "hardware config hw.toml",
        "display_name": "hardware config hw.toml",
    }
    assert catalog.configured_fields("cpu") == {"price_per_hour_usd": "hardware config hw.toml"}
    assert catalog.configured_fields("a100") == {}
