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

from bench_script import interpreted
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
    # the first token of each prompt is the prefill's: 2 x 3 decode steps
    assert (row["decode_tokens"], row["decode_tokens_agree"], row["prefill_tokens_agree"]) == (
        6, 6, 2,
    )  # fmt: skip
    assert (row["steps"], row["first_steps"], row["floor"]) == (6, 2, 2)
    assert row["steps_rel_error_max"] < 1e-4  # float32, the same function both ways
    assert row["steps_routed_alike"] == 6 and row["steps_apart_rel_error_median"] is None
    table = (tmp_path / "decode_agreement_quick.md").read_text()
    assert "tiny-qwen3-moe, 2 prompts, p = 24, o = 4" in table
    assert "routed as the prefill in 6 of 6" in table
    assert "Device: cpu" in table and "commit:" in table


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--prompts", "0"], "--prompts must be at least 1, not 0"),
        (["--new", "1"], "--new must be at least 2, not 1"),
        (["--models", "no-such-model"], "no-such-model"),
        (["--prompt", "600"], "exceed"),
    ],
)
def test_bad_input_is_one_line(tmp_path: Path, args: list[str], says: str) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, str(SCRIPT), "--quick", "--models", "tiny-llama", "--prompts",
               "1", *args, "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert says in done.stderr and "Traceback" not in done.stderr, done.stderr


