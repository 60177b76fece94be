"""A model whose weights cannot fit is refused with a sentence before anything is built."""

from __future__ import annotations

import pytest

from infermeter.backends.engine import EngineBackend
from infermeter.backends.hf import HFBackend
from infermeter.catalog import get_spec
from infermeter.errors import UserError
from infermeter.memory import available_bytes, check_weights_fit


def test_host_memory_is_known_here() -> None:
    have = available_bytes("cpu")
    assert have is not None and have > 0


@pytest.mark.parametrize("backend", [EngineBackend(device="cpu"), HFBackend(device="cpu")])
def test_weights_larger_than_memory_are_refused(backend) -> None:
    # 65B parameters in float32 are 260 GB: more than any CI machine has free.
    with pytest.raises(UserError, match=r"llama-65b needs .* GiB of weights in float32"):
        backend.prepare(get_spec("llama-65b"))


def test_small_models_and_shards_pass() -> None:
    check_weights_fit(get_spec("tiny-llama"), "float32", "cpu")
    have = available_bytes("cpu") or 0
    spec = get_spec("llama-65b")
    shards = int(spec.num_params * 4 / (0.5 * have)) + 1
    check_weights_fit(spec, "float32", "cpu", shards=shards)
