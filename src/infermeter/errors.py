"""User-facing errors (one line that names the problem and the fix, exit code 2), SIGTERM
unwound like Ctrl-C, and the one out-of-memory test that the engine, the hf backend and the
energy sweep share."""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

# The CPU allocator's failure is a plain RuntimeError: its message is all there is to go on.
_CPU_ALLOCATOR = "can't allocate memory"


class UserError(Exception):
    """A mistake in what the user asked for (bad model name, bad file, bad grid).

    The CLI prints `str(error)` as one line and exits with code 2; nothing stored is touched.
    """

    exit_code = 2


def not_both(first: str, second: str, why: str, fix: str = "") -> UserError:
    """The one-line refusal of two inputs that exclude each other: "give FIRST or SECOND, not
    both: WHY[; FIX]". Returned, to be raised where the clash is found."""
    return UserError(f"give {first} or {second}, not both: {why}" + (f"; {fix}" if fix else ""))


class ResumeRefused(UserError):
    """A stored run this process will not resume, found before it measured anything (its
    points were measured on another engine path: experiments.run.path_changed). The run keeps
    the status it had (experiments.run.Resumable.open), not "interrupted": nothing of it was
    cut short."""


class DoesNotFit(UserError):
    """A model that does not fit in the memory of the device(s) asked for; the message names
    the fix (a smaller model or dtype, more shards). The energy sweep records it as infeasible
    (the paper's Table II) instead of stopping."""


class DeviceOutOfMemory(RuntimeError):
    """Out of memory in another process (an engine rank), as the parent process sees it: the
    rank's own exception cannot cross the process boundary, so this carries its first line."""


def is_oom(error: BaseException) -> bool:
    """True when `error`, or an exception it was raised from, is running out of memory.

    The one test used by the engine, the hf backend and the energy sweep: torch's
    OutOfMemoryError (a CUDA allocation), the CPU allocator's RuntimeError, MemoryError, and
    DeviceOutOfMemory from an engine rank. torch is looked up, never imported.
    """
    torch = sys.modules.get("torch")
    kinds: tuple[type[BaseException], ...] = (MemoryError, DeviceOutOfMemory)
    if torch is not None and isinstance(getattr(torch, "OutOfMemoryError", None), type):
        kinds = (*kinds, torch.OutOfMemoryError)
    seen: BaseException | None = error
    visited: set[int] = set()
    while seen is not None and id(seen) not in visited:
        visited.add(id(seen))
        if isinstance(seen, kinds):
            return True
        if isinstance(seen, RuntimeError) and _CPU_ALLOCATOR in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def oom_line(error: BaseException) -> str:
    """The line of an out-of-memory error worth showing (at most 300 characters)."""
    text = str(error).strip()
    lines = [line for line in text.splitlines() if "memory" in line.lower()]
    return (lines[0] if lines else text.splitlines()[0] if text else type(error).__name__)[:300]


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or `timeout`'s stop), unwound like Ctrl-C so that every
    `finally` runs: runs are marked interrupted, meters stopped, power limits restored."""


def _on_sigterm(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the unwinding
    raise Terminated


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """SIGTERM raises Terminated in the main thread while inside (the CLI's verbs run so)."""
    if threading.current_thread() is not threading.main_thread():
        yield  # handlers can only be set from the main thread
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        if previous is not None:  # None: set from C, and Python cannot put it back
            signal.signal(signal.SIGTERM, previous)
