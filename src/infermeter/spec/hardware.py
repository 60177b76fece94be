"""Accelerators and stacks: what a second of inference costs in dollars and watts.

Idealized cost and energy (DESIGN.md) are runtime x accelerators x ($/s or W); this module holds
the per-accelerator numbers behind that product, each with the public source it comes from,
plus the peaks (FLOP/s, bytes/s) a roofline needs. Prices change often and differ by cloud, so
every number can be overridden per call (`get_accelerator(..., overrides=...)`) or from a
hardware config file (`load_hardware_config`); overridden values are marked in `sources`.

Conventions: FLOP/s are dense (no 2:4 sparsity), bytes and bytes/s are decimal (10^9 per GB,
as on the datasheets), TDP is the board's rated maximum power, prices are on-demand USD per
accelerator-hour (Linux, US East) as listed when the catalog was written.
"""

from __future__ import annotations

import difflib
import json
import math
import re
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pandas as pd

from infermeter.errors import UserError
from infermeter.spec.model import DTYPE_BYTES
from infermeter.store import provenance
from infermeter.units import GIB_BYTES, one_of, per_hour_to_per_second, to_giga, to_tera

__all__ = [
    "ACCELERATORS",
    "ALIASES",
    "NUMERIC_FIELDS",
    "Accelerator",
    "HardwareConfig",
    "Stack",
    "accelerator_table",
    "build_stack",
    "detect_accelerator",
    "get_accelerator",
    "load_hardware_config",
]

# The values a user may override; all must be positive and finite.
NUMERIC_FIELDS: tuple[str, ...] = (
    "peak_bf16_flops",
    "peak_fp16_flops",
    "peak_fp32_flops",
    "memory_bandwidth",
    "memory_bytes",
    "tdp_watts",
    "price_per_hour_usd",
)

# Config-file keys besides the numbers (descriptive, not used in any cost).
_TEXT_FIELDS: tuple[str, ...] = ("display_name", "device_patterns", "sources", "nominal")


def _normalize_device_name(device_name: str) -> str:
    """'NVIDIA A100-SXM4-80GB' -> 'A100 SXM4 80GB' so one regex covers torch and NVML spellings."""
    text = re.sub(r"[-_\s]+", " ", device_name.strip().upper())
    return re.sub(r"^(NVIDIA |TESLA )+", "", text).strip()


def _normalize_key(name: str) -> str:
    """'H100 SXM' / 'h100_sxm' / ' H100-SXM ' -> 'h100-sxm' (catalog keys are lower-kebab)."""
    return re.sub(r"[\s_]+", "-", name.strip().lower())


@dataclass(frozen=True)
class Accelerator:
    """One accelerator (or CPU socket): peaks, power and on-demand price, with sources."""

    name: str  # canonical catalog key, lower-kebab, e.g. "h100-sxm"
    display_name: str
    peak_bf16_flops: float  # dense FLOP/s; where bf16 is absent, the fp16 figure (see sources)
    peak_fp16_flops: float  # dense FLOP/s, tensor cores where the chip has them
    peak_fp32_flops: float  # dense FLOP/s, non-tensor (TF32 is not fp32)
    memory_bandwidth: float  # bytes/s
    memory_bytes: int  # datasheet capacity, decimal; usable memory is a little lower
    tdp_watts: float  # rated board power: the W of idealized energy
    price_per_hour_usd: float  # on-demand, per accelerator
    sources: dict[str, str] = field(default_factory=dict, hash=False)
    # Regexes fully matched against the normalized device name (see _normalize_device_name).
    device_patterns: tuple[str, ...] = ()
    nominal: bool = False  # True: assumed figures for a generic part, not one product's datasheet

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name.strip():
            raise UserError("accelerator name must be a non-empty string")
        for key in NUMERIC_FIELDS:
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise UserError(f"{self.name}: {key} must be a positive number, got {value!r}")
            if not (math.isfinite(value) and value > 0):
                raise UserError(f"{self.name}: {key} must be positive and finite, got {value!r}")
        if self.memory_bytes != int(self.memory_bytes):
            raise UserError(f"{self.name}: memory_bytes must be a whole number of bytes")
        # Lists arrive from JSON/TOML; keep the dataclass hashable and the round trip exact.
        object.__setattr__(self, "memory_bytes", int(self.memory_bytes))
        object.__setattr__(self, "device_patterns", tuple(self.device_patterns))
        object.__setattr__(self, "sources", dict(self.sources))
        for pattern in self.device_patterns:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise UserError(
                    f"{self.name}: device pattern {pattern!r} is not a valid regex ({exc})"
                ) from None

    # ---- derived -------------------------------------------------------------------------
    @property
    def price_per_second(self) -> float:
        """USD per accelerator-second: the $/s of idealized cost."""
        return per_hour_to_per_second(self.price_per_hour_usd)

    def peak_flops(self, dtype: str) -> float:
        """Dense peak FLOP/s for a ModelSpec dtype name ('bfloat16', 'float16', 'float32')."""
        by_dtype = {
            "bfloat16": self.peak_bf16_flops,
            "float16": self.peak_fp16_flops,
            "float32": self.peak_fp32_flops,
        }
        if dtype not in by_dtype:
            raise UserError(
                f"no peak FLOP/s for dtype {dtype!r} on {self.name}; use {one_of(sorted(by_dtype))}"
            )
        return by_dtype[dtype]

    def matches(self, device_name: str) -> bool:
        """Whether a torch/NVML device name (e.g. 'NVIDIA H100 80GB HBM3') is this part."""
        normalized = _normalize_device_name(device_name)
        return any(re.fullmatch(p, normalized) for p in self.device_patterns)

    # ---- changes -------------------------------------------------------------------------
    def with_overrides(
        self, overrides: Mapping[str, Any], source: str = "user override"
    ) -> Accelerator:
        """A copy with numeric fields replaced; `sources` records where each new value came from."""
        if not overrides:
            return self
        values = {key: _check_override(self.name, key, value) for key, value in overrides.items()}
        sources = {**self.sources, **dict.fromkeys(values, source)}
        return replace(self, **values, sources=sources)

    # ---- (de)serialisation ---------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """JSON-safe fields (device_patterns as a list), as hardware config files and stored
        runs hold them."""
        data = asdict(self)
        data["device_patterns"] = list(self.device_patterns)  # JSON has no tuples
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Accelerator:
        """Inverse of to_dict. Raises UserError for an unknown field or a missing required
        number (peak FLOP/s, bandwidth, memory, TDP, price)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(
                f"unknown Accelerator field(s): {', '.join(unknown)}; "
                f"valid fields: {', '.join(sorted(known))}"
            )
        missing = [f.name for f in fields(cls) if f.name in _REQUIRED and f.name not in data]
        if missing:
            raise UserError(f"Accelerator is missing field(s): {', '.join(missing)}")
        return cls(**data)


