"""Every name the benchmark scripts, examples and test scripts import from infermeter exists:
they run on a GPU or by hand, so a moved function would otherwise break them unseen (three
benchmarks' --quick modes failed that way after the package was reorganised)."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from paths import REPO, SCRIPTS

FILES = sorted(
    [*(REPO / "benchmarks").glob("*.py"), *(REPO / "examples").glob("*.py"), *SCRIPTS.glob("*.py")]
)


def infermeter_imports(path: Path) -> list[tuple[int, str, str | None]]:
    """(line, module, name or None for `import module`) of every infermeter import in `path`."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("infermeter"):
            found += [(node.lineno, node.module or "", a.name) for a in node.names]
        elif isinstance(node, ast.Import):
            found += [
                (node.lineno, a.name, None) for a in node.names if a.name.startswith("infermeter")
            ]
    return found


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_infermeter_name_exists(path: Path) -> None:
    missing = []
    for line, module, name in infermeter_imports(path):
        loaded = importlib.import_module(module)
        if name is not None and not hasattr(loaded, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ModuleNotFoundError:
                missing.append(f"{path.name}:{line}: {module} has no {name}")
    assert not missing, "\n".join(missing)
