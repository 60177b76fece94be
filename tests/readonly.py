"""Read-only folders and files for tests, also where the tests run as root.

Permission bits do not stop root, so as root the immutable attribute (chattr +i, which stops
root too) is set as well; where neither can make a path read-only the test is skipped.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


def _chattr(flag: str, paths: list[Path]) -> bool:
    try:
        done = subprocess.run(
            ["chattr", flag, *map(str, paths)], capture_output=True, check=False, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


@contextmanager
def read_only(*paths: Path) -> Iterator[None]:
    """Make `paths` (folders and files) read-only for the duration, for root too."""
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in paths}
    for path in paths:
        path.chmod(0o555 if path.is_dir() else 0o444)
    immutable = False
    try:
        if os.geteuid() == 0:
            immutable = _chattr("+i", list(paths))
            if not immutable:
                pytest.skip("running as root without chattr: no path can be made read-only")
        yield
    finally:
        if immutable:
            _chattr("-i", list(paths))
        for path, mode in modes.items():
            path.chmod(mode)
