"""Shared by the benchmark scripts that time a query as a user's script does: the wall clock
around one whole generate() call of the engine (token ids in, token ids out)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def prepared_backend(model: str, device: str) -> tuple[Any, Any]:
    """(spec, backend) for `model` on `device`: the catalog's spec and the stack `infermeter
    profile` uses by default (EngineBackend), prepared (weights loaded; its engine is
    `backend._engine`; the caller closes it)."""
    from infermeter.backends.engine import EngineBackend
    from infermeter.spec.catalog import resolve_spec

    spec = resolve_spec(model)
    backend = EngineBackend(device=device)
    backend.prepare(spec)
    return spec, backend


def generate_timer(engine: Any, device: str) -> Callable[[list[int], int], float]:
    """A function of (prompt token ids, output tokens) that runs `engine.generate([prompt], o)`
    and returns its wall-clock seconds, timed from when the device's queued work is done
    (torch.cuda.synchronize on "cuda"), so no earlier call's work is charged to it."""
    import torch

    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def call(prompt: list[int], output_tokens: int) -> float:
        sync()
        started = time.perf_counter()
        engine.generate([prompt], output_tokens)
        return time.perf_counter() - started

    return call
