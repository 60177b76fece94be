"""Accelerator catalog, lookup, overrides, config files and Stack."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from infermeter.errors import UserError
from infermeter.spec.hardware import (
    ACCELERATORS,
    ALIASES,
    NUMERIC_FIELDS,
    Accelerator,
    Stack,
    accelerator_table,
    detect_accelerator,
    get_accelerator,
    load_hardware_config,
)
from infermeter.spec.model import DTYPE_BYTES

REQUIRED_NAMES = (
    "v100-sxm2-32gb",
    "a100-sxm-80gb",
    "h100-sxm",
    "h200-sxm",
    "h100-pcie",
    "a10g",
    "l4",
    "cpu",
    "b200",
    "mi300x",
    "mi325x",
    "l40s",
    "h20",
    "rtx-4090",
)


# ---- catalog -----------------------------------------------------------------------------
def test_catalog_has_required_entries() -> None:
    assert set(REQUIRED_NAMES) <= set(ACCELERATORS)
    for key, accelerator in ACCELERATORS.items():
        assert accelerator.name == key


@pytest.mark.parametrize("name", sorted(ACCELERATORS))
def test_catalog_values_positive_and_sourced(name: str) -> None:
    accelerator = ACCELERATORS[name]
    for key in NUMERIC_FIELDS:
        value = getattr(accelerator, key)
        assert math.isfinite(value) and value > 0, key
        # Every number names where it comes from.
        assert accelerator.sources.get(key), f"{name}: no source for {key}"
    assert isinstance(accelerator.memory_bytes, int)
    # Tensor-core half precision beats plain fp32 everywhere in the catalog.
    assert accelerator.peak_fp16_flops >= accelerator.peak_fp32_flops
    assert accelerator.peak_bf16_flops >= accelerator.peak_fp32_flops
    # Sanity bounds: 1 TFLOP/s .. 10 PFLOP/s, 10 GB/s .. 20 TB/s, 10 W .. 2 kW, < $100/h.
    assert 1e12 < accelerator.peak_bf16_flops < 1e16
    assert 1e10 < accelerator.memory_bandwidth < 2e13
    assert 10 < accelerator.tdp_watts < 2000
    assert 0 < accelerator.price_per_hour_usd < 100


def test_datasheet_numbers() -> None:
    h100, h200 = ACCELERATORS["h100-sxm"], ACCELERATORS["h200-sxm"]
    a100, v100 = ACCELERATORS["a100-sxm-80gb"], ACCELERATORS["v100-sxm2-32gb"]
    assert h100.peak_bf16_flops == pytest.approx(989e12, rel=1e-3)
    assert h100.memory_bandwidth == pytest.approx(3.35e12)
    assert h100.memory_bytes == 80 * 10**9
    assert h100.tdp_watts == 700
    assert h200.memory_bandwidth == pytest.approx(4.8e12)
    assert h200.memory_bytes == 141 * 10**9
    assert a100.peak_bf16_flops == pytest.approx(312e12)
    assert a100.memory_bandwidth == pytest.approx(2.039e12)
    assert a100.tdp_watts == 400
    assert v100.peak_fp16_flops == pytest.approx(125e12)
    assert v100.memory_bandwidth == pytest.approx(900e9)
    assert v100.tdp_watts == 300


def test_known_ratios() -> None:
    h100, h200 = ACCELERATORS["h100-sxm"], ACCELERATORS["h200-sxm"]
    a100, v100 = ACCELERATORS["a100-sxm-80gb"], ACCELERATORS["v100-sxm2-32gb"]
    pcie = ACCELERATORS["h100-pcie"]
    # H200 is the H100 die with more, faster memory: same compute and power.
    assert h200.peak_bf16_flops == h100.peak_bf16_flops
    assert h200.tdp_watts == h100.tdp_watts
    assert h200.memory_bandwidth / h100.memory_bandwidth == pytest.approx(4.8 / 3.35)
    # Generational steps of dense half-precision tensor peak.
    assert h100.peak_bf16_flops / a100.peak_bf16_flops == pytest.approx(3.17, rel=0.01)
    assert a100.peak_bf16_flops / v100.peak_fp16_flops == pytest.approx(2.5, rel=0.01)
    # PCIe card: lower clocks and power than SXM.
    assert pcie.peak_bf16_flops < h100.peak_bf16_flops
    assert pcie.tdp_watts < h100.tdp_watts
    # V100 has no bf16; the entry carries its fp16 figure and says so.
    assert v100.peak_bf16_flops == v100.peak_fp16_flops
    assert "bf16 not supported" in v100.sources["peak_bf16_flops"]


def test_accelerators_of_today() -> None:
    """Datasheet figures of the 2025-2026 entries, and the relations between them."""
    b200, h200 = ACCELERATORS["b200"], ACCELERATORS["h200-sxm"]
    mi300x, mi325x = ACCELERATORS["mi300x"], ACCELERATORS["mi325x"]
    assert b200.peak_bf16_flops == pytest.approx(2.25e15)
    assert b200.memory_bandwidth / h200.memory_bandwidth == pytest.approx(8.0 / 4.8)
    assert (mi300x.memory_bytes, mi300x.memory_bandwidth) == (192 * 10**9, 5.3e12)
    # MI325X is the MI300X's compute with HBM3E: same FLOP/s, more memory and bandwidth
    assert mi325x.peak_bf16_flops == mi300x.peak_bf16_flops
    assert mi325x.memory_bytes > mi300x.memory_bytes
    assert ACCELERATORS["l40s"].memory_bandwidth == pytest.approx(864e9)
    h20 = ACCELERATORS["h20"]
    assert h20.peak_bf16_flops < 0.2 * h200.peak_bf16_flops  # export-capped compute ...
    assert h20.memory_bandwidth == pytest.approx(4.0e12)  # ... and most of H200's bandwidth
    assert "placeholder" in h20.sources["price_per_hour_usd"]
    assert ACCELERATORS["rtx-4090"].memory_bandwidth == pytest.approx(1.008e12)


def test_cpu_entry_is_nominal() -> None:
    cpu = ACCELERATORS["cpu"]
    assert cpu.nominal
    assert "nominal" in cpu.display_name.lower()
    assert all("nominal" in cpu.sources[key] for key in NUMERIC_FIELDS)
    assert not any(a.nominal for k, a in ACCELERATORS.items() if k != "cpu")


def test_catalog_is_read_only() -> None:
    with pytest.raises(TypeError):
        ACCELERATORS["x"] = ACCELERATORS["l4"]  # type: ignore[index]


def test_price_per_second() -> None:
    h100 = ACCELERATORS["h100-sxm"]
    assert h100.price_per_second == pytest.approx(h100.price_per_hour_usd / 3600)
    assert h100.price_per_hour_usd == pytest.approx(98.32 / 8)
    assert get_accelerator("l4", {"price_per_hour_usd": 36.0}).price_per_second == 0.01


def test_peak_flops_by_dtype() -> None:
    a100 = ACCELERATORS["a100-sxm-80gb"]
    assert a100.peak_flops("bfloat16") == a100.peak_bf16_flops
    assert a100.peak_flops("float16") == a100.peak_fp16_flops
    assert a100.peak_flops("float32") == a100.peak_fp32_flops
    with pytest.raises(UserError, match="float8"):
        a100.peak_flops("float8")


def test_accelerator_validation() -> None:
    base = ACCELERATORS["l4"].to_dict()
    with pytest.raises(UserError, match="tdp_watts"):
        Accelerator(**{**base, "tdp_watts": 0})
    with pytest.raises(UserError, match="peak_fp32_flops"):
        Accelerator(**{**base, "peak_fp32_flops": float("nan")})
    with pytest.raises(UserError, match="memory_bytes"):
        Accelerator(**{**base, "memory_bytes": 1.5})
    with pytest.raises(UserError, match="regex"):
        Accelerator(**{**base, "device_patterns": ["(unclosed"]})


# ---- detection ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("device_name", "expected"),
    [
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),
        ("NVIDIA H100", "h100-sxm"),
        ("NVIDIA H100 SXM5 80GB", "h100-sxm"),
        ("NVIDIA H200", "h200-sxm"),
        ("NVIDIA A100-SXM4-80GB", "a100-sxm-80gb"),
        ("Tesla V100-SXM2-32GB", "v100-sxm2-32gb"),
        ("NVIDIA H100 PCIe", "h100-pcie"),
        ("NVIDIA A10G", "a10g"),
        ("NVIDIA L4", "l4"),
        ("  nvidia a100-sxm4-80gb ", "a100-sxm-80gb"),  # case and whitespace do not matter
        ("NVIDIA B200", "b200"),
        ("AMD Instinct MI300X", "mi300x"),
        ("AMD Instinct MI325X", "mi325x"),
        ("NVIDIA L40S", "l40s"),
        ("NVIDIA H20", "h20"),
        ("NVIDIA GeForce RTX 4090", "rtx-4090"),
    ],
)
def test_detect_known(device_name: str, expected: str) -> None:
    found = detect_accelerator(device_name)
    assert found is not None and found.name == expected


@pytest.mark.parametrize(
    "device_name",
    [
        "NVIDIA GH200 480GB",  # contains "H200" but is a different part
        "NVIDIA H200 NVL",
        "NVIDIA H100 NVL",
        "NVIDIA A100-SXM4-40GB",  # other memory and bandwidth
        "NVIDIA A100 80GB PCIe",
        "Tesla V100-SXM2-16GB",
        "NVIDIA A10",  # not the A10G, and not an A100
        "NVIDIA L40",  # not the L40S
        "NVIDIA GeForce RTX 4090 D",  # the cut-down China part
        "NVIDIA GB200",  # not the B200
        "AMD Instinct MI300A",  # the APU, not the MI300X
        "",
    ],
)
def test_detect_unknown_is_none(device_name: str) -> None:
    assert detect_accelerator(device_name) is None


def test_patterns_are_disjoint() -> None:
    names = [
        "NVIDIA H100 80GB HBM3",
        "NVIDIA H200",
        "NVIDIA A100-SXM4-80GB",
        "Tesla V100-SXM2-32GB",
        "NVIDIA H100 PCIe",
        "NVIDIA A10G",
        "NVIDIA L4",
        "NVIDIA B200",
        "AMD Instinct MI300X",
        "AMD Instinct MI325X",
        "NVIDIA L40S",
        "NVIDIA H20",
        "NVIDIA GeForce RTX 4090",
    ]
    for device_name in names:
        assert sum(a.matches(device_name) for a in ACCELERATORS.values()) == 1, device_name


# ---- lookup and overrides ----------------------------------------------------------------
@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("h100", "h100-sxm"),
        ("H100", "h100-sxm"),
        ("a100", "a100-sxm-80gb"),
        ("V100", "v100-sxm2-32gb"),
        ("h200", "h200-sxm"),
        ("H100-SXM", "h100-sxm"),
        ("h100 pcie", "h100-pcie"),
        ("A10G", "a10g"),
        ("CPU", "cpu"),
        ("NVIDIA H100 80GB HBM3", "h100-sxm"),  # a pasted device name works too
    ],
)
def test_get_accelerator_aliases(name: str, expected: str) -> None:
    assert get_accelerator(name).name == expected


def test_aliases_point_into_catalog() -> None:
    assert set(ALIASES.values()) <= set(ACCELERATORS)


def test_unknown_name_suggests_closest() -> None:
    with pytest.raises(UserError) as info:
        get_accelerator("h10")
    message = str(info.value)
    assert "did you mean" in message and "h100" in message
    assert "\n" not in message
    with pytest.raises(UserError, match=r"known: .*h100-sxm"):
        get_accelerator("tpu-v5e")


def test_overrides_replace_values_and_mark_sources() -> None:
    base = ACCELERATORS["h100-sxm"]
    custom = get_accelerator("h100", {"price_per_hour_usd": 2.5, "tdp_watts": 500})
    assert custom.price_per_hour_usd == 2.5
    assert custom.tdp_watts == 500
    assert custom.peak_bf16_flops == base.peak_bf16_flops
    assert custom.sources["price_per_hour_usd"] == "user override"
    assert custom.sources["memory_bandwidth"] == base.sources["memory_bandwidth"]
    assert ACCELERATORS["h100-sxm"] == base  # the catalog is untouched
    assert get_accelerator("h100", {"memory_bytes": 96e9}).memory_bytes == 96 * 10**9


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"price": 2.0}, "valid keys: .*price_per_hour_usd"),
        ({"name": 1.0}, "valid keys"),
        ({"tdp_watts": 0}, "tdp_watts"),
        ({"tdp_watts": -5}, "tdp_watts"),
        ({"price_per_hour_usd": float("inf")}, "price_per_hour_usd"),
        ({"price_per_hour_usd": "3"}, "price_per_hour_usd"),
        ({"tdp_watts": True}, "tdp_watts"),
        ({"memory_bytes": 1.5}, "memory_bytes"),
    ],
)
def test_bad_overrides(overrides: dict[str, object], match: str) -> None:
    with pytest.raises(UserError, match=match):
        get_accelerator("h100", overrides)  # type: ignore[arg-type]


# ---- config files ------------------------------------------------------------------------
NEW_ENTRY = {
    "display_name": "My GPU",
    "peak_bf16_flops": 100e12,
    "peak_fp16_flops": 100e12,
    "peak_fp32_flops": 20e12,
    "memory_bandwidth": 1e12,
    "memory_bytes": 48_000_000_000,
    "tdp_watts": 250,
    "price_per_hour_usd": 1.25,
    "device_patterns": ["MY GPU( 48GB)?"],
}

TOML_CONFIG = """
[accelerators.h100-sxm]
price_per_hour_usd = 3.0

