"""One process at a time measures a run: a lock per run beside the store.

Two identical commands on one store would otherwise measure every point twice (both resume the
same run, both find the same points missing). So the process that opens a run holds an
exclusive `fcntl` record lock on one byte of a sidecar file, `STORE.lock`, at an offset drawn
from the run's key; a second process asking for the same run is refused at once, and the store's
`run_owners` table names the holder (pid, host, since when, the command). The kernel drops the
lock when its process ends, however it ends (Ctrl-C, SIGKILL, a crash), so the lock of a dead
process is simply taken over by the next one: there is nothing stale to clean up.

POSIX record locks belong to a process, not to a file descriptor, and closing any descriptor of
the file drops all of them; so each lock file is opened once per process and kept open while
any of its locks is held, and a second claim of a held run from the same process is refused
here, where the kernel would allow it.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import threading
from dataclasses import dataclass
from pathlib import Path

_GUARD = threading.Lock()
_FILES: dict[str, int] = {}  # lock file (real path) -> its one descriptor in this process
_HELD: dict[str, set[int]] = {}  # lock file -> offsets held by this process


class RunBusy(Exception):
    """The run is owned by another process (or another store object of this one)."""

    def __init__(self, here: bool) -> None:
        super().__init__("run owned elsewhere")
        self.here = here  # True: by this very process


def lock_path(store: Path) -> Path:
    """The sidecar lock file of a store: `STORE.lock` beside it."""
    return store.with_name(store.name + ".lock")


def _offset(key: str) -> int:
    """A byte of the lock file per run key (60 bits: collisions are out of reach)."""
    return int(hashlib.sha256(key.encode()).hexdigest()[:15], 16)


@dataclass(frozen=True)
class Lease:
    """A held run lock; `release` it once (Store.close does)."""

    file: str
    offset: int

    def release(self) -> None:
        """Unlock the run (no-op if released already); the lock file closes with its last lease."""
        with _GUARD:
            held = _HELD.get(self.file, set())
            if self.offset not in held:
                return
            fd = _FILES[self.file]
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, self.offset, os.SEEK_SET)
            held.discard(self.offset)
            if not held:
                os.close(fd)
                del _FILES[self.file], _HELD[self.file]


def acquire(store: Path, key: str) -> Lease | None:
    """Own run `key` of `store`; RunBusy if another process (or this one) does. None where
    no lock file can be made beside the store (then nothing is locked)."""
    path = lock_path(store)
    offset = _offset(key)
    real = os.path.realpath(path)
    with _GUARD:
        if offset in _HELD.get(real, set()):
            raise RunBusy(here=True)
        if real in _FILES:  # never a second descriptor: closing it would drop every lock
            fd = _FILES[real]
        else:
            try:
                fd = os.open(real, os.O_RDWR | os.O_CREAT, 0o666)
            except OSError:
                return None
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
        except OSError:  # EAGAIN / EACCES: held by another process
            if real not in _FILES:
                os.close(fd)  # this process holds no lock on the file: nothing dropped
            raise RunBusy(here=False) from None
        _FILES[real] = fd
        _HELD.setdefault(real, set()).add(offset)
        return Lease(real, offset)


def is_owned(store: Path, key: str) -> bool | None:
    """Whether some live process owns run `key` (None where that cannot be told: no lock
    file, or one that cannot be opened)."""
    path = lock_path(store)
    offset = _offset(key)
    real = os.path.realpath(path)
    with _GUARD:
        if offset in _HELD.get(real, set()):
            return True
        if real in _FILES:
            fd, mine = _FILES[real], True
        else:
            try:
                fd, mine = os.open(real, os.O_RDONLY), False
            except OSError:
                return None
        try:
            fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
        except OSError:
            return True
        else:
            fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset, os.SEEK_SET)
            return False
        finally:
            if not mine:
                os.close(fd)
