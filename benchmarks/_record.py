"""Shared by the benchmark scripts: write a result as JSON plus a short Markdown table."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from infermeter.provenance import provenance

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


def write_result(
    name: str, result: dict[str, Any], rows: list[tuple[str, str, str]], out_dir: Path = DOCS
) -> Path:
    """Record `result` with device, date and commit; `rows` are (figure, value, goal)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {**provenance(), **result}
    path = out_dir / f"{name}.json"
    path.write_text(json.dumps(record, indent=2, default=str) + "\n")
    lines = [
        f"# {name}",
        "",
        f"Device: {record['device']}; date: {record['date']}; commit: {record['commit']}.",
        "",
        "| figure | value | goal |",
        "|---|---|---|",
        *(f"| {figure} | {value} | {goal} |" for figure, value, goal in rows),
        "",
        f"Written by `benchmarks/{Path(sys.argv[0]).name}`; rerun it to refresh.",
        "",
    ]
    (out_dir / f"{name}.md").write_text("\n".join(lines))
    return path
