"""benchmarks/decode_agreement.py: the check that a decode kernel computes what the prefill
computes. On a CPU both run in float32 through the engine's reference paths, so they agree;
a decode step that reads the wrong cache slot (what a kernel that reads before its producer
finished looks like) must show as an error, or the GPU record proves nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from paths import REPO

torch = pytest.importorskip("torch")

SCRIPT = REPO / "benchmarks" / "decode_agreement.py"
sys.path.insert(0, str(REPO / "benchmarks"))


def _engine_and_tokens(name: str, prompt: int, new: int) -> tuple:
    from infermeter.backends.engine import EngineBackend
    from infermeter.spec.catalog import get_spec

    backend = EngineBackend(device="cpu")
    backend.prepare(get_spec(name))
    engine = backend._engine
    tokens = torch.randint(0, 256, (1, prompt), generator=torch.Generator().manual_seed(3))
    return backend, engine, tokens, engine.generate(tokens, new).tokens[0]


def test_quick_records_agreement_and_routing(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, str(SCRIPT), "--quick", "--models", "tiny-qwen3-moe",
               "--prompts", "2", "--new", "4", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (row,) = json.loads((tmp_path / "decode_agreement_quick.json").read_text())["models"]
    assert (row["tokens"], row["agree"], row["first_steps"]) == (8, 8, 2)
    assert row["logits_rel_error_max"] < 1e-4  # float32, the same function both ways
    assert row["steps_routed_alike"] == 8 and row["routed_apart_rel_error_median"] is None
    table = (tmp_path / "decode_agreement_quick.md").read_text()
    assert "tiny-qwen3-moe, p = 24, o = 4" in table and "routed alike in 8 of 8 steps" in table
    assert "Device: cpu" in table and "commit:" in table


@pytest.mark.parametrize("name", ["tiny-gpt-oss", "tiny-llama"])
def test_a_decode_step_reading_the_wrong_slot_is_caught(name: str) -> None:
    """The same engine, its decode steps shifted one cache slot: teacher_forced() must see it
    (the prompt passes tiny-gpt-oss's 16-token windows, so the ring buffer wraps too)."""
    import decode_agreement

    backend, engine, tokens, decoded = _engine_and_tokens(name, 40, 6)
    try:
        honest = decode_agreement.teacher_forced(engine, tokens, decoded)
        assert len(honest) == 6 and max(e for e, _ in honest) < 1e-4
        assert not any(flip for _, flip in honest)
        context = engine.model.decode_context

        def shifted(pos, span, attention):  # reads and writes one slot too far
            return context(pos + 1, span, attention)

        engine.model.decode_context = shifted
        wrong = decode_agreement.teacher_forced(engine, tokens, decoded)
    finally:
        backend.close()
    assert wrong[0][0] < 1e-4  # the first logits come from the prefill, untouched
    assert min(e for e, _ in wrong[1:]) > 1e-3, wrong
