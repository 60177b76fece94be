"""How many threads a CPU run gets: the cores other work leaves free.

PyTorch's CPU kernels split each operation over `torch.get_num_threads()` threads (all cores by
default) that wait for each other at every operation's end. When other processes keep some
cores busy, those threads are preempted in turn and every operation waits for the slowest:
measured on a 2-core machine with two busy processes beside it, GPT-2's decode ran 1.4x slower
with 2 threads than with 1, and a whole `infermeter profile gpt2` took 184 s against 76 s. So a
CPU run counts the processes running right now (the kernel's run queue, /proc/loadavg) and
takes the cores they leave, at least one. OMP_NUM_THREADS, when set, is left to decide.
"""

from __future__ import annotations

import os
import statistics
import time
from pathlib import Path

from infermeter.units import plural


def running_elsewhere(samples: int = 9, interval_s: float = 0.02) -> int | None:
    """Tasks running or ready to run besides this one (median over a few reads of the run
    queue); None where the kernel does not say (not Linux)."""
    counts = []
    for i in range(samples):
        try:
            field = Path("/proc/loadavg").read_text().split()[3]
            counts.append(int(field.split("/")[0]) - 1)  # this process is one of them
        except (OSError, IndexError, ValueError):
            return None
        if i + 1 < samples:
            time.sleep(interval_s)
    return max(0, int(statistics.median(counts)))


def cpu_threads(cores: int | None = None) -> tuple[int | None, str]:
    """(threads for a CPU run, why); None threads: leave the framework's default."""
    if os.environ.get("OMP_NUM_THREADS"):
        return None, f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}"
    cores = cores or os.cpu_count() or 1
    busy = running_elsewhere()
    if busy is None:
        return None, "run queue unknown: the framework's default"
    threads = max(1, min(cores, cores - busy))
    return threads, f"{plural(cores, 'core')}, {busy} other task(s) running at the start"
