"""Trade-offs: Pareto frontiers, objectives (safely evaluated), FLOPs per query, the join."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from infermeter.errors import UserError
from infermeter.model.cost_model import CostModel
from infermeter.model.estimate import Pricing
from infermeter.model.tradeoffs import (
    ModelProfile,
    evaluate_objective,
    pareto_front,
    parse_objectives,
    query_flops,
    rank_models,
    read_capabilities,
    read_scenario_queries,
    tradeoff_table,
)
from infermeter.spec.catalog import get_spec

A100 = Pricing("a100", 1, 3.6, 400.0)  # $0.001/s, 400 W


def test_pareto_front_keeps_points_nothing_beats() -> None:
    cost = [1.0, 2.0, 3.0, 2.0, 0.5, np.nan]
    score = [0.5, 0.7, 0.6, 0.7, 0.2, 0.99]
    # 3.0/0.6 is beaten by 2.0/0.7; the tie at 2.0/0.7 keeps one; NaN is never on it.
    assert pareto_front(cost, score).tolist() == [True, True, False, False, True, False]
    assert pareto_front([], []).tolist() == []


def test_query_flops_match_the_spec_step_by_step() -> None:
    spec = get_spec("llama-7b")
    p, o = 300, 7
    expected = spec.prefill_flops(p) + sum(spec.decode_flops(p + i) for i in range(o - 1))
    assert query_flops(spec, p, o) == pytest.approx(expected)
    assert query_flops(spec, [p, 1], [o, 1]).tolist() == pytest.approx(
        [expected, spec.prefill_flops(1)]
    )


def test_objectives_are_arithmetic_on_columns_only() -> None:
    table = pd.DataFrame({"accuracy": [0.5, 0.8], "idealized_runtime_s": [0.1, 2.0]})
    values = evaluate_objective(table, "accuracy / log(idealized_runtime_s * 1000)")
    assert values.tolist() == pytest.approx([0.5 / np.log(100), 0.8 / np.log(2000)])
    for bad, fragment in [
        ("accuracy.__class__", "Attribute"),
        ("__import__('os')", "only"),
        ("accuracy / runtime", "unknown column 'runtime'"),
        ("accuracy /", "not an expression"),
        ("accuracy if accuracy else 1", "IfExp"),
        ("'a' + accuracy", "only numbers"),
        ("[accuracy]", "List"),
    ]:
        with pytest.raises(UserError, match=fragment.replace("(", r"\(")):
            evaluate_objective(table, bad)


def test_parse_objectives_names_and_bare_expressions() -> None:
    assert parse_objectives(["f=accuracy / idealized_runtime_s", "accuracy * 2"]) == {
        "f": "accuracy / idealized_runtime_s",
        "accuracy * 2": "accuracy * 2",
    }


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_capability_formats(tmp_path: Path) -> None:
    csv = _write(tmp_path / "a.csv", "model,scenario,exact_match\nm1,imdb,0.9\nm2,imdb,0.8\n")
    frame = read_capabilities(csv)  # the one numeric column is the score
    assert frame.accuracy.tolist() == [0.9, 0.8]
    nested = {"imdb": {"m1": {"exact_match": 0.9}, "m2": 0.8}, "boolq": {"m1": {"accuracy": 0.7}}}
    frame = read_capabilities(_write(tmp_path / "h.json", json.dumps(nested)))
    assert sorted(zip(frame.scenario, frame.model, frame.accuracy, strict=True)) == [
        ("boolq", "m1", 0.7),
        ("imdb", "m1", 0.9),
        ("imdb", "m2", 0.8),
    ]
    runs = {
        "boolq:model=openai_davinci,data_augmentation=canonical": [
            {"name": {"name": "exact_match", "split": "valid"}, "mean": 0.72}
        ]
    }
    frame = read_capabilities(_write(tmp_path / "r.json", json.dumps(runs)))
    assert frame.iloc[0].tolist() == ["boolq", "openai/davinci", 0.72]


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("model,score\nm1,0.5\n", "lacks column(s) scenario"),
        ("model,scenario,accuracy\nm1,imdb,high\n", "must be a number"),
        ("model,scenario,accuracy\nm1,imdb,0.5\nm1,imdb,0.6\n", "listed twice"),
        ("model,scenario,a,b\nm1,imdb,0.5,0.6\n", "--metric"),
    ],
)
def test_bad_capability_tables(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(UserError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        read_capabilities(_write(tmp_path / "bad.csv", text))


def test_scenario_queries(tmp_path: Path) -> None:
    jsonl = _write(tmp_path / "q.jsonl", '{"prompt_tokens": 10, "output_tokens": 2}\n' * 3)
    means = _write(tmp_path / "m.csv", "scenario,prompt_tokens,output_tokens\nraft,812.5,3.2\n")
    frame = read_scenario_queries([f"imdb={jsonl}", means])
    assert frame.groupby("scenario").size().to_dict() == {"imdb": 3, "raft": 1}
    with pytest.raises(UserError, match="no scenario column"):
        read_scenario_queries([jsonl])
    bad = _write(tmp_path / "b.csv", "scenario,prompt_tokens,output_tokens\nx,0,1\n")
    with pytest.raises(UserError, match="prompt_tokens must be a number >= 1"):
        read_scenario_queries([bad])


def _profile(name: str, pe: float, g: float, **more) -> ModelProfile:
    model = CostModel([1, 1000], [pe, pe * 2], g)
    return ModelProfile(name, model, A100, get_spec(name) if name != "mystery" else None, **more)


def test_tradeoff_table_joins_and_averages_over_instances() -> None:
    api = CostModel([1, 1000], [0.2, 0.4], 0.02, overhead=0.1)
    profiles = [
        _profile("gpt2", 0.01, 0.001, raw=api, denoised=api),
        _profile("OpenAI/davinci", 0.1, 0.01),  # the paper's spelling of a catalog model
        _profile("mystery", 0.05, 0.005),
    ]
    caps = pd.DataFrame(
        {
            "model": ["gpt2", "openai/davinci", "mystery", "nobody", "gpt2"],
            "scenario": ["imdb", "imdb", "imdb", "imdb", "unseen"],
            "accuracy": [0.6, 0.9, 0.7, 0.1, 0.5],
        }
    )
    queries = pd.DataFrame(
        {"scenario": ["imdb", "imdb"], "prompt_tokens": [1.0, 1000.0], "output_tokens": [1.0, 3.0]}
    )
    result = tradeoff_table(profiles, caps, queries)
    table = result.table.set_index("model")
    assert len(table) == 3 and any("nobody" in n for n in result.notes)
    assert any("unseen" in n for n in result.notes)
    # Mean over the two instances: (PE(1) + PE(1000) + 2g) / 2.
    assert table.loc["gpt2", "idealized_runtime_s"] == pytest.approx((0.01 + 0.02 + 0.002) / 2)
    assert table.loc["gpt2", "idealized_cost_usd"] == pytest.approx(
        table.loc["gpt2", "idealized_runtime_s"] * 0.001
    )
    assert table.loc["gpt2", "idealized_energy_j"] == pytest.approx(
        table.loc["gpt2", "idealized_runtime_s"] * 400
    )
    assert table.loc["gpt2", "denoised_runtime_s"] == pytest.approx((0.3 + 0.5 + 0.04) / 2)
    assert np.isnan(table.loc["openai/davinci", "raw_runtime_s"])
    assert np.isnan(table.loc["mystery", "params_b"])
    assert table.loc["openai/davinci", "params_b"] == pytest.approx(175, rel=0.01)
    # davinci: slowest but most accurate, so on the runtime frontier; mystery beats gpt2.
    assert table["pareto_idealized_runtime_s"].to_dict() == {
        "gpt2": True,
        "openai/davinci": True,
        "mystery": True,
    }
    ranks = rank_models(result.table).set_index(["objective", "model"])["rank"]
    assert ranks[("accuracy / runtime in s", "gpt2")] == 1
    assert ranks[("accuracy / runtime in s", "openai/davinci")] == 3


def test_nothing_to_join_is_a_user_error() -> None:
    caps = pd.DataFrame({"model": ["x"], "scenario": ["s"], "accuracy": [0.5]})
    queries = pd.DataFrame({"scenario": ["s"], "prompt_tokens": [1.0], "output_tokens": [1.0]})
    with pytest.raises(UserError, match="no \\(model, scenario\\) pair"):
        tradeoff_table([_profile("gpt2", 0.01, 0.001)], caps, queries)