[accelerators.a100]  # an alias names the existing entry
tdp_watts = 350

[accelerators.my-gpu]
display_name = "My GPU"
peak_bf16_flops = 100e12
peak_fp16_flops = 100e12
peak_fp32_flops = 20e12
memory_bandwidth = 1e12
memory_bytes = 48_000_000_000
tdp_watts = 250
price_per_hour_usd = 1.25
device_patterns = ["MY GPU( 48GB)?"]
"""


def _check_merged(catalog: dict[str, Accelerator], path: Path) -> None:
    assert catalog["h100-sxm"].price_per_hour_usd == 3.0
    assert catalog["h100-sxm"].sources["price_per_hour_usd"] == f"hardware config {path.name}"
    assert catalog["h100-sxm"].tdp_watts == ACCELERATORS["h100-sxm"].tdp_watts
    assert catalog["a100-sxm-80gb"].tdp_watts == 350
    assert "a100" not in catalog  # overriding by alias does not add an entry
    mine = catalog["my-gpu"]
    assert mine.display_name == "My GPU"
    assert mine.memory_bytes == 48_000_000_000
    assert mine.price_per_second == pytest.approx(1.25 / 3600)
    assert set(ACCELERATORS) <= set(catalog)
    # The built-in catalog is untouched and the merged one plugs into lookup and detection.
    assert ACCELERATORS["h100-sxm"].price_per_hour_usd == pytest.approx(98.32 / 8)
    assert "my-gpu" not in ACCELERATORS
    assert get_accelerator("MY-GPU", catalog=catalog) == mine
    assert get_accelerator("h100", catalog=catalog).price_per_hour_usd == 3.0
    assert detect_accelerator("NVIDIA My GPU 48GB", catalog=catalog) == mine


@pytest.mark.skipif(sys.version_info < (3, 11), reason="tomllib is Python 3.11+")
def test_load_toml_config(tmp_path: Path) -> None:
    path = tmp_path / "hardware.toml"
    path.write_text(TOML_CONFIG)
    _check_merged(load_hardware_config(path), path)


def test_load_json_config(tmp_path: Path) -> None:
    path = tmp_path / "hardware.json"
    config = {
        "accelerators": {
            "h100-sxm": {"price_per_hour_usd": 3.0},
            "A100": {"tdp_watts": 350},
            "my-gpu": NEW_ENTRY,
        }
    }
    path.write_text(json.dumps(config))
    _check_merged(load_hardware_config(str(path)), path)


def test_config_can_replace_text_fields(tmp_path: Path) -> None:
    path = tmp_path / "hw.json"
    entry = {"display_name": "Our L4", "sources": {"price_per_hour_usd": "internal rate card"}}
    path.write_text(json.dumps({"accelerators": {"l4": {**entry, "price_per_hour_usd": 0.5}}}))
    l4 = load_hardware_config(path)["l4"]
    assert l4.display_name == "Our L4"
    assert l4.price_per_hour_usd == 0.5
    assert l4.sources["price_per_hour_usd"] == "internal rate card"


def test_new_entry_missing_fields_lists_them(tmp_path: Path) -> None:
    path = tmp_path / "hw.json"
    partial = {k: v for k, v in NEW_ENTRY.items() if k not in ("tdp_watts", "memory_bytes")}
    path.write_text(json.dumps({"accelerators": {"my-gpu": partial}}))
    with pytest.raises(UserError) as info:
        load_hardware_config(path)
    message = str(info.value)
    assert "my-gpu" in message
    assert "memory_bytes" in message and "tdp_watts" in message
    assert "missing memory_bytes, tdp_watts;" in message


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("hw.json", "{not json", "not valid JSON"),
        ("hw.toml", "[accelerators\n", "not valid TOML"),
        ("hw.yaml", "accelerators: {}", r"\.toml or \.json"),
        ("hw.json", json.dumps({"gpus": {}}), '"accelerators"'),
        ("hw.json", json.dumps({"accelerators": []}), "table of entries"),
        ("hw.json", json.dumps({"accelerators": {"l4": 3}}), "must be a table"),
        ("hw.json", json.dumps({"accelerators": {"l4": {"price": 1}}}), "valid keys"),
        ("hw.json", json.dumps({"accelerators": {"l4": {"tdp_watts": -1}}}), "tdp_watts"),
        (
            "hw.json",
            json.dumps({"accelerators": {"l4": {"device_patterns": "L4"}}}),
            "list of regexes",
        ),
    ],
)
def test_bad_config_files(tmp_path: Path, name: str, text: str, match: str) -> None:
    if name.endswith(".toml") and sys.version_info < (3, 11):
        match = "Python 3.11"
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(UserError, match=match):
        load_hardware_config(path)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        load_hardware_config(tmp_path / "nope.json")


# ---- stacks ------------------------------------------------------------------------------
def test_stack_price_and_power() -> None:
    h100 = ACCELERATORS["h100-sxm"]
    stack = Stack("engine", h100, num_accelerators=8, tensor_parallel=4, dtype="bfloat16")
    assert stack.price_per_second == pytest.approx(8 * 98.32 / 8 / 3600)  # whole p5 instance
    assert stack.power_watts == 8 * 700


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_accelerators": 0}, "num_accelerators"),
        ({"num_accelerators": 2.0}, "num_accelerators"),
        ({"num_accelerators": True}, "num_accelerators"),
        ({"tensor_parallel": 0}, "tensor_parallel"),
        ({"num_accelerators": 2, "tensor_parallel": 4}, "exceeds"),
        ({"num_accelerators": 6, "tensor_parallel": 4}, "multiple"),
        ({"dtype": "bf16"}, "bfloat16"),
        ({"backend": ""}, "backend"),
        ({"accelerator": "h100"}, "get_accelerator"),
    ],
)
def test_stack_validation(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"backend": "hf", "accelerator": ACCELERATORS["a100-sxm-80gb"]}
    args.update(kwargs)
    with pytest.raises(UserError, match=match):
        Stack(**args)  # type: ignore[arg-type]


def test_stack_from_dict_by_name_and_errors() -> None:
    stack = Stack.from_dict({"backend": "hf", "accelerator": "h100", "num_accelerators": 2})
    assert stack.accelerator == ACCELERATORS["h100-sxm"]
    assert stack.tensor_parallel == 1 and stack.dtype == "bfloat16"
    with pytest.raises(UserError, match="unknown Stack field"):
        Stack.from_dict({"backend": "hf", "accelerator": "h100", "gpus": 2})
    with pytest.raises(UserError, match="needs at least"):
        Stack.from_dict({"backend": "hf"})
    with pytest.raises(UserError, match="missing field"):
        Stack.from_dict({"backend": "hf", "accelerator": {"name": "x"}})


def test_catalog_stacks_round_trip() -> None:
    for accelerator in ACCELERATORS.values():
        stack = Stack("engine", accelerator)
        restored = Stack.from_dict(json.loads(json.dumps(stack.to_dict())))
        assert restored == stack
        assert restored.to_dict() == stack.to_dict()


_positive = st.floats(min_value=1e-9, max_value=1e18, allow_nan=False, allow_infinity=False)
_text = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=20)


@st.composite
def stacks(draw: st.DrawFn) -> Stack:
    accelerator = Accelerator(
        name=draw(st.from_regex(r"[a-z][a-z0-9-]{0,15}", fullmatch=True)),
        display_name=draw(_text),
        peak_bf16_flops=draw(_positive),
        peak_fp16_flops=draw(_positive),
        peak_fp32_flops=draw(_positive),
        memory_bandwidth=draw(_positive),
        memory_bytes=draw(st.integers(min_value=1, max_value=2**62)),
        tdp_watts=draw(_positive),
        price_per_hour_usd=draw(_positive),
        sources=draw(st.dictionaries(st.sampled_from(NUMERIC_FIELDS), _text)),
        device_patterns=tuple(draw(st.lists(st.from_regex(r"[A-Z0-9 ]{1,10}", fullmatch=True)))),
        nominal=draw(st.booleans()),
    )
    tensor_parallel = draw(st.integers(min_value=1, max_value=8))
    return Stack(
        backend=draw(st.sampled_from(["engine", "hf", "openai", "vllm"])),
        accelerator=accelerator,
        num_accelerators=tensor_parallel * draw(st.integers(min_value=1, max_value=16)),
        tensor_parallel=tensor_parallel,
        dtype=draw(st.sampled_from(sorted(DTYPE_BYTES))),
    )


@given(stacks())
def test_stack_json_round_trip_is_exact(stack: Stack) -> None:
    data = stack.to_dict()
    restored = Stack.from_dict(json.loads(json.dumps(data)))
    assert restored == stack
    assert restored.to_dict() == data
    assert restored.price_per_second == stack.price_per_second
    assert restored.power_watts == stack.power_watts


# ---- listing -----------------------------------------------------------------------------
def test_accelerator_table() -> None:
    table = accelerator_table()
    assert isinstance(table, pd.DataFrame)
    assert list(table.columns) == [
        "name",
        "display_name",
        "bf16 TFLOP/s",
        "bandwidth TB/s",
        "memory GB",
        "TDP W",
        "$/h",
    ]
    assert list(table["name"]) == list(ACCELERATORS)
    h100 = table.set_index("name").loc["h100-sxm"]
    assert h100["bf16 TFLOP/s"] == pytest.approx(989.4)
    assert h100["bandwidth TB/s"] == pytest.approx(3.35)
    assert h100["memory GB"] == pytest.approx(80)
    assert h100["TDP W"] == 700
    assert h100["$/h"] == pytest.approx(12.29)
