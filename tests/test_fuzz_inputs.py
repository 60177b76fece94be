"""Fuzzing the parsers users feed files to: queries (CSV, JSONL, JSON, Parquet), points CSV,
HELM efficiency_data JSON, cost-model JSON and config.json.

Every input either is refused with one UserError line, or gives a result that is right to the
eye: estimates finite and never negative (a runtime or measured energy above 0: a model that
extrapolates a query to nothing is refused), specs with finite positive sizes. Never a traceback,
never a NaN model or a cost that wrapped around (issue 18 found 282 and 528 of those).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from infermeter.errors import UserError
from infermeter.model.cost_model import CostModel
from infermeter.model.estimate import (
    Pricing,
    estimate_queries,
    query_grid,
    read_points,
    read_queries,
)
from infermeter.model.fit import FitPolicy, fit_profile
from infermeter.model.helm import load_model_set
from infermeter.spec.hfconfig import load_hf_config

FUZZ = settings(
    max_examples=int(os.environ.get("INFERMETER_FUZZ_EXAMPLES", 60)),
    deadline=None,
    database=None,
    derandomize=os.environ.get("INFERMETER_FUZZ_RANDOM") is None,  # CI: the same examples
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
PRICING = Pricing("h100", 2, 3.0, 700.0)
MODEL = CostModel([1, 512], [0.01, 0.05], 0.01, decode_curves=None)

# Cells as a careless or hostile file holds them: edge numbers, text, true/false, nothing.
NUMBERS = st.one_of(
    st.integers(-5, 5000),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0, 1, 1.5, -1, 1e308, 1e19, 2**63, 9.2e18, 1e-300]),
)
CELLS = st.one_of(
    NUMBERS,
    st.text(max_size=6),
    st.sampled_from(["1e308", "nan", "inf", "-3", "1.0", " 7 ", "false", "0x10", ""]),
    st.booleans(),
    st.none(),
)
JSON_CELLS = st.one_of(CELLS, st.lists(st.integers(0, 3), max_size=2), st.just({"a": 1}))
QUERY_COLUMNS = st.lists(
    st.sampled_from(["prompt_tokens", "output_tokens", "batch_size", "id", "junk"]),
    min_size=1,
    max_size=5,
)


def _check_estimates(frame: pd.DataFrame) -> None:
    for column in frame.columns:
        if column == "id":
            continue
        values = frame[column].to_numpy(dtype=float)
        assert np.isfinite(values).all(), (column, values)
        assert (values >= 0).all(), (column, values)
        if column in ("runtime_s", "energy_measured_j"):  # no query takes no time or energy
            assert (values > 0).all(), (column, values)


def _accepted_or_user_error(action: Any) -> Any:
    try:
        return action()
    except UserError as error:
        assert "\n" not in str(error).strip(), str(error)
        return None


def _read_written(name: str, text: str, reader: Any) -> Any:
    """`reader(path)` of `text` written to a file called `name` in a fresh folder: what it
    returns, or None where it refused with a one-line UserError."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(text)
        return _accepted_or_user_error(lambda: reader(path))


def _csv(rows: list[list[Any]], header: list[str]) -> str:
    def cell(value: Any) -> str:
        return "" if value is None else str(value).replace(",", ";").replace("\n", " ")

    return "\n".join([",".join(header), *(",".join(cell(v) for v in row) for row in rows)]) + "\n"


@st.composite
def query_tables(draw: st.DrawFn) -> tuple[list[str], list[list[Any]]]:
    header = draw(QUERY_COLUMNS)
    rows = draw(
        st.lists(
            st.lists(CELLS, min_size=len(header), max_size=len(header)), min_size=0, max_size=6
        )
    )
    return header, rows


@FUZZ
@given(query_tables(), st.sampled_from([".csv", ".jsonl", ".json", ".parquet"]))
def test_queries_files(table: tuple[list[str], list[list[Any]]], suffix: str) -> None:
    header, rows = table
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"q{suffix}"
        if suffix == ".csv":
            path.write_text(_csv(rows, header))
        elif suffix in (".jsonl", ".json"):
            records = [dict(zip(header, row, strict=False)) for row in rows]
            if suffix == ".jsonl":
                path.write_text("".join(json.dumps(r) + "\n" for r in records))
            else:
                path.write_text(json.dumps(records))
        else:
            frame = pd.DataFrame(
                {h: [str(r[i]) for r in rows] for i, h in enumerate(dict.fromkeys(header))}
            )
            frame.to_parquet(path)
        queries = _accepted_or_user_error(lambda: read_queries(path))
        if queries is None:
            return
        for column in ("prompt_tokens", "output_tokens"):
            assert queries[column].dtype == np.int64 and (queries[column] >= 1).all()
        priced = _accepted_or_user_error(lambda: estimate_queries(queries, MODEL, PRICING))
        if priced is not None:
            _check_estimates(priced)


@st.composite
def points_tables(draw: st.DrawFn) -> tuple[list[str], list[list[Any]]]:
    header = ["prompt_tokens", "output_tokens", "runtime_s"]
    header += draw(st.lists(st.sampled_from(["trial", "energy_j", "batch_size"]), max_size=2))
    good = st.tuples(
        st.sampled_from([1, 64, 512]),
        st.sampled_from([1, 8, 32]),
        st.floats(0.001, 10),
    )
    rows = []
    for _ in range(draw(st.integers(0, 12))):
        p, o, t = draw(good)
        row: list[Any] = [p, o, t + 0.01 * o + 1e-4 * p]
        row += [draw(st.integers(0, 3)) for _ in header[3:]]
        if draw(st.booleans()):  # spoil one cell
            row[draw(st.integers(0, len(row) - 1))] = draw(CELLS)
        rows.append(row)
    return header, rows