_REQUIRED = frozenset(("name", "display_name", *NUMERIC_FIELDS))


def _check_override(accelerator: str, key: str, value: Any) -> float | int:
    """Validate one override: a known numeric field and a positive, finite number."""
    if key not in NUMERIC_FIELDS:
        raise UserError(
            f"unknown hardware override {key!r} for {accelerator}; "
            f"valid keys: {', '.join(NUMERIC_FIELDS)}"
        )
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UserError(
            f"hardware override {key} for {accelerator} must be a positive number, got {value!r}"
        )
    if not (math.isfinite(value) and value > 0):
        raise UserError(
            f"hardware override {key} for {accelerator} must be positive and finite, "
            f"got {value!r}; valid keys: {', '.join(NUMERIC_FIELDS)}"
        )
    if key == "memory_bytes":
        if value != int(value):
            raise UserError(f"hardware override memory_bytes for {accelerator} must be whole")
        return int(value)
    return float(value)


# ---- the catalog -------------------------------------------------------------------------
# Datasheets quote sparse (2:4) tensor peaks with an asterisk; the dense figure is half of it.
_H100_DS = "NVIDIA H100 Tensor Core GPU datasheet (SXM5 column)"
_H100_PCIE_DS = "NVIDIA H100 Tensor Core GPU datasheet (PCIe column)"
_H200_DS = "NVIDIA H200 Tensor Core GPU datasheet (H200 SXM column)"
_A100_DS = "NVIDIA A100 Tensor Core GPU datasheet (A100 80GB SXM column)"
_V100_DS = "NVIDIA Tesla V100 datasheet (V100 SXM2 column)"
_L4_DS = "NVIDIA L4 Tensor Core GPU datasheet"
# NVIDIA publishes no A10G datasheet (an AWS-only part): numbers derive from its published
# shape (80 SMs, 1.71 GHz boost, GA102 tensor cores at half rate with fp32 accumulate, as on
# GeForce) and agree with third-party spec tables (e.g. Baseten, "NVIDIA A10 vs A10G").
_A10G_DERIVED = "derived from A10G shape (80 SMs x 1.71 GHz); no NVIDIA datasheet for A10G"
_AWS = "AWS EC2 on-demand pricing page, us-east-1 Linux"
# Accelerators of 2025-2026 (issue 20). Prices marked approximate come from list pages that
# change often or from third-party summaries of them: override with --price-per-hour.
_B200_DS = (
    "NVIDIA HGX B200 datasheet, per GPU (8-GPU totals / 8; HGX B200 at 1,000 W, as tabulated "
    "at glennklockwood.com/garden/processors/B200)"
)
_MI300X_DS = "AMD Instinct MI300X accelerator datasheet (amd.com)"
_MI325X_DS = "AMD Instinct MI325X accelerator datasheet (amd.com)"
_L40S_DS = "NVIDIA L40S GPU datasheet"
# NVIDIA publishes no H20 datasheet (a China-market Hopper part); figures as reported from
# its product brief to partners and repeated by the press (e.g. willitrunai.com/gpus/h20-96gb).
_H20_REPORTED = "reported H20 figures (no public NVIDIA datasheet)"
_ADA_WP = "NVIDIA Ada GPU Architecture whitepaper, GeForce RTX 4090 column"

