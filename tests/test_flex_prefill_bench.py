"""benchmarks/flex_prefill.py: a --quick run (flex unfused on the CPU) times both arms at every
size, finds them in agreement, and records what the engine chose and why; user mistakes are
refused in one line before any work."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench_script import assert_refused
from paths import REPO

torch = pytest.importorskip("torch")

SCRIPT = REPO / "benchmarks" / "flex_prefill.py"


@pytest.mark.slow
def test_quick_times_both_arms_and_finds_them_agreeing(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, str(SCRIPT), "--quick", "--trials", "1", "--out", str(tmp_path)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    record = json.loads((tmp_path / "flex_prefill_quick.json").read_text())
    assert {"device", "date", "commit"} <= record.keys()
    rows = {r["model"]: r for r in record["models"]}
    assert set(rows) == {"tiny-gemma2", "tiny-gpt-oss"}
    for r in rows.values():
        assert r["engine_choice"] == "explicit" and "not CUDA" in r["engine_note"]
        assert r["sizes"] == [9, 16, 33] and not r["failed"]
        for arm in ("explicit", "flex"):
            assert all(t > 0 for t in r[f"{arm}_prefill_s"])
        # unfused flex materialises every score: slower here, never equal by accident
        assert all(x > 0 for x in r["flex_over_explicit_pct"])
        assert r["last_logits_rel_diff"] < 1e-5 and r["greedy_agreement"] == 1.0
        assert len(r["layer_rel_diff"]) == 3 and r["dtype"] == "float32"
        for cases in r["layer_rel_diff"]:  # the model's kinds and the check case, each
            assert len(cases) >= 2 and max(cases.values()) < 1e-5, cases
    table = (tmp_path / "flex_prefill_quick.md").read_text()
    assert "tiny-gpt-oss@2L: prefill ms explicit / flex (flex over explicit) | p 9:" in table
    assert "tiny-gpt-oss@2L: flex vs explicit, one layer on random q, k, v" in table


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--quick", "--sizes", "9,x"], "--sizes takes prompt sizes separated by commas"),
        (["--quick", "--sizes", "9,512"], "--sizes and --check-p must be 1 to 511"),
        (["--quick", "--graph-p", "-1"], "--graph-p must be a prompt size"),
        (["--quick", "--float32"], "--float32 is for a GPU: --quick runs in float32 already"),
        (["--quick", "--check-p", "0"], "--sizes and --check-p must be 1 to"),
        (["--quick", "--models", "no-such-model"], "no-such-model"),
        (["--quick"], "INFERMETER_PREFILL_ATTENTION must be auto, explicit or flex"),
        ([], "no CUDA GPU here: run with --quick"),
    ],
)
def test_user_mistakes_are_one_line_before_any_work(
    tmp_path: Path, args: list[str], says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not args and torch.cuda.is_available():
        pytest.skip("a GPU is here: the script would run")
    if "INFERMETER_PREFILL_ATTENTION" in says:
        monkeypatch.setenv("INFERMETER_PREFILL_ATTENTION", "fused")
    assert_refused("flex_prefill.py", args, says, tmp_path)


def test_each_model_gets_the_default_sizes_within_its_context() -> None:
    sys.path.insert(0, str(SCRIPT.parent))
    import flex_prefill
    from infermeter.spec.catalog import get_spec

    gemma, oss = get_spec("gemma-2-9b"), get_spec("gpt-oss-20b")  # 8,192 and 131,072
    assert flex_prefill.model_sizes(gemma, None, False) == [
        33,
        97,
        127,
        128,
        481,
        496,
        1841,
        1856,
        4097,
        8191,
    ]
    assert flex_prefill.model_sizes(oss, None, False) == list(flex_prefill.GPU_SIZES)
    assert flex_prefill.model_sizes(gemma, [9, 20], False) == [9, 20]  # given: as given


def test_a_graph_size_past_a_models_context_is_recorded_as_skipped() -> None:
    """--graph-p is one size for every model; a model whose context it passes (Gemma-2's
    8,192) gets a skip that names both, and is measured otherwise."""
    sys.path.insert(0, str(SCRIPT.parent))
    import flex_prefill
    from infermeter.spec.catalog import get_spec

    context = get_spec("tiny-gemma2").max_context
    row = flex_prefill.one_model("tiny-gemma2", [9], 2, "cpu", 1, 9, graph_p=context)
    says = f"--graph-p {context} leaves no room in its context of {context} tokens"
    assert row["graph_setup_skipped"] == says
    assert "graph_setup" not in row and row["explicit_prefill_s"][0] > 0


def test_a_model_flex_serves_no_layer_of_is_refused_and_a_failing_check_kept() -> None:
    """tiny-llama has no soft-capped or sink layer: recorded as not measured, in words. A
    layer check that fails (a compiler error on a GPU) is kept as its first line, with the
    row's timings."""
    sys.path.insert(0, str(SCRIPT.parent))
    import flex_prefill
    from infermeter.engine.flex import FlexPrefill
    from infermeter.engine.generate import Engine
    from infermeter.spec.catalog import get_spec

    row = flex_prefill.one_model("tiny-llama", [9], 2, "cpu", 1, 9)
    assert row["failed"] == {
        "flex": "no layer soft-caps or has sinks: flex would serve none of its layers"
    }
    assert "sizes" not in row

    class Broken(FlexPrefill):
        def __call__(self, *args: object, **kwargs: object) -> None:
            raise RuntimeError("triton: out of resources\nmore lines")

    engine = Engine(get_spec("tiny-gpt-oss"), device="cpu", cuda_graphs=False)
    broken = flex_prefill.layer_differences(engine, Broken(compiled=False), 20)
    assert broken == {"error": "RuntimeError: triton: out of resources"}
    assert flex_prefill.worst(broken) == "RuntimeError: triton: out of resources"
    cases = flex_prefill.layer_differences(engine, FlexPrefill(compiled=False), 20)
    assert flex_prefill.worst(cases).count("e-") == 2  # its kinds'; the check case's


@pytest.mark.parametrize(("device", "float32", "want"), [
    ("cuda", True, "float32"), ("cuda", False, "bfloat16"), ("cpu", False, None),
])  # fmt: skip
def test_float32_asks_the_engine_for_float32_on_a_gpu(
    device: str, float32: bool, want: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--float32 must reach the engine: None would fall back to the spec's dtype (bf16 for
    gpt-oss-20b), measuring bf16 again under the float32 name (a fresh review found it)."""
    sys.path.insert(0, str(SCRIPT.parent))
    import flex_prefill

    asked: list[str | None] = []

    class Stop(Exception):
        pass

    class Recorder:
        def __init__(self, device: str, dtype: str | None, cuda_graphs: bool) -> None:
            asked.append(dtype)
            raise Stop

    monkeypatch.setattr(flex_prefill, "EngineBackend", Recorder)
    monkeypatch.setenv("INFERMETER_PREFILL_ATTENTION", "explicit")  # one_model sets it unless set
    with pytest.raises(Stop):
        flex_prefill.one_model("gpt-oss-20b", [481], 8, device, 1, 481, 0, float32)
    assert asked == [want]