@FUZZ
@given(points_tables())
def test_points_csv(table: tuple[list[str], list[list[Any]]]) -> None:
    header, rows = table
    points = _read_written("points.csv", _csv(rows, header), read_points)
    if points is None:
        return
    assert np.isfinite(points["runtime_s"]).all() and (points["runtime_s"] > 0).all()
    policy = FitPolicy(api=False, decode="line", accept_poor_fit=True)
    models = _accepted_or_user_error(lambda: fit_profile(points, policy, model="fuzz"))
    if not models:
        return
    grid = query_grid([1, 100, 4000], [1, 50, 10_000])
    for model in models:
        if model.batch_size != 1 or model.quantity != "runtime_s":
            continue
        priced = _accepted_or_user_error(lambda m=model: estimate_queries(grid, m, PRICING))
        if priced is not None:
            _check_estimates(priced)


@st.composite
def helm_files(draw: st.DrawFn) -> Any:
    keys = st.one_of(st.sampled_from(["1", "256", "512", "01", "-1", "1.5", "x", "1e3"]))
    per_prompt = draw(st.dictionaries(keys, JSON_CELLS, max_size=4))
    entry: dict[str, Any] = {
        "runtime_per_output_token": draw(JSON_CELLS),
        "runtime_for_prompt_tokens": per_prompt,
    }
    if draw(st.booleans()):
        entry["overhead"] = draw(JSON_CELLS)
    if draw(st.booleans()):  # a well-formed entry with one spoiled value, or none spoiled
        entry = {
            "runtime_per_output_token": 0.02,
            "runtime_for_prompt_tokens": {"1": 0.1, "512": 0.4},
        }
        field = draw(st.sampled_from(["runtime_per_output_token", "overhead", "1", "512"]))
        value = draw(st.one_of(JSON_CELLS, st.floats(0, 10)))
        if field in ("1", "512"):
            entry["runtime_for_prompt_tokens"][field] = value
        else:
            entry[field] = value
    return {"m": entry}


@FUZZ
@given(helm_files())
def test_helm_files(data: Any) -> None:
    models = _read_written("helm.json", json.dumps(data), lambda path: load_model_set(path, "m"))
    if models is None:
        return
    grid = query_grid([1, 100, 4000], [1, 50, 100_000_000])
    priced = _accepted_or_user_error(lambda: estimate_queries(grid, models, PRICING))
    if priced is not None:
        _check_estimates(priced)


@FUZZ
@given(
    st.sampled_from(
        [
            "prompt_sizes",
            "prompt_encoding",
            "per_output_token",
            "overhead",
            "batch_size",
            "quantity",
            "stack",
            "fit",
            "output_token_slopes",
            "decode_curves",
        ]
    ),
    JSON_CELLS,
)
def test_cost_model_files(field: str, value: Any) -> None:
    body = MODEL.to_dict()
    body[field] = value
    models = _read_written("model.json", json.dumps(body), load_model_set)
    if models is None:
        return
    grid = query_grid([1, 100, 4000], [1, 50, 100_000_000])
    priced = _accepted_or_user_error(lambda: estimate_queries(grid, models, PRICING))
    if priced is not None:
        _check_estimates(priced)


GPT2 = {
    "model_type": "gpt2",
    "n_embd": 768,
    "n_layer": 12,
    "n_head": 12,
    "vocab_size": 50257,
    "n_positions": 1024,
    "tie_word_embeddings": True,
}
LLAMA = {
    "model_type": "llama",
    "hidden_size": 4096,
    "intermediate_size": 11008,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 32,
    "vocab_size": 32000,
    "max_position_embeddings": 4096,
    "rms_norm_eps": 1e-5,
    "rope_theta": 10000.0,
    "tie_word_embeddings": False,
    "attention_bias": False,
}


@FUZZ
@given(
    st.sampled_from([GPT2, LLAMA]),
    st.lists(st.tuples(st.sampled_from(sorted({*GPT2, *LLAMA})), JSON_CELLS), max_size=3),
)
def test_config_json(base: dict[str, Any], changes: list[tuple[str, Any]]) -> None:
    config = dict(base)
    for key, value in changes:
        config[key] = value
    spec = _read_written("config.json", json.dumps(config), load_hf_config)
    if spec is None:
        return
    assert spec.num_params > 0 and math.isfinite(float(spec.num_params))
    assert math.isfinite(spec.prefill_flops(min(512, spec.max_context)))
    assert isinstance(spec.tie_embeddings, bool)


def test_examples_issue_18_found(tmp_path: Path) -> None:
    """The fuzz's named findings: 1e308 output tokens, and "false" as tie_word_embeddings."""
    queries = tmp_path / "q.csv"
    queries.write_text("prompt_tokens,output_tokens\n10,1e308\n")
    try:
        read_queries(queries)
        raise AssertionError("1e308 output tokens accepted")
    except UserError as error:
        assert "row 1, output_tokens" in str(error) and "at most" in str(error)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({**LLAMA, "tie_word_embeddings": "false"}))
    try:
        load_hf_config(config)
        raise AssertionError('"false" read as a boolean')
    except UserError as error:
        assert "tie_word_embeddings" in str(error) and "true or false" in str(error)