_CATALOG: tuple[Accelerator, ...] = (
    Accelerator(
        name="v100-sxm2-32gb",
        display_name="NVIDIA V100 SXM2 32GB",
        peak_bf16_flops=125e12,  # V100 has no bf16: this is the fp16 tensor figure
        peak_fp16_flops=125e12,  # tensor performance, SXM2
        peak_fp32_flops=15.7e12,
        memory_bandwidth=900e9,  # HBM2
        memory_bytes=32_000_000_000,
        tdp_watts=300.0,
        price_per_hour_usd=31.212 / 8,  # p3dn.24xlarge (8x V100 SXM2 32GB) $31.212/h
        sources={
            "peak_bf16_flops": f"{_V100_DS}: bf16 not supported; fp16 tensor 125 TFLOP/s used",
            "peak_fp16_flops": f"{_V100_DS}: tensor performance 125 TFLOP/s",
            "peak_fp32_flops": f"{_V100_DS}: single precision 15.7 TFLOP/s",
            "memory_bandwidth": f"{_V100_DS}: 900 GB/s",
            "memory_bytes": f"{_V100_DS}: 32 GB HBM2",
            "tdp_watts": f"{_V100_DS}: max power 300 W",
            "price_per_hour_usd": f"{_AWS}: p3dn.24xlarge (8x V100 32GB) $31.212/h / 8",
        },
        device_patterns=(r"V100 SXM2 32GB",),
    ),
    Accelerator(
        name="a100-sxm-80gb",
        display_name="NVIDIA A100 80GB SXM",
        peak_bf16_flops=312e12,  # 624 sparse / 2
        peak_fp16_flops=312e12,
        peak_fp32_flops=19.5e12,
        memory_bandwidth=2.039e12,  # HBM2e
        memory_bytes=80_000_000_000,
        tdp_watts=400.0,
        price_per_hour_usd=40.96575 / 8,  # p4de.24xlarge (8x A100 80GB) $40.96575/h
        sources={
            "peak_bf16_flops": f"{_A100_DS}: BF16 tensor 312 TFLOP/s dense (624 sparse)",
            "peak_fp16_flops": f"{_A100_DS}: FP16 tensor 312 TFLOP/s dense (624 sparse)",
            "peak_fp32_flops": f"{_A100_DS}: FP32 19.5 TFLOP/s",
            "memory_bandwidth": f"{_A100_DS}: 2,039 GB/s",
            "memory_bytes": f"{_A100_DS}: 80 GB HBM2e",
            "tdp_watts": f"{_A100_DS}: max TDP 400 W",
            "price_per_hour_usd": f"{_AWS}: p4de.24xlarge (8x A100 80GB) $40.96575/h / 8",
        },
        device_patterns=(r"A100 SXM\d? 80GB",),
    ),
    Accelerator(
        name="h100-sxm",
        display_name="NVIDIA H100 80GB SXM",
        peak_bf16_flops=989.4e12,  # 1,979 sparse / 2 (whitepaper: 989.4 at 1.83 GHz)
        peak_fp16_flops=989.4e12,
        peak_fp32_flops=67e12,
        memory_bandwidth=3.35e12,  # HBM3
        memory_bytes=80_000_000_000,
        tdp_watts=700.0,
        price_per_hour_usd=98.32 / 8,  # p5.48xlarge (8x H100 SXM) $98.32/h
        sources={
            "peak_bf16_flops": f"{_H100_DS}: BF16 tensor 1,979 TFLOP/s sparse -> 989.4 dense",
            "peak_fp16_flops": f"{_H100_DS}: FP16 tensor 1,979 TFLOP/s sparse -> 989.4 dense",
            "peak_fp32_flops": f"{_H100_DS}: FP32 67 TFLOP/s",
            "memory_bandwidth": f"{_H100_DS}: 3.35 TB/s",
            "memory_bytes": f"{_H100_DS}: 80 GB HBM3",
            "tdp_watts": f"{_H100_DS}: max TDP up to 700 W",
            "price_per_hour_usd": f"{_AWS}: p5.48xlarge (8x H100 SXM) $98.32/h / 8",
        },
        # Bare "H100" is how the SXM part is usually meant (and the "h100" alias agrees).
        device_patterns=(r"H100( SXM\d?)?( 80GB)?( HBM3)?",),
    ),
    Accelerator(
        name="h200-sxm",
        display_name="NVIDIA H200 141GB SXM",
        peak_bf16_flops=989.4e12,  # same GH100 compute as H100 SXM; only memory changed
        peak_fp16_flops=989.4e12,
        peak_fp32_flops=67e12,
        memory_bandwidth=4.8e12,  # HBM3e
        memory_bytes=141_000_000_000,
        tdp_watts=700.0,
        price_per_hour_usd=84.80 / 8,  # Azure ND96isr H200 v5 (8x H200) ~$84.80/h
        sources={
            "peak_bf16_flops": f"{_H200_DS}: BF16 tensor 1,979 TFLOP/s sparse -> 989.4 dense",
            "peak_fp16_flops": f"{_H200_DS}: FP16 tensor 1,979 TFLOP/s sparse -> 989.4 dense",
            "peak_fp32_flops": f"{_H200_DS}: FP32 67 TFLOP/s",
            "memory_bandwidth": f"{_H200_DS}: 4.8 TB/s",
            "memory_bytes": f"{_H200_DS}: 141 GB HBM3e",
            "tdp_watts": f"{_H200_DS}: max TDP up to 700 W",
            "price_per_hour_usd": (
                "Azure virtual machines pricing page, East US Linux pay-as-you-go: "
                "ND96isr H200 v5 (8x H200) ~$84.80/h / 8 (approximate; check the page)"
            ),
        },
        device_patterns=(r"H200( SXM\d?)?( 141GB)?( HBM3E)?",),  # not "GH200", not "H200 NVL"
    ),
    Accelerator(
        name="h100-pcie",
        display_name="NVIDIA H100 80GB PCIe",
        peak_bf16_flops=756e12,  # 1,513 sparse / 2
        peak_fp16_flops=756e12,
        peak_fp32_flops=51e12,
        memory_bandwidth=2.0e12,  # HBM2e
        memory_bytes=80_000_000_000,
        tdp_watts=350.0,
        # No hyperscaler rents the 80GB PCIe card by itself; this is a GPU-cloud list price, so
        # it is not comparable with the AWS-derived prices above (those include a host share).
        price_per_hour_usd=2.49,
        sources={
            "peak_bf16_flops": f"{_H100_PCIE_DS}: BF16 tensor 1,513 TFLOP/s sparse -> 756 dense",
            "peak_fp16_flops": f"{_H100_PCIE_DS}: FP16 tensor 1,513 TFLOP/s sparse -> 756 dense",
            "peak_fp32_flops": f"{_H100_PCIE_DS}: FP32 51 TFLOP/s",
            "memory_bandwidth": f"{_H100_PCIE_DS}: 2 TB/s",
            "memory_bytes": f"{_H100_PCIE_DS}: 80 GB HBM2e",
            "tdp_watts": f"{_H100_PCIE_DS}: max TDP 300-350 W (upper value)",
            "price_per_hour_usd": (
                "Lambda Cloud on-demand pricing page: 1x H100 PCIe $2.49/h "
                "(GPU cloud, not a hyperscaler)"
            ),
        },
        device_patterns=(r"H100( 80GB)? PCIE( 80GB)?",),
    ),
    Accelerator(
        name="a10g",
        display_name="NVIDIA A10G 24GB",
        peak_bf16_flops=70e12,  # 80 SMs x 1.71 GHz x 512 FLOP/clk (fp32 accumulate)
        peak_fp16_flops=70e12,
        peak_fp32_flops=35e12,  # 80 SMs x 128 lanes x 2 x 1.71 GHz
        memory_bandwidth=600e9,  # GDDR6, same as A10
        memory_bytes=24_000_000_000,
        tdp_watts=300.0,
        price_per_hour_usd=1.006,  # g5.xlarge (1x A10G) $1.006/h
        sources={
            "peak_bf16_flops": f"{_A10G_DERIVED}: 70 TFLOP/s dense tensor",
            "peak_fp16_flops": f"{_A10G_DERIVED}: 70 TFLOP/s dense tensor",
            "peak_fp32_flops": f"{_A10G_DERIVED}: 35 TFLOP/s",
            "memory_bandwidth": "AWS EC2 G5 instance page / NVIDIA A10 datasheet: 600 GB/s",
            "memory_bytes": "AWS EC2 G5 instance page: 24 GB GDDR6 per GPU",
            "tdp_watts": "power limit reported by nvidia-smi on G5 instances: 300 W",
            "price_per_hour_usd": f"{_AWS}: g5.xlarge (1x A10G, 4 vCPU) $1.006/h",
        },
        device_patterns=(r"A10G",),
    ),
    Accelerator(
        name="l4",
        display_name="NVIDIA L4 24GB",
        peak_bf16_flops=121e12,  # 242 sparse / 2
        peak_fp16_flops=121e12,
        peak_fp32_flops=30.3e12,
        memory_bandwidth=300e9,  # GDDR6
        memory_bytes=24_000_000_000,
        tdp_watts=72.0,
        price_per_hour_usd=0.8048,  # g6.xlarge (1x L4) $0.8048/h
        sources={
            "peak_bf16_flops": f"{_L4_DS}: BF16 tensor 242 TFLOP/s sparse -> 121 dense",
            "peak_fp16_flops": f"{_L4_DS}: FP16 tensor 242 TFLOP/s sparse -> 121 dense",
            "peak_fp32_flops": f"{_L4_DS}: FP32 30.3 TFLOP/s",
            "memory_bandwidth": f"{_L4_DS}: 300 GB/s",
            "memory_bytes": f"{_L4_DS}: 24 GB GDDR6",
            "tdp_watts": f"{_L4_DS}: max TDP 72 W",
            "price_per_hour_usd": f"{_AWS}: g6.xlarge (1x L4, 4 vCPU) $0.8048/h",
        },
        device_patterns=(r"L4",),  # full match: not L40 / L40S
    ),
    Accelerator(
        name="b200",
        display_name="NVIDIA B200 180GB (HGX)",
        peak_bf16_flops=2.25e15,  # 4.5 PFLOP/s sparse / 2
        peak_fp16_flops=2.25e15,
        peak_fp32_flops=80e12,
        memory_bandwidth=8.0e12,  # HBM3e
        memory_bytes=180_000_000_000,
        tdp_watts=1000.0,
        price_per_hour_usd=128.0 / 8,
        sources={
            "peak_bf16_flops": f"{_B200_DS}: BF16 tensor 4.5 PFLOP/s sparse -> 2.25 dense",
            "peak_fp16_flops": f"{_B200_DS}: FP16 tensor 4.5 PFLOP/s sparse -> 2.25 dense",
            "peak_fp32_flops": f"{_B200_DS}: FP32 80 TFLOP/s",
            "memory_bandwidth": f"{_B200_DS}: 8 TB/s HBM3e",
            "memory_bytes": f"{_B200_DS}: 1,440 GB per 8 GPUs = 180 GB",
            "tdp_watts": f"{_B200_DS}: 1,000 W per GPU",
            "price_per_hour_usd": (
                "Oracle Cloud compute pricing, BM.GPU.B200.8 (8x B200) ~$128/h / 8, as "
                "listed by oraclelicensingexperts.com (April 2026; approximate, check the page)"
            ),
        },
        device_patterns=(r"B200( SXM\d?)?( \d+GB)?( HBM3E)?",),  # not "GB200"
    ),
    Accelerator(
        name="mi300x",
        display_name="AMD Instinct MI300X 192GB",
        peak_bf16_flops=1307.4e12,  # 2,614.9 with sparsity / 2
        peak_fp16_flops=1307.4e12,
        peak_fp32_flops=163.4e12,  # vector FP32
        memory_bandwidth=5.3e12,  # HBM3
        memory_bytes=192_000_000_000,
        tdp_watts=750.0,
        price_per_hour_usd=6.00,
        sources={
            "peak_bf16_flops": f"{_MI300X_DS}: peak BF16 1,307.4 TFLOP/s dense",
            "peak_fp16_flops": f"{_MI300X_DS}: peak FP16 1,307.4 TFLOP/s dense",
            "peak_fp32_flops": f"{_MI300X_DS}: peak FP32 vector 163.4 TFLOP/s",
            "memory_bandwidth": f"{_MI300X_DS}: 5.3 TB/s peak",
            "memory_bytes": f"{_MI300X_DS}: 192 GB HBM3",
            "tdp_watts": f"{_MI300X_DS}: 750 W peak board power",
            "price_per_hour_usd": (
                "Oracle Cloud compute pricing, BM.GPU.MI300X.8: $6.00 per GPU-hour "
                "(approximate; check the page)"
            ),
        },
        device_patterns=(r"(AMD )?(INSTINCT )?MI300X( OAM)?( VF)?",),
    ),
    Accelerator(
        name="mi325x",
        display_name="AMD Instinct MI325X 256GB",
        peak_bf16_flops=1307.4e12,  # the MI300X's CDNA 3 compute; only memory changed
        peak_fp16_flops=1307.4e12,
        peak_fp32_flops=163.4e12,
        memory_bandwidth=6.0e12,  # HBM3e
        memory_bytes=256_000_000_000,
        tdp_watts=1000.0,
        price_per_hour_usd=2.00,
        sources={
            "peak_bf16_flops": f"{_MI325X_DS}: peak BF16 1,307.4 TFLOP/s dense",
            "peak_fp16_flops": f"{_MI325X_DS}: peak FP16 1,307.4 TFLOP/s dense",
            "peak_fp32_flops": f"{_MI325X_DS}: peak FP32 vector 163.4 TFLOP/s",
            "memory_bandwidth": f"{_MI325X_DS}: 6 TB/s peak",
            "memory_bytes": f"{_MI325X_DS}: 256 GB HBM3E",
            "tdp_watts": f"{_MI325X_DS}: 1,000 W peak board power",
            "price_per_hour_usd": (
                "GPU-cloud rental $2.00-$2.25 per GPU-hour (awesomeagents.ai/hardware/"
                "amd-mi325x, 2026; lower value; approximate, not a hyperscaler list price)"
            ),
        },
        device_patterns=(r"(AMD )?(INSTINCT )?MI325X( OAM)?( VF)?",),
    ),
    Accelerator(
        name="l40s",
        display_name="NVIDIA L40S 48GB",
        peak_bf16_flops=362.05e12,  # 733 sparse / 2
        peak_fp16_flops=362.05e12,
        peak_fp32_flops=91.6e12,
        memory_bandwidth=864e9,  # GDDR6
        memory_bytes=48_000_000_000,
        tdp_watts=350.0,
        price_per_hour_usd=1.861,  # g6e.xlarge (1x L40S)
        sources={
            "peak_bf16_flops": f"{_L40S_DS}: BF16 tensor 733 TFLOP/s sparse -> 362.05 dense",
            "peak_fp16_flops": f"{_L40S_DS}: FP16 tensor 733 TFLOP/s sparse -> 362.05 dense",
            "peak_fp32_flops": f"{_L40S_DS}: FP32 91.6 TFLOP/s",
            "memory_bandwidth": f"{_L40S_DS}: 864 GB/s",
            "memory_bytes": f"{_L40S_DS}: 48 GB GDDR6",
            "tdp_watts": f"{_L40S_DS}: max power 350 W",
            "price_per_hour_usd": f"{_AWS}: g6e.xlarge (1x L40S, 4 vCPU) ~$1.861/h (approximate)",
        },
        device_patterns=(r"L40S",),
    ),
    Accelerator(
        name="h20",
        display_name="NVIDIA H20 96GB",
        peak_bf16_flops=148e12,
        peak_fp16_flops=148e12,
        peak_fp32_flops=44e12,
        memory_bandwidth=4.0e12,  # HBM3
        memory_bytes=96_000_000_000,
        tdp_watts=400.0,
        price_per_hour_usd=1.50,
        sources={
            "peak_bf16_flops": f"{_H20_REPORTED}: BF16 tensor 148 TFLOP/s dense",
            "peak_fp16_flops": f"{_H20_REPORTED}: FP16 tensor 148 TFLOP/s dense",
            "peak_fp32_flops": f"{_H20_REPORTED}: FP32 44 TFLOP/s",
            "memory_bandwidth": f"{_H20_REPORTED}: 4.0 TB/s",
            "memory_bytes": f"{_H20_REPORTED}: 96 GB HBM3",
            "tdp_watts": f"{_H20_REPORTED}: 400 W",
            "price_per_hour_usd": (
                "placeholder: no public on-demand list price found for this China-market part "
                "(rented through Chinese clouds); $1.50/h, override with --price-per-hour"
            ),
        },
        device_patterns=(r"H20( 96GB)?( HBM3)?",),  # full match: not H200
    ),
    Accelerator(
        name="rtx-4090",
        display_name="NVIDIA GeForce RTX 4090 24GB",
        peak_bf16_flops=165.2e12,  # FP32 accumulate, dense (330.3 sparse)
        peak_fp16_flops=165.2e12,
        peak_fp32_flops=82.6e12,
        memory_bandwidth=1008e9,  # GDDR6X
        memory_bytes=24_000_000_000,
        tdp_watts=450.0,
        price_per_hour_usd=0.69,
        sources={
            "peak_bf16_flops": f"{_ADA_WP}: BF16 tensor with FP32 accumulate 165.2 TFLOP/s dense",
            "peak_fp16_flops": f"{_ADA_WP}: FP16 tensor with FP32 accumulate 165.2 TFLOP/s dense",
            "peak_fp32_flops": f"{_ADA_WP}: FP32 82.6 TFLOP/s",
            "memory_bandwidth": f"{_ADA_WP}: 1,008 GB/s GDDR6X",
            "memory_bytes": f"{_ADA_WP}: 24 GB GDDR6X",
            "tdp_watts": f"{_ADA_WP}: total graphics power 450 W",
            "price_per_hour_usd": (
                "Runpod GPU pricing page: RTX 4090 secure cloud ~$0.69/h (GPU cloud, not a "
                "hyperscaler; approximate, check the page)"
            ),
        },
        device_patterns=(r"(GEFORCE )?RTX 4090",),  # not the cut-down RTX 4090 D
    ),
    Accelerator(
        # Nominal: one socket of a current 2-socket cloud server, so CPU runs can be priced on
        # the same footing as GPU runs. Override with the machine you actually use.
        name="cpu",
        display_name="Generic server CPU socket (nominal, 48-core Sapphire Rapids class)",
        peak_bf16_flops=48 * 2.4e9 * 1024,  # AMX: 1024 bf16 FLOP/clk/core at 2.4 GHz base
        peak_fp16_flops=48 * 2.4e9 * 128,  # AVX512-FP16: 2 FMA x 32 lanes x 2
        peak_fp32_flops=48 * 2.4e9 * 64,  # AVX-512: 2 FMA x 16 lanes x 2
        memory_bandwidth=8 * 4800e6 * 8,  # 8 channels DDR5-4800 x 8 bytes = 307.2 GB/s
        memory_bytes=384 * GIB_BYTES,  # half of m7i.48xlarge's 768 GiB
        tdp_watts=350.0,
        price_per_hour_usd=9.6768 / 2,  # m7i.48xlarge (2 sockets) $9.6768/h
        sources={
            "peak_bf16_flops": "nominal: 48 cores x 2.4 GHz x 1024 FLOP/clk (Intel AMX bf16)",
            "peak_fp16_flops": "nominal: 48 cores x 2.4 GHz x 128 FLOP/clk (AVX512-FP16)",
            "peak_fp32_flops": "nominal: 48 cores x 2.4 GHz x 64 FLOP/clk (2x AVX-512 FMA)",
            "memory_bandwidth": "nominal: 8 channels DDR5-4800 (Sapphire Rapids) = 307.2 GB/s",
            "memory_bytes": "nominal: 384 GiB, one socket's half of an m7i.48xlarge",
            "tdp_watts": "nominal: 350 W, Intel Xeon Platinum 8480+ TDP (ark.intel.com)",
            "price_per_hour_usd": (
                f"nominal: {_AWS}: m7i.48xlarge (2x 48-core Xeon, 192 vCPU) $9.6768/h / 2 sockets"
            ),
        },
        device_patterns=(r"CPU",),
        nominal=True,
    ),
)

