"""HELM efficiency_data: round trip unchanged, and the same PE either way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from infermeter.errors import UserError
from infermeter.model.helm import load_helm_efficiency, load_profile, save_helm_efficiency
from paths import DATA

SAMPLE = DATA / "helm_efficiency_sample.json"


def test_round_trip_is_unchanged(tmp_path: Path) -> None:
    models = load_helm_efficiency(SAMPLE)
    out = save_helm_efficiency(models, tmp_path / "out.json")
    assert json.loads(out.read_text()) == json.loads(SAMPLE.read_text())


def test_helm_entry_prices_with_piecewise_linear_pe() -> None:
    model = load_profile(SAMPLE, "cohere/xlarge-20220609")
    assert model.overhead == pytest.approx(0.2175)
    # Halfway between the 512 and 1536 knots.
    expected = (0.1622 + 0.3917) / 2 + 9 * 0.0213 + 0.2175
    assert model.predict(1024, 10) == pytest.approx(expected)


def test_profile_file_needs_model_when_several(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="--model"):
        load_profile(SAMPLE)
    with pytest.raises(UserError, match="not in"):
        load_profile(SAMPLE, "nobody/none")


def test_our_fit_exports_to_helm_and_back(tmp_path: Path) -> None:
    from infermeter.model.cost_model import CostModel

    ours = CostModel([1, 256, 512], [0.01, 0.02, 0.04], 0.005, model="tiny")
    path = save_helm_efficiency({"tiny": ours}, tmp_path / "h.json")
    back = load_profile(path, "tiny")
    assert back.prompt_sizes == ours.prompt_sizes
    assert back.prompt_encoding == ours.prompt_encoding
    assert back.per_output_token == ours.per_output_token


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "not valid JSON"),
        ('{"m": {"runtime_for_prompt_tokens": {}}}', "neither"),
        (
            '{"m": {"runtime_per_output_token": 0.1, "runtime_for_prompt_tokens": {"x": 1}}}',
            "not a whole number of tokens",
        ),
    ],
)
def test_bad_profile_files(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(UserError, match=message):
        load_profile(path, "m")


def test_missing_profile_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_profile(tmp_path / "nope.json")
