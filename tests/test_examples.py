"""The walkthrough's pieces that need no profiling: stand-ins and its user-provided inputs."""

from __future__ import annotations

import importlib.util

from infermeter.model.fitted import model_key
from infermeter.model.tradeoffs import read_capabilities, read_scenario_queries
from infermeter.spec.catalog import TABLE1, get_spec
from paths import REPO

EXAMPLES = REPO / "examples"


def _walkthrough():
    spec = importlib.util.spec_from_file_location("walkthrough", EXAMPLES / "paper_table3_fig9.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_stand_ins_keep_the_order_of_size_and_name_their_model() -> None:
    walkthrough = _walkthrough()
    originals = [get_spec(row.name) for row in TABLE1]
    stand_ins = [walkthrough.stand_in(spec) for spec in originals]
    for original, small in zip(originals, stand_ins, strict=True):
        assert small.extra["stands_for"] == original.name
        assert small.num_params < original.num_params / 1000
    by_size = sorted(range(10), key=lambda i: originals[i].non_embedding_params)
    small_sizes = [stand_ins[i].non_embedding_params for i in by_size]
    # Largest and smallest stay so (rounding layers may swap close neighbours).
    assert small_sizes[0] == min(small_sizes) and small_sizes[-1] == max(small_sizes)


def test_helm_inputs_join_every_table1_model() -> None:
    caps = read_capabilities(EXAMPLES / "data" / "helm_accuracies.csv")
    queries = read_scenario_queries([EXAMPLES / "data" / "helm_scenarios.csv"])
    assert {model_key(m) for m in caps.model} == {row.name for row in TABLE1}
    assert set(caps.scenario) == set(queries.scenario)