ACCELERATORS: Mapping[str, Accelerator] = MappingProxyType({a.name: a for a in _CATALOG})

# Short names people type; values are catalog keys.
ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "h100": "h100-sxm",
        "h100-sxm5": "h100-sxm",
        "h100-80gb": "h100-sxm",
        "h100-sxm-80gb": "h100-sxm",
        "h100-pcie-80gb": "h100-pcie",
        "h200": "h200-sxm",
        "h200-141gb": "h200-sxm",
        "a100": "a100-sxm-80gb",
        "a100-80gb": "a100-sxm-80gb",
        "a100-sxm": "a100-sxm-80gb",
        "a100-sxm4-80gb": "a100-sxm-80gb",
        "v100": "v100-sxm2-32gb",
        "v100-32gb": "v100-sxm2-32gb",
        "v100-sxm2": "v100-sxm2-32gb",
        "b200-180gb": "b200",
        "mi300": "mi300x",
        "mi325": "mi325x",
        "4090": "rtx-4090",
        "geforce-rtx-4090": "rtx-4090",
        "h20-96gb": "h20",
    }
)


# ---- lookup ------------------------------------------------------------------------------
def detect_accelerator(
    device_name: str, *, catalog: Mapping[str, Accelerator] | None = None
) -> Accelerator | None:
    """The catalog entry for a torch.cuda.get_device_name() / NVML name, or None if unknown.

    Matching is strict on purpose (A100 40GB, A100 PCIe, H100 NVL, GH200 are not matched):
    pricing a run with a near-miss part's numbers would be silently wrong.
    """
    for accelerator in (catalog if catalog is not None else ACCELERATORS).values():
        if accelerator.matches(device_name):
            return accelerator
    return None


