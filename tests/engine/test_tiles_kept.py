"""The Triton kernels' autotuned tiles are kept on disk, so that a profile and a user's later
process run the same tiles (tuned afresh in three processes on an H200, one LLaMA-7B query took
1007.8-1051.4 ms: docs/benchmarks/autotune_spread.md).

Each case runs in a fresh process, as the choice is made when kernels.py is imported; a fake
sm_90 target stands in for the GPU, so Triton's own disk cache is exercised here without one.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("triton", reason="Triton is not installed (pip install -e '.[dev]')")

SRC = str(Path(__file__).resolve().parents[2] / "src")

# One process: import the kernels against a fake sm_90 target, ask the GEMV's autotuner for
# the choice of one shape (its "tuning" run favours config FAVOURED), print what happened.
PROCESS = """
import json, os, sys
import triton.runtime.autotuner as autotuner
from triton.backends.compiler import GPUTarget

class Active:
    def get_current_target(self):
        return GPUTarget("cuda", 90, 32)

class Driver:
    active = Active()

autotuner.driver = Driver()
from infermeter.engine import kernels

tuner = kernels._small_linear
favoured = int(sys.argv[1])
key = (4096, 4096, 1, "torch.bfloat16")
tuned = []

def bench():
    tuned.append(True)
    if favoured < 0:
        raise ValueError("a tuning run that fails")
    timings = [[1.0 if i == favoured else 2.0] for i in range(len(tuner.configs))]
    tuner.configs_timings = dict(zip(tuner.configs, timings))
    tuner.cache[key] = tuner.configs[favoured]

try:
    hit = tuner.check_disk_cache(key, tuner.configs, bench) if tuner.cache_results else None
    if hit is None:
        bench()
    chosen, error = tuner.configs.index(tuner.cache[key]), None
except ValueError as err:
    chosen, error = None, str(err)
import triton.testing
timed = {}
def do_bench(fn, warmup, rep, quantiles):
    timed.update(warmup=warmup, rep=rep)
    return [1.0 for _ in quantiles]
triton.testing.do_bench = do_bench
kernels._tile_bench(lambda: None, (0.5, 0.2, 0.8))
print(json.dumps({
    "bench": {"ours": getattr(tuner, "do_bench", None) is kernels._tile_bench, **timed},
    "keeps": tuner.cache_results, "hit": hit if error is None else None, "tuned": len(tuned),
    "chosen": chosen, "error": error, "note": kernels.tiles_note(),
}))
"""


def one_process(cache: Path, favoured: int, **env: str) -> dict[str, Any]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith(("TRITON_", "INFERMETER_"))}
    environ.update({"TRITON_CACHE_DIR": str(cache), "PYTHONPATH": SRC, **env})
    done = subprocess.run(
        [sys.executable, "-c", PROCESS, str(favoured)],
        env=environ, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any], dict[str, Any]]:
    """A cache folder in which a first process tuned (favouring tile 3), then a later process
    whose own timing would favour tile 0 asked for the same shape."""
    cache = tmp_path_factory.mktemp("triton-cache")
    first = one_process(cache, favoured=3)
    later = one_process(cache, favoured=0)
    return cache, first, later


def _copy(cache: Path, to: Path) -> Path:
    shutil.copytree(cache, to)
    return to


def test_a_later_process_runs_the_first_process_tiles(kept: tuple[Path, Any, Any]) -> None:
    cache, first, later = kept
    assert first["keeps"] and first["tuned"] == 1 and first["hit"] is False and first["chosen"] == 3
    assert str(cache) in first["note"] and "kept" in first["note"]
    assert later["hit"] is True and later["tuned"] == 0 and later["chosen"] == 3


def test_tiles_are_timed_briefly(kept: tuple[Path, Any, Any]) -> None:
    # a decode GEMV is 5-60 µs: 20 ms of runs times it; Triton's 25 + 100 ms a tile cost about
    # 0.1 s x 12 tiles for each shape before a profile's first point, on an empty cache
    bench = kept[1]["bench"]
    assert bench["ours"] and bench["warmup"] + bench["rep"] <= 30


def test_a_corrupt_kept_choice_is_tuned_again_and_named(
    kept: tuple[Path, Any, Any], tmp_path: Path
) -> None:
    cache = _copy(kept[0], tmp_path / "cache")
    (choice,) = cache.glob("*/*.autotune.json")
    choice.write_text("{")  # a write cut short
    after = one_process(cache, favoured=5)
    assert after["tuned"] == 1 and after["hit"] is False and after["chosen"] == 5
    assert "unusable" in after["note"] and "JSONDecodeError" in after["note"]


def test_a_cache_that_cannot_be_written_costs_one_tuning_and_is_named(
    kept: tuple[Path, Any, Any], tmp_path: Path
) -> None:
    (choice,) = kept[0].glob("*/*.autotune.json")
    (tmp_path / choice.parent.name).write_text("")  # a file where the choice's folder goes
    after = one_process(tmp_path, favoured=2)
    assert after["tuned"] == 1 and after["hit"] is False and after["chosen"] == 2
    assert "unusable" in after["note"] and "Error" in after["note"]


def test_a_failing_tuning_run_is_the_kernel_s_error_not_the_cache_s(tmp_path: Path) -> None:
    failed = one_process(tmp_path, favoured=-1)
    assert failed["error"] == "a tuning run that fails" and failed["tuned"] == 1
    assert "unusable" not in failed["note"]


def test_keep_tiles_0_tunes_in_its_process_and_says_so(tmp_path: Path) -> None:
    alone = one_process(tmp_path, favoured=4, INFERMETER_KEEP_TILES="0")
    assert not alone["keeps"] and alone["tuned"] == 1 and alone["chosen"] == 4
    assert "in each process (INFERMETER_KEEP_TILES=0)" in alone["note"]
    assert not list(tmp_path.glob("*/*.autotune.json"))


def test_triton_s_own_switch_is_reported_truthfully(
    kept: tuple[Path, Any, Any], tmp_path: Path
) -> None:
    # TRITON_CACHE_AUTOTUNING=1 keeps choices whatever INFERMETER_KEEP_TILES says: the note
    # says so, and a corrupt kept choice is guarded there too
    cache = _copy(kept[0], tmp_path / "cache")
    (choice,) = cache.glob("*/*.autotune.json")
    choice.write_text("[")
    env = {"INFERMETER_KEEP_TILES": "0", "TRITON_CACHE_AUTOTUNING": "1"}
    later = one_process(cache, favoured=1, **env)
    assert later["keeps"] and later["tuned"] == 1 and later["chosen"] == 1
    assert "kept in Triton's cache" in later["note"] and "unusable" in later["note"]
