"""The built-in catalog: paper Table 1, LLaMA, Llama-3, GPT-2, lookup and suggestions."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pytest

from infermeter.errors import UserError
from infermeter.spec.catalog import CATALOG, TABLE1, catalog_table, get_spec, resolve_spec
from paths import DATA

CONFIGS = DATA / "hf_configs"

# J1-Large: Table 1 prints 6.7B (GPT-3 6.7B's count), but AI21's 256K vocabulary makes the
# published architecture 7.5B, AI21's own figure; we check against that.
PUBLISHED_INSTEAD = {"ai21/j1-large-v1": 7.5}


@pytest.mark.parametrize("row", TABLE1, ids=lambda row: row.name)
def test_table1_shapes_and_params(row) -> None:
    spec = get_spec(row.name)
    assert (spec.hidden_size, spec.num_layers, spec.num_heads) == (
        row.hidden_size,
        row.num_layers,
        row.num_heads,
    )
    expected = PUBLISHED_INSTEAD.get(row.name, row.params_b)
    assert spec.num_params / 1e9 == pytest.approx(expected, rel=0.03)
    assert spec.source.strip()


def test_j1_large_deviation_from_table1_is_the_vocabulary() -> None:
    spec = get_spec("ai21/j1-large-v1")
    assert spec.vocab_size == 256000
    # with GPT-3's vocabulary the same shape gives Table 1's 6.7B
    gpt3_vocab = spec.num_params - (256000 - 50257) * spec.hidden_size
    assert gpt3_vocab / 1e9 == pytest.approx(6.7, rel=0.03)


@pytest.mark.parametrize(
    ("name", "params_b"),
    [
        ("llama-7b", 6.7),
        ("llama-13b", 13.0),
        ("llama-65b", 65.2),
        ("llama-3-8b", 8.03),
        ("llama-3-70b", 70.6),
        ("gpt2", 0.124),
    ],
)
def test_open_model_params(name: str, params_b: float) -> None:
    assert get_spec(name).num_params / 1e9 == pytest.approx(params_b, rel=0.03)


PUBLISHED = [name for name, spec in CATALOG.items() if "published_params_b" in spec.extra]
# Publishers that give the active count to two significant digits only, where the derived
# count differs by more than 1%: the test holds it to those digits (rounded or truncated).
TWO_DIGITS = {
    "qwen3-30b-a3b": "3.35B derived; Qwen's 3.3B truncates it",
    "deepseek-v2-lite": "2.45B derived (no embedding); DeepSeek's 2.4B truncates it",
    "deepseek-v3": "36.6B derived (no embedding); DeepSeek's 37B rounds it",
}


def test_issue_20_models_are_in_the_catalog() -> None:
    wanted = {
        "llama-3.1-8b", "llama-3.1-70b", "llama-3.1-405b", "llama-3.3-70b", "qwen2.5-7b",
        "qwen2.5-72b", "qwen3-8b", "qwen3-32b", "qwen3-30b-a3b", "qwen3-235b-a22b",
        "mixtral-8x7b", "mixtral-8x22b", "deepseek-v2-lite", "deepseek-v3", "gpt-oss-20b",
        "gpt-oss-120b", "gemma-2-9b", "gemma-2-27b", "gemma-3-27b", "phi-3-mini",
    }  # fmt: skip
    assert wanted <= set(PUBLISHED)


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_parameter_counts(name: str) -> None:
    spec = CATALOG[name]
    extra = spec.extra
    assert spec.num_params / 1e9 == pytest.approx(extra["published_params_b"], rel=0.005)
    assert spec.source.startswith(("http", "DeepSeek", "Gemma", "gpt-oss"))
    if "published_active_b" not in extra:
        assert spec.moe is None  # dense: active = total
        assert spec.active_params() == spec.num_params
        return
    active = spec.active_params(extra["active_with_embedding"]) / 1e9
    published = extra["published_active_b"]
    if name in TWO_DIGITS:
        step = 10.0 ** (math.floor(math.log10(published)) - 1)  # the second digit's unit
        rounded = round(active / step) * step
        truncated = math.floor(active / step) * step
        assert published in (pytest.approx(rounded), pytest.approx(truncated)), TWO_DIGITS[name]
        assert abs(active / published - 1) < 0.025
    else:
        assert active == pytest.approx(published, rel=0.01)


def test_mixture_of_experts_entries() -> None:
    mixtral = get_spec("mistralai/Mixtral-8x7B-v0.1")
    assert mixtral.name == "mixtral-8x7b" and mixtral.moe is not None
    assert mixtral.expected_distinct_experts(1) == pytest.approx(2)
    oss = get_spec("gpt-oss-120b")
    assert oss.moe is not None and oss.attention_sinks and oss.sliding_window == 128
    v3 = get_spec("deepseek-v3")
    assert v3.mla is not None and v3.kv_bytes_per_token == 576 * 2


def test_llama3_uses_gqa() -> None:
    for name in ("llama-3-8b", "llama-3-70b"):
        spec = get_spec(name)
        assert spec.kv_heads == 8
        assert spec.rope_theta == 500000.0
        assert spec.max_context == 8192


def test_every_entry_cites_a_source_and_is_keyed_by_its_name() -> None:
    for key, spec in CATALOG.items():
        assert key == spec.name == key.lower()
        assert spec.source


@pytest.mark.parametrize("name", [n for n in CATALOG if n.startswith("tiny-")])
def test_tiny_specs_are_tiny(name: str) -> None:
    spec = get_spec(name)
    assert spec.num_params < 500_000
    assert spec.max_context == 512
    # a 64-token forward is well under 0.1 GFLOP: milliseconds on any CPU
    assert spec.prefill_flops(64, lm_head=True) < 1e8


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("OpenAI/davinci", "openai/davinci"),
        ("BigScience/BLOOM", "bigscience/bloom"),
        ("AI21/J1-Large v1", "ai21/j1-large-v1"),
        ("Cohere/XL v20220609", "cohere/xl-v20220609"),
        ("Microsoft+NV/TNLG v2", "microsoft/tnlg-v2"),
        ("EleutherAI/GPT-J", "eleutherai/gpt-j"),
        ("Yandex/YaLM", "yandex/yalm"),
        ("LLAMA-7B", "llama-7b"),
        ("  Llama_3_8B ", "llama-3-8b"),
        ("GPT2", "gpt2"),
    ],
)
def test_lookup_is_case_insensitive_and_accepts_display_names(query: str, expected: str) -> None:
    assert get_spec(query).name == expected


def test_every_table1_display_name_resolves() -> None:
    for row in TABLE1:
        assert get_spec(row.display) is CATALOG[row.name]


def test_unknown_name_suggests_close_matches() -> None:
    with pytest.raises(UserError) as info:
        get_spec("llama-7")
    message = str(info.value)
    assert "llama-7b" in message
    assert "infermeter models" in message and "config.json" in message
    assert "\n" not in message
    suggested = message.split("did you mean ")[1].split("?")[0].split(", ")
    assert 1 <= len(suggested) <= 3


def test_unknown_name_without_close_match_still_gives_the_fix() -> None:
    with pytest.raises(UserError, match="infermeter models"):
        get_spec("zzzzzzzz-qqqq")


def test_resolve_spec_accepts_names_files_and_directories(tmp_path: Path) -> None:
    assert resolve_spec("OpenAI/davinci") is CATALOG["openai/davinci"]
    from_file = resolve_spec(str(CONFIGS / "llama-2-7b.json"))
    assert from_file.family == "llama"
    model_dir = tmp_path / "my-model"
    model_dir.mkdir()
    shutil.copy(CONFIGS / "gpt2.json", model_dir / "config.json")
    from_dir = resolve_spec(str(model_dir))
    assert from_dir.name == "my-model"
    assert from_dir.num_params == CATALOG["gpt2"].num_params


def test_resolve_spec_errors(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such file"):
        resolve_spec(str(tmp_path / "missing.json"))
    with pytest.raises(UserError, match=r"no config\.json"):
        resolve_spec(str(tmp_path))
    with pytest.raises(UserError, match="did you mean"):
        resolve_spec("bigscience/blom")


def test_catalog_table() -> None:
    table = catalog_table()
    assert list(table.columns) == [
        "name",
        "family",
        "hidden_size",
        "num_layers",
        "num_heads",
        "num_kv_heads",
        "ffn_size",
        "vocab_size",
        "params_b",
        "active_b",
        "max_context",
        "source",
    ]
    assert len(table) == len(CATALOG)
    davinci = table.set_index("name").loc["openai/davinci"]
    assert davinci["params_b"] == round(CATALOG["openai/davinci"].num_params / 1e9, 2)
    assert table.set_index("name").loc["llama-3-8b", "num_kv_heads"] == 8
    assert table.set_index("name").loc["mixtral-8x7b", "active_b"] == 12.88