def _resolve(name: str, catalog: Mapping[str, Accelerator]) -> Accelerator | None:
    key = _normalize_key(name)
    if key in catalog:
        return catalog[key]
    if key in ALIASES and ALIASES[key] in catalog:
        return catalog[ALIASES[key]]
    return detect_accelerator(name, catalog=catalog)  # a pasted device name works too


def get_accelerator(
    name: str,
    overrides: Mapping[str, float] | None = None,
    *,
    catalog: Mapping[str, Accelerator] | None = None,
) -> Accelerator:
    """Look up an accelerator by name, alias or device name; apply numeric overrides.

    `catalog` defaults to ACCELERATORS; pass `load_hardware_config(path)` to use a config file.
    """
    catalog = catalog if catalog is not None else ACCELERATORS
    accelerator = _resolve(name, catalog)
    if accelerator is None:
        key = _normalize_key(name)
        candidates = [*catalog, *(a for a, target in ALIASES.items() if target in catalog)]
        close = difflib.get_close_matches(key, candidates, n=3, cutoff=0.5)
        hint = f"did you mean {', '.join(close)}? " if close else ""
        raise UserError(
            f"unknown accelerator {name!r}; {hint}known: {', '.join(sorted(catalog))} "
            "(or add it in a hardware config file)"
        )
    return accelerator.with_overrides(overrides or {})


