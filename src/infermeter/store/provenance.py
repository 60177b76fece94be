"""Where a number came from: device, date, infermeter commit, software versions."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from infermeter.units import plural


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the infermeter checkout (or INFERMETER_COMMIT where git is absent)."""
    if os.environ.get("INFERMETER_COMMIT"):
        return os.environ["INFERMETER_COMMIT"]
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def package_version(name: str) -> str | None:
    """The installed version of distribution `name`, or None if it is not installed."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def cpu_name() -> str:
    """A readable CPU model name (platform.processor() is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cuda_device_name(device: str = "cuda") -> str | None:
    """Name of the CUDA device `device` ("cuda" = cuda:0, "cuda:N") when torch is installed
    and sees it; None otherwise. The ordinal is the one the backend runs on, so pricing reads
    the name of the GPU that does the work."""
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    head, _, tail = device.partition(":")
    index = int(tail) if head == "cuda" and tail.isdigit() else 0
    if index >= torch.cuda.device_count():
        return None
    return str(torch.cuda.get_device_name(index))


def device_description(gpu: bool = True, device: str = "cuda") -> str:
    """The name of GPU `device` when `gpu` and it is visible, else the CPU's."""
    return (
        gpu and cuda_device_name(device)
    ) or f"cpu: {cpu_name()} ({plural(os.cpu_count() or 1, 'core')})"


def utc_date() -> str:
    """Now, in UTC, as ISO 8601 to the second (2026-01-31T12:00:00+00:00)."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def provenance() -> dict[str, str | None]:
    """What a report records of where it was made: device, date, commit, and the versions of Python,
    infermeter, torch, transformers and numpy (None where absent)."""
    return {
        "device": device_description(),
        "date": utc_date(),
        "commit": git_commit(),
        "infermeter": package_version("infermeter"),
        "python": platform.python_version(),
        "torch": package_version("torch"),
        "transformers": package_version("transformers"),
        "numpy": package_version("numpy"),
    }


def version_line() -> str:
    """`infermeter --version`: the package version and, in a checkout, its commit."""
    from infermeter import __version__

    commit = git_commit()
    return f"infermeter {__version__}" + (f" (commit {commit[:10]})" if commit else "")
