"""Shared by the benchmark scripts: run an `infermeter` command line as a user would, in a
process of its own, optionally stopped by a signal after a while, and keep what it printed."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def infermeter_command(*args: str) -> list[str]:
    """The installed `infermeter` script where one is on PATH (what a user runs after the
    install), else `python -m infermeter` with this interpreter (the checkout's src/)."""
    found = shutil.which("infermeter")
    return [found, *args] if found else [sys.executable, "-m", "infermeter", *args]


def shown(command: list[str]) -> str:
    """The command line as a user types it."""
    head = 3 if command[1:3] == ["-m", "infermeter"] else 1
    return " ".join(["infermeter", *command[head:]])


def run_command(
    command: list[str],
    *,
    timeout_s: float,
    stop_after_s: float | None = None,
    stop_signal: signal.Signals = signal.SIGINT,
    grace_s: float = 120.0,
    cwd: Path | None = None,
) -> dict[str, Any]:
    """Run `command`; with `stop_after_s`, send `stop_signal` then (as Ctrl-C or `timeout`
    would) and give it `grace_s` to exit. A command past `timeout_s` is killed.
    Returns command, exit_code (or a string saying how it was killed), wall_s, the signal
    sent, its `note:` lines and the tail of its output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd
    )
    sent, output = None, None
    try:
        output, _ = proc.communicate(timeout=min(stop_after_s or timeout_s, timeout_s))
    except subprocess.TimeoutExpired:
        if stop_after_s is not None and stop_after_s < timeout_s:
            proc.send_signal(stop_signal)
            sent = stop_signal.name
            with contextlib.suppress(subprocess.TimeoutExpired):
                output, _ = proc.communicate(timeout=grace_s)
        if output is None:  # past its time, or deaf to the signal
            proc.kill()
            output, _ = proc.communicate()
            sent = f"{sent + ', then ' if sent else ''}SIGKILL"
    code: int | str = proc.returncode
    if sent and "SIGKILL" in sent:
        code = f"killed ({sent})"
    return {
        "command": shown(command),
        "exit_code": code,
        "wall_s": time.perf_counter() - start,
        "signal": sent,
        "notes": [
            line.split("note:", 1)[1].strip() for line in output.splitlines() if "note:" in line
        ],
        "output_tail": output[-4000:],
        "output": output,
    }
