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


def infermeter_command(*args: str, installed: bool = False) -> list[str]:
    """`python -m infermeter` with this interpreter and path (the infermeter this script
    imported); with `installed`, the `infermeter` script on PATH where there is one (what a
    user runs after the install)."""
    found = shutil.which("infermeter") if installed else None
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
    """Run `command` in a process group of its own; with `stop_after_s`, send `stop_signal` to
    the group then (as Ctrl-C or `timeout` would) and give it `grace_s` to exit. A command
    past `timeout_s` is killed, with every process it started.
    Returns command, exit_code (or a string saying how it was killed), wall_s, the signal
    sent, its `note:` lines and the tail of its output."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    start = time.perf_counter()
    proc = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=cwd,
        start_new_session=True,
    )  # fmt: skip
    sent, output = None, None
    try:
        output, _ = proc.communicate(timeout=min(stop_after_s or timeout_s, timeout_s))
    except subprocess.TimeoutExpired:
        if stop_after_s is not None and stop_after_s < timeout_s:
            _signal_group(proc, stop_signal)
            sent = stop_signal.name
            with contextlib.suppress(subprocess.TimeoutExpired):
                output, _ = proc.communicate(timeout=min(grace_s, timeout_s - stop_after_s))
        if output is None:  # past its time, or deaf to the signal
            _signal_group(proc, signal.SIGKILL)
            try:
                output, _ = proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:  # a grandchild outside the group holds the pipe
                output = "(output lost: the pipe stayed open after SIGKILL)"
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
            line.split("note:", 1)[1].strip()
            for line in output.splitlines()
            if line.startswith("note:")
        ],
        "output_tail": output[-4000:],
        "output": output,
    }


def _signal_group(proc: subprocess.Popen[str], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)
