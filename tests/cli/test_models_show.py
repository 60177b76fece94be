"""`infermeter models --show`: the spec as infermeter reads it, from a name or a config.json."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from infermeter.cli.main import app
from infermeter.spec.catalog import get_spec, spec_report
from paths import DATA

CONFIGS = DATA / "hf_configs"


def test_report_of_a_moe_spec() -> None:
    spec = get_spec("qwen3-30b-a3b")
    facts, per_batch = spec_report(spec, context=1024, batches=(1, 8))
    table = dict(zip(facts.figure, facts.value, strict=True))
    assert table["total parameters"] == "30.532 B"
    assert table["active parameters per token"] == "3.353 B (3.042 B without the input embedding)"
    assert "top-8 of 128 experts" in table["FFN"]
    assert per_batch["distinct experts/layer"].tolist() == pytest.approx(
        [8.0, 128 * (1 - (1 - 8 / 128) ** 8)]
    )
    assert per_batch["decode GB read"].tolist() == pytest.approx(
        [spec.decode_bytes(1024, b) / 1e9 for b in (1, 8)]
    )


def test_cli_show_reads_a_config_file_and_a_dtype() -> None:
    result = CliRunner().invoke(
        app,
        ["models", "--show", str(CONFIGS / "gpt-oss-20b.json"), "--dtype", "float8"],
        env={"COLUMNS": "250"},
    )
    assert result.exit_code == 0, result.output
    assert "window 128 on 12/24 layers" in result.output and "sinks" in result.output
    assert "20.91 GB at float8" in result.output  # one byte per weight
    assert "distinct experts/layer" in result.output


def test_cli_show_unknown_model_is_one_line() -> None:
    result = CliRunner().invoke(app, ["models", "--show", "mixtral-9x9b"])
    assert result.exit_code != 0
    assert "mixtral-8x7b" in result.output and "Traceback" not in result.output


def test_active_parameters_match_a_source_that_leaves_the_embedding_out() -> None:
    """gpt-oss's card counts 5.13B active without the input embedding; the report gives both
    counts, so its source line and its figure can be matched (a user review)."""
    facts, _ = spec_report(get_spec("gpt-oss-120b"), context=1024, batches=(1,))
    table = dict(zip(facts.figure, facts.value, strict=True))
    assert "5.13B active" in table["source"]
    assert table["active parameters per token"] == "5.712 B (5.133 B without the input embedding)"