# ---- config files ------------------------------------------------------------------------
class HardwareConfig(dict[str, Accelerator]):
    """A catalog merged with hardware config files (load_hardware_config): name -> Accelerator,
    as ACCELERATORS, that also knows which entries and fields the files set. A caller pricing
    with figures of its own (a profile's stored entry) lets a file's fields win over them,
    and says where the figures came from."""

    def __init__(
        self,
        entries: Mapping[str, Accelerator],
        configured: Mapping[str, Mapping[str, str]] | None = None,
    ) -> None:
        super().__init__(entries)
        # canonical name -> {key the file sets: "hardware config FILE"}
        self.configured: dict[str, dict[str, str]] = {
            name: dict(keys) for name, keys in (configured or {}).items()
        }

    def configured_fields(self, name: str) -> dict[str, str]:
        """The keys a config file sets for accelerator `name` (catalog key or alias), each
        with the file that set it ('hardware config hw.toml'); {} when no file names it."""
        entry = _resolve_key_only(name, self)
        return dict(self.configured.get(entry.name, {})) if entry is not None else {}


def _read_config_file(path: Path) -> Any:
    if not path.is_file():
        raise UserError(f"hardware config {path} does not exist; check the path")
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            return json.loads(path.read_text(encoding="utf-8"))
        if suffix == ".toml":
            if sys.version_info < (3, 11):
                # tomllib is 3.11+ and tomli is not a dependency.
                raise UserError(
                    f"hardware config {path}: TOML needs Python 3.11+; write it as JSON instead"
                )
            import tomllib

            with path.open("rb") as handle:
                return tomllib.load(handle)
    except ValueError as exc:  # JSONDecodeError, TOMLDecodeError, UnicodeDecodeError
        kind = "JSON" if suffix == ".json" else "TOML"
        raise UserError(
            f"hardware config {path} is not valid {kind} ({exc}); fix the file"
        ) from None
    raise UserError(f"hardware config {path} must be a .toml or .json file")


