"""Shared by the benchmark scripts: write a result as JSON plus a short Markdown table."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from infermeter.store.provenance import provenance

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


def write_result(
    name: str, result: dict[str, Any], rows: list[tuple[str, str, str]], out_dir: Path = DOCS
) -> Path:
    """Record `result` with device, date and commit; `rows` are (figure, value, goal)."""
    return write_record(name, {**provenance(), **result}, rows, out_dir)


def write_record(
    name: str,
    record: dict[str, Any],
    rows: list[tuple[str, str, str]],
    out_dir: Path = DOCS,
    sections: list[str] = (),  # type: ignore[assignment]
) -> Path:
    """Write a record that already carries its device, date and commit (e.g. one re-merged
    on another machine) as <name>.json and <name>.md; `sections` are Markdown lines that
    follow the table."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(_finite(record), indent=2, default=str) + "\n")
    lines = [
        f"# {name}",
        "",
        f"Device: {record['device']}; date: {record['date']}; commit: {record['commit']}.",
        "",
        "| figure | value | goal |",
        "|---|---|---|",
        *(f"| {figure} | {value} | {goal} |" for figure, value, goal in rows),
        *sections,
        "",
        f"Written by `benchmarks/{Path(sys.argv[0]).name}`; rerun it to refresh.",
        "",
    ]
    (out_dir / f"{name}.md").write_text("\n".join(lines))
    return path


def _finite(value: Any) -> Any:
    """NaN and infinities become null, so the file is plain JSON any reader takes."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
