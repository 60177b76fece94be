"""A model whose weights cannot fit is refused with a sentence before anything is built."""

from __future__ import annotations

import pytest

import infermeter.measure.memory
from infermeter.backends.engine import EngineBackend
from infermeter.backends.hf import HFBackend
from infermeter.errors import UserError
from infermeter.measure.memory import available_bytes, check_weights_fit
from infermeter.spec.catalog import get_spec

HOST_BYTES = 16 * 2**30  # what the checks below are told the host has free


@pytest.fixture
def small_host(monkeypatch: pytest.MonkeyPatch) -> None:
    """16 GiB free whatever this machine has: on a host with more than ~270 GiB free the
    refusal would not happen and the test would build 243 GiB of weights."""
    monkeypatch.setattr(infermeter.measure.memory, "available_bytes", lambda device: HOST_BYTES)


def test_host_memory_is_known_here() -> None:
    have = available_bytes("cpu")
    assert have is not None and have > 0


@pytest.mark.parametrize("backend", [EngineBackend(device="cpu"), HFBackend(device="cpu")])
def test_weights_larger_than_memory_are_refused(backend, small_host: None) -> None:
    # 65B parameters in float32 are 260 GB, against 16 GiB free.
    with pytest.raises(UserError, match=r"llama-65b needs .* GiB of weights in float32"):
        backend.prepare(get_spec("llama-65b"))


def test_small_models_and_shards_pass(small_host: None) -> None:
    check_weights_fit(get_spec("tiny-llama"), "float32", "cpu")
    have = HOST_BYTES
    spec = get_spec("llama-65b")
    shards = int(spec.num_params * 4 / (0.5 * have)) + 1
    check_weights_fit(spec, "float32", "cpu", shards=shards)