def load_hardware_config(
    path: str | Path, *, base: Mapping[str, Accelerator] | None = None
) -> HardwareConfig:
    """Read `{"accelerators": {name: {...}}}` from TOML or JSON; return the merged catalog.

    An entry whose name (or alias) is in `base` (default ACCELERATORS) overrides that entry's
    fields; any other name is a new accelerator and must give every numeric field. The result
    is a new dict (a HardwareConfig: it also says which entries and fields the file sets); the
    built-in catalog is left untouched. Pass it to get_accelerator(catalog=).
    """
    path = Path(path)
    data = _read_config_file(path)
    if not isinstance(data, dict) or set(data) != {"accelerators"}:
        raise UserError(
            f'hardware config {path} must hold exactly one table, "accelerators" '
            '(e.g. {"accelerators": {"h100-sxm": {"price_per_hour_usd": 3.0}}})'
        )
    entries = data["accelerators"]
    if not isinstance(entries, dict):
        raise UserError(f'hardware config {path}: "accelerators" must be a table of entries')

    merged = dict(base if base is not None else ACCELERATORS)
    configured = dict(base.configured) if isinstance(base, HardwareConfig) else {}
    source = f"hardware config {path.name}"
    valid = ", ".join((*NUMERIC_FIELDS, *_TEXT_FIELDS))
    for raw_name, entry in entries.items():
        if not isinstance(entry, dict):
            raise UserError(f"hardware config {path}: entry {raw_name!r} must be a table")
        unknown = sorted(set(entry) - set(NUMERIC_FIELDS) - set(_TEXT_FIELDS))
        if unknown:
            raise UserError(
                f"hardware config {path}: {raw_name!r} has unknown key(s) {', '.join(unknown)}; "
                f"valid keys: {valid}"
            )
        numbers = {k: v for k, v in entry.items() if k in NUMERIC_FIELDS}
        text = _check_text_fields(path, raw_name, entry)
        existing = _resolve_key_only(raw_name, merged)
        if existing is not None:
            updated = existing.with_overrides(numbers, source=source)
            sources = {**updated.sources, **text.pop("sources", {})}
            merged[existing.name] = replace(updated, **text, sources=sources)
            configured[existing.name] = {
                **configured.get(existing.name, {}),
                **dict.fromkeys(entry, source),
            }
            continue
        missing = [k for k in NUMERIC_FIELDS if k not in entry]
        if missing:
            raise UserError(
                f"hardware config {path}: new accelerator {raw_name!r} is missing "
                f"{', '.join(missing)}; give all of {', '.join(NUMERIC_FIELDS)}"
            )
        key = _normalize_key(raw_name)
        checked = {k: _check_override(key, k, v) for k, v in numbers.items()}
        sources = {**dict.fromkeys(NUMERIC_FIELDS, source), **text.pop("sources", {})}
        text.setdefault("display_name", raw_name)
        merged[key] = Accelerator(name=key, **checked, **text, sources=sources)
        configured[key] = dict.fromkeys(entry, source)
    return HardwareConfig(merged, configured)


def _resolve_key_only(name: str, catalog: Mapping[str, Accelerator]) -> Accelerator | None:
    """Like _resolve but without device-name matching: a config key names an entry exactly."""
    key = _normalize_key(name)
    if key in catalog:
        return catalog[key]
    if key in ALIASES and ALIASES[key] in catalog:
        return catalog[ALIASES[key]]
    return None