@pytest.mark.parametrize("name", ["tiny-gpt-oss", "tiny-llama"])
def test_a_decode_step_reading_the_wrong_slot_is_caught(name: str) -> None:
    """The same engine, its decode steps shifted one cache slot: teacher_forced() must see it
    (the prompt passes tiny-gpt-oss's 16-token windows, so the ring buffer wraps too)."""
    import decode_agreement

    backend, engine, tokens, decoded = _engine_and_tokens(name, 40, 6)
    try:
        floor, honest = decode_agreement.teacher_forced(engine, tokens, decoded)
        assert len(honest) == 5 and max(e for e, _ in honest) < 1e-4 and floor[0] < 1e-4
        assert not floor[1] and not any(flip for _, flip in honest)
        context = engine.model.decode_context

        def shifted(pos, span, attention):  # reads and writes one slot too far
            return context(pos + 1, span, attention)

        engine.model.decode_context = shifted
        floor, wrong = decode_agreement.teacher_forced(engine, tokens, decoded)
    finally:
        backend.close()
    assert floor[0] < 1e-4  # the prompt's logits come from the prefill, untouched
    assert min(e for e, _ in wrong) > 1e-3, wrong


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen3-moe"])
def test_a_decode_step_that_never_writes_its_key_is_caught(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel that reads the cache before the step's key and value are written reads what
    the slot held: the cache past the prompt is cleared first, so that is zeros, not the
    reference prefill's own keys (a review found the check blind to this before)."""
    import decode_agreement

    call = decode_agreement._Step.__call__
    index_put = torch.Tensor.index_put_

    def unwritten(self, token, position):  # the decode step's cache writes dropped
        monkeypatch.setattr(torch.Tensor, "index_put_", lambda t, *a, **k: t)
        try:
            return call(self, token, position)
        finally:
            monkeypatch.setattr(torch.Tensor, "index_put_", index_put)

    backend, engine, tokens, decoded = _engine_and_tokens(name, 40, 6)
    try:
        monkeypatch.setattr(decode_agreement._Step, "__call__", unwritten)
        _, wrong = decode_agreement.teacher_forced(engine, tokens, decoded)
    finally:
        backend.close()
    assert min(e for e, _ in wrong) > 1e-3, wrong


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-qwen3-moe"])
def test_the_graph_path_replays_its_first_step_on_a_cleared_slot(name: str) -> None:
    """Engine._capture runs the step once eagerly before capturing it, which writes that
    step's key: made after the prompt's cache was cleared, the first replayed step found its
    key already in its slot, and a fault that never writes it would pass (a review found
    it). With a stand-in for the capture that does the same eager run, the slot the first
    replay decodes into must hold nothing before that replay writes it. The stand-in's
    replay, like a CUDA graph's, runs no Python: a MoE layer's last_ids attribute stays
    where it was and only the captured routing buffers change (reading the attribute after a
    replay had counted every step as routed otherwise on an H200)."""
    import decode_agreement

    backend, engine, tokens, decoded = _engine_and_tokens(name, 40, 6)
    p = tokens.shape[1]
    moes = [blk.moe for blk in engine.model.layers if blk.moe is not None]
    before_replays: list[float] = []
    graphs: list[object] = []

    def capture(body):
        out = body()  # the eager run: writes a step's key, as Engine._capture's does
        captured = [moe.last_ids for moe in moes]

        class Graph:
            def replay(self) -> None:
                before_replays.append(float(engine.model.cache[:, :, p:].abs().sum()))
                attributes = [moe.last_ids for moe in moes]
                out.copy_(body())
                for moe, buffer, attribute in zip(moes, captured, attributes, strict=True):
                    buffer.copy_(moe.last_ids)  # the graph writes its buffers...
                    moe.last_ids = attribute  # ...and no Python attribute moves

        graphs.append(Graph())
        return graphs[-1], out

    try:
        engine.graphs, engine._capture = True, capture
        _, steps = decode_agreement.teacher_forced(engine, tokens, decoded)
    finally:
        engine.graphs = False
        backend.close()
    assert len(graphs) == 1 and len(before_replays) == 5  # one span, five replayed steps
    assert before_replays[0] == 0.0  # nothing at or past the prompt before the first step
    assert all(x > 0 for x in before_replays[1:])  # then the steps' own keys
    assert max(e for e, _ in steps) < 1e-4  # and the replays compute the same logits
    assert not any(flip for _, flip in steps)  # routed as the prefill, read from the buffers


FAULT = """
import json, sys
sys.path.insert(0, sys.argv[1])
import torch
import decode_agreement
from infermeter.engine import kernels, mla_kernels

def written(cache):  # slots of the cache that the store filled
    return cache[0].flatten(1).abs().sum(-1).nonzero()[:, 0].tolist()

def rope(pos, slots=None):  # qkv: 2 query heads, 1 KV head, d 16; a cache of 10 slots
    cache = torch.zeros(1, 10, 2, 1, 16)
    kernels.rope_store(torch.randn(1, 4, 16), cache, torch.tensor([pos]), torch.ones(64, 8),
                       torch.zeros(64, 8), 2, None if slots is None else torch.tensor([slots]))
    return written(cache)

def latent(pos):  # q_width 8, lora 32, rope 16, nope 8, 2 heads
    cache = torch.zeros(1, 10, 32 + 16)
    at = torch.tensor([pos])
    mla_kernels.latent_store(torch.randn(1, 8 + 32 + 16), torch.randn(1, 2, 8 + 16),
                             torch.ones(32), 1e-6, cache, at, at, torch.ones(64, 8),
                             torch.zeros(64, 8), 8, 8)
    return written(cache)

out = {}
fault = decode_agreement.Fault("previous-slot")
out["fault"] = [rope(6), rope(21, 5), rope(21, 0), latent(6)]
out["calls"] = fault.calls
fault.undo()
out["undone"] = [rope(6), rope(21, 5), latent(6)]
print(json.dumps(out))
"""


def test_the_fault_writes_one_slot_early_and_undoes() -> None:
    """--fault previous-slot on the real Triton cache-write kernels (in Triton's interpreter):
    position 6's key and value land in slot 5, a ring's slot 5 in 4 and its slot 0 in its
    last (9), the latent cache (MLA) the same; each call counted; undone, they land where
    they belong."""
    pytest.importorskip("triton")
    stdout = interpreted(FAULT, str(REPO / "benchmarks"), timeout_s=300)
    out = json.loads(stdout.strip().splitlines()[-1])
    assert out == {"fault": [[5], [4], [9], [5]], "calls": 4, "undone": [[6], [5], [6]]}


def test_a_fault_the_engine_would_not_run_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """An engine whose decode step would not call the patched kernels: off the Triton path,
    or MLA layers off the latent kernels; nothing is patched then. A fault installed but
    never called is refused after the run."""
    pytest.importorskip("triton")
    from types import SimpleNamespace

    import decode_agreement
    from infermeter.engine import kernels, mla_kernels
    from infermeter.errors import UserError

    # whatever happens below, the kernels are put back after the test
    monkeypatch.setattr(kernels, "rope_store", kernels.rope_store)
    monkeypatch.setattr(mla_kernels, "latent_store", mla_kernels.latent_store)
    before = kernels.rope_store
    for attention, mla, latent in (("sdpa", False, None), ("triton", True, None)):
        engine = SimpleNamespace(
            attention=attention, model=SimpleNamespace(mla=mla, mla_kernels=latent)
        )
        with pytest.raises(UserError, match="--fault needs the Triton decode kernels"):
            decode_agreement.Fault("previous-slot", engine)
        assert kernels.rope_store is before
    engine = SimpleNamespace(attention="triton", model=SimpleNamespace(mla=True, mla_kernels=1))
    fault = decode_agreement.Fault("previous-slot", engine)
    assert kernels.rope_store is not before
    fault.undo()
    assert kernels.rope_store is before
    with pytest.raises(UserError, match="--fault never ran"):
        fault.require_ran()
    fault.calls = 1
    fault.require_ran()


@pytest.mark.parametrize("extra", [["--quick"], ["--attention", "sdpa"]])
def test_a_fault_on_torch_ops_is_refused_up_front(tmp_path: Path, extra: list[str]) -> None:
    """The decode step on torch's ops (a CPU, or --attention sdpa) calls no kernel to fault:
    one line before any model is built, no record."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, str(SCRIPT), *extra, "--models", "tiny-llama", "--prompts",
               "1", "--fault", "previous-slot", "--out", str(tmp_path)]  # fmt: skip
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2, done.stderr
    assert "--fault needs the Triton decode kernels" in done.stderr
    assert "Traceback" not in done.stderr and not list(tmp_path.iterdir())
