"""Backends run one (p, o, batch) point each; `get_backend` picks one by name.

Each backend's settings are a dataclass (infermeter.backends.config: EngineConfig, HFConfig,
OpenAIConfig); `build_backend(config)` constructs it. Backend modules are imported only when
asked for, so this package imports without torch.
"""

from __future__ import annotations

from typing import Any

from infermeter.backends.base import Backend, Measurement, Point
from infermeter.backends.config import (
    BACKENDS,
    EngineConfig,
    Generates,
    HFConfig,
    OpenAIConfig,
    build_backend,
    config_for,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "EngineConfig",
    "Generates",
    "HFConfig",
    "Measurement",
    "OpenAIConfig",
    "Point",
    "available_backends",
    "build_backend",
    "config_for",
    "get_backend",
]


def available_backends() -> list[str]:
    """The backend names `get_backend` knows, sorted."""
    return sorted(BACKENDS)


def get_backend(name: str, **options: Any) -> Backend:
    """Construct the backend called `name` with keyword `options` (e.g. device="cuda"): the
    fields of its config dataclass. Raises UserError for an unknown backend or option, or a
    missing dependency."""
    return build_backend(config_for(name, **options))  # type: ignore[no-any-return]