def _check_text_fields(path: Path, name: str, entry: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "display_name" in entry:
        if not isinstance(entry["display_name"], str):
            raise UserError(f"hardware config {path}: {name!r} display_name must be a string")
        out["display_name"] = entry["display_name"]
    if "device_patterns" in entry:
        patterns = entry["device_patterns"]
        if not isinstance(patterns, list) or not all(isinstance(p, str) for p in patterns):
            raise UserError(
                f"hardware config {path}: {name!r} device_patterns must be a list of regexes"
            )
        out["device_patterns"] = tuple(patterns)
    if "sources" in entry:
        sources = entry["sources"]
        if not isinstance(sources, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in sources.items()
        ):
            raise UserError(
                f"hardware config {path}: {name!r} sources must map field names to strings"
            )
        out["sources"] = dict(sources)
    if "nominal" in entry:
        if not isinstance(entry["nominal"], bool):
            raise UserError(f"hardware config {path}: {name!r} nominal must be true or false")
        out["nominal"] = entry["nominal"]
    return out


# ---- stacks ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Stack:
    """The hardware/software a run is priced on: backend, accelerator kind and count, TP, dtype.

    Accelerators not in the tensor-parallel group run data-parallel replicas, so the count must
    be a multiple of tensor_parallel.
    """

    backend: str
    accelerator: Accelerator
    num_accelerators: int = 1
    tensor_parallel: int = 1
    dtype: str = "bfloat16"

    def __post_init__(self) -> None:
        if not isinstance(self.backend, str) or not self.backend.strip():
            raise UserError("stack backend must be a non-empty name, e.g. 'engine' or 'hf'")
        if not isinstance(self.accelerator, Accelerator):
            raise UserError(
                f"stack accelerator must be an Accelerator (use get_accelerator), "
                f"got {type(self.accelerator).__name__}"
            )
        for key in ("num_accelerators", "tensor_parallel"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UserError(f"stack {key} must be an integer >= 1, got {value!r}")
        if self.tensor_parallel > self.num_accelerators:
            raise UserError(
                f"tensor_parallel ({self.tensor_parallel}) exceeds num_accelerators "
                f"({self.num_accelerators}); lower tensor_parallel or add accelerators"
            )
        if self.num_accelerators % self.tensor_parallel:
            raise UserError(
                f"num_accelerators ({self.num_accelerators}) must be a multiple of "
                f"tensor_parallel ({self.tensor_parallel})"
            )
        if self.dtype not in DTYPE_BYTES:
            raise UserError(f"unknown dtype {self.dtype!r}; use {one_of(sorted(DTYPE_BYTES))}")

    @property
    def price_per_second(self) -> float:
        """USD per second for all accelerators of the stack."""
        return self.num_accelerators * self.accelerator.price_per_second

    @property
    def power_watts(self) -> float:
        """Rated power of all accelerators: the W of idealized energy."""
        return self.num_accelerators * self.accelerator.tdp_watts

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe; the accelerator is stored whole so a stored run keeps its prices."""
        return {
            "backend": self.backend,
            "accelerator": self.accelerator.to_dict(),
            "num_accelerators": self.num_accelerators,
            "tensor_parallel": self.tensor_parallel,
            "dtype": self.dtype,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Stack:
        """Inverse of to_dict; `accelerator` may also be a catalog name."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise UserError(
                f"unknown Stack field(s): {', '.join(unknown)}; valid: {', '.join(sorted(known))}"
            )
        if "backend" not in data or "accelerator" not in data:
            raise UserError("a Stack needs at least 'backend' and 'accelerator'")
        values = dict(data)
        accelerator = values["accelerator"]
        if isinstance(accelerator, str):
            values["accelerator"] = get_accelerator(accelerator)
        elif isinstance(accelerator, Mapping):
            values["accelerator"] = Accelerator.from_dict(accelerator)
        return cls(**values)


# ---- listing -----------------------------------------------------------------------------
def accelerator_table(catalog: Mapping[str, Accelerator] | None = None) -> pd.DataFrame:
    """One row per accelerator, in the units people quote, for the `hardware` CLI listing."""
    rows = [
        {
            "name": a.name,
            "display_name": a.display_name,
            "bf16 TFLOP/s": to_tera(a.peak_bf16_flops),
            "bandwidth TB/s": to_tera(a.memory_bandwidth),
            "memory GB": to_giga(a.memory_bytes),
            "TDP W": a.tdp_watts,
            "$/h": a.price_per_hour_usd,
        }
        for a in (catalog if catalog is not None else ACCELERATORS).values()
    ]
    columns = [
        "name",
        "display_name",
        "bf16 TFLOP/s",
        "bandwidth TB/s",
        "memory GB",
        "TDP W",
        "$/h",
    ]
    return pd.DataFrame(rows, columns=columns)


def build_stack(
    backend: str,
    device: str,
    dtype: str | None,
    spec_dtype: str,
    accelerator: str | None,
    num_accelerators: int,
    tensor_parallel: int,
    overrides: dict[str, float],
    catalog: dict[str, Accelerator] | None = None,
) -> tuple[Stack, bool]:
    """The stack a profile runs on; the accelerator is detected unless named."""
    if num_accelerators < 1:
        raise UserError(f"--num-accelerators must be at least 1, not {num_accelerators}")
    wants_gpu = device == "auto" or device.startswith("cuda")
    gpu = device if device.startswith("cuda") else "cuda"
    gpu_name = provenance.cuda_device_name(gpu) if wants_gpu else None  # the GPU that works
    if device.startswith("cuda") and gpu_name is None:
        raise UserError(
            f"--device {device} asked for, but CUDA shows no such GPU; use another --device "
            "or --device cpu"
        )
    on_gpu = gpu_name is not None
    if accelerator:
        acc = get_accelerator(accelerator, overrides, catalog=catalog)
    elif on_gpu:
        detected = detect_accelerator(gpu_name or "", catalog=catalog)
        if detected is None:
            raise UserError(
                f"GPU {gpu_name!r} is not in the hardware catalog; name its closest entry with "
                "--accelerator (see `infermeter hardware`) or add it with --hardware-config"
            )
        acc = get_accelerator(detected.name, overrides, catalog=catalog)
    else:
        acc = get_accelerator("cpu", overrides, catalog=catalog)
    resolved_dtype = dtype or (spec_dtype if on_gpu else "float32")
    stack = Stack(
        backend=backend,
        accelerator=acc,
        num_accelerators=max(num_accelerators, tensor_parallel),
        tensor_parallel=tensor_parallel,
        dtype=resolved_dtype,
    )
    return stack, on_gpu
