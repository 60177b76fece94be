"""Files and folders a user names for output: checked before the work, one line if not.

`check_output` is called when a verb starts, so a missing folder or a read-only one is said
before minutes of profiling, not after; `writing` wraps the write itself, so whatever the
file system says then (disk full, a folder made read-only meanwhile) is one line too.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from infermeter.errors import UserError


def _parent(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")


# the file a folder's error suggests, by what is written (a table's otherwise)
_EXAMPLES = {"model file": "model.json", "HELM file": "helm.json", "report": "report.html",
             "figure": "figure.png"}  # fmt: skip


def check_output(path: str | os.PathLike[str], what: str = "output file") -> Path:
    """`path` as a Path once it is known a file can be written there; a UserError naming the
    path, what is wrong and the fix otherwise."""
    path = Path(path)
    parent = _parent(path)
    if path.is_dir():
        example = path / _EXAMPLES.get(what, "out.csv")
        raise UserError(f"{what} {path} is a folder; pass a file path, e.g. {example}")
    if not parent.exists():
        raise UserError(
            f"cannot write {what} {path}: folder {parent} does not exist; create it "
            f"(mkdir -p {parent}) or pass another path"
        )
    if not parent.is_dir():
        raise UserError(f"cannot write {what} {path}: {parent} is a file, not a folder")
    target = path if path.exists() else parent
    if not os.access(target, os.W_OK):
        raise UserError(
            f"cannot write {what} {path}: {target} is read-only; pass a path in a writable folder"
        )
    return path


def check_output_folder(path: str | os.PathLike[str], what: str = "folder") -> Path:
    """A folder to write files into: made if missing (with its parents) where that is
    possible, else one line saying why not."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is a file; pass a folder path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot make {what} {path}: {_reason(exc)}; pass another path") from None
    if not os.access(path, os.W_OK):
        raise UserError(f"{what} {path} is read-only; pass a writable folder")
    return path


def _reason(exc: OSError) -> str:
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return "read-only or not permitted"
    return exc.strerror or str(exc)


@contextmanager
def writing(path: str | os.PathLike[str], what: str = "output file") -> Iterator[Path]:
    """Check `path`, then turn any OSError of the write inside into one UserError line."""
    target = check_output(path, what)
    try:
        yield target
    except OSError as exc:
        raise UserError(
            f"cannot write {what} {target}: {_reason(exc)}; pass another path"
        ) from None


def check_outputs(*paths: str | os.PathLike[str] | tuple[Any, str] | None) -> None:
    """Each output path given can be written: said before any work, in one line. A path may
    come as (path, what it is), as check_output takes it ("HELM file", "figure")."""
    for item in paths:
        path, what = item if isinstance(item, tuple) else (item, "output file")
        if path is not None:
            check_output(path, what)


def image_format(fmt: str) -> str:
    """A figure format asked for (--format): png or svg, else a UserError."""
    if fmt not in ("png", "svg"):
        raise UserError(f"--format must be png or svg, not {fmt!r}")
    return fmt
