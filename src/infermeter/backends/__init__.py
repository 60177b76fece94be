"""Backends run one (p, o, batch) point each; `get_backend` picks one by name.

Backend modules are imported only when asked for, so this package imports without torch.
"""

from __future__ import annotations

import importlib
import inspect
from typing import Any

from infermeter.backends.base import Backend, Measurement, Point
from infermeter.errors import UserError

__all__ = ["BACKENDS", "Backend", "Measurement", "Point", "available_backends", "get_backend"]

# name -> (module, class); imported lazily.
BACKENDS: dict[str, tuple[str, str]] = {
    "hf": ("infermeter.backends.hf", "HFBackend"),
    "engine": ("infermeter.backends.engine", "EngineBackend"),
    "openai": ("infermeter.backends.openai", "OpenAIBackend"),
}


def available_backends() -> list[str]:
    return sorted(BACKENDS)


def get_backend(name: str, **options: Any) -> Backend:
    """Construct the backend called `name` with keyword `options` (e.g. device="cuda")."""
    if name not in BACKENDS:
        raise UserError(f"unknown backend {name!r}; available: {', '.join(available_backends())}")
    module_name, class_name = BACKENDS[name]
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            raise UserError(f"backend {name!r} is not available in this install") from error
        if error.name and not error.name.startswith("infermeter"):
            # A third-party dependency (torch, transformers) is missing: tell how to get it.
            raise UserError(
                f"backend {name!r} needs the package {error.name!r}: "
                "pip install 'infermeter[torch]'"
            ) from error
        raise
    cls = getattr(module, class_name)
    # Name a misspelt option instead of surfacing a TypeError from the constructor.
    parameters = inspect.signature(cls).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    unknown = sorted(set(options) - set(parameters))
    if unknown and not takes_any:
        raise UserError(
            f"backend {name!r} has no option(s) {', '.join(unknown)}; "
            f"its options: {', '.join(parameters) or 'none'}"
        )
    return cls(**options)
