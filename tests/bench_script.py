"""Run benchmarks/ scripts as a user would (one-line refusals), and their kernels in Triton's
interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from paths import REPO


def assert_refused(script: str, args: list[str], says: str, out_dir: Path) -> None:
    """`python benchmarks/SCRIPT ARGS --out OUT_DIR` fails, saying `says` on stderr, with no
    traceback and no record written."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, str(REPO / "benchmarks" / script), *args, "--out", str(out_dir)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and says in done.stderr, done.stderr
    assert "Traceback" not in done.stderr and not list(out_dir.iterdir())


def interpreted(code: str, *args: str, timeout_s: float = 600) -> str:
    """stdout of `python -c CODE ARGS...` in Triton's interpreter (TRITON_INTERPRET=1 must be
    set before Triton is imported, hence a process of its own), asserting it exited 0."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO / "src")}
    done = subprocess.run(
        [sys.executable, "-c", code, *args],
        env=env, capture_output=True, text=True, timeout=timeout_s, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout
