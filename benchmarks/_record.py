"""Shared by the benchmark scripts: write a result as JSON plus a short Markdown table, and
read back the records that options such as --merge, --summary-from and --table-from name."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any, NoReturn

from infermeter.store.provenance import provenance

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks"


def signed_pct(x: float | None) -> str:
    """A table cell for a change in percent: '+1.23 %', or '-' where there is no figure."""
    return "-" if x is None else f"{x:+.2f} %"


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


def name_problem(name: str) -> str | None:
    """Why `name` cannot be a record's name (--name options), or None: it must be a plain
    file name, not a path, so that <out>/<name>.json lands in the --out folder."""
    if Path(name).name != name or name in ("", ".", ".."):
        return f"--name must be a file name (no folder), not {name!r}"
    return None


def record_problem(name: str, out: Path) -> str | None:
    """Why a run cannot write <out>/<name>.json (--name and --out options), or None: the
    name must be a plain file name (name_problem) and `out` a folder, or not yet made."""
    if problem := name_problem(name):
        return problem
    if out.exists() and not out.is_dir():
        return f"--out {out} is a file: it must be a folder for the record"
    return None


def read_record(
    path: Path, option: str, needs: tuple[str, ...] = (), each_model: tuple[str, ...] = ()
) -> dict[str, Any]:
    """The record (a JSON object) in `path`, given with `option`, with the keys in `needs`
    and, where `each_model` names keys, a non-empty `models` list whose every entry has them
    (what tells one script's record from another's).

    A path that is missing or unreadable, text that is not JSON, or JSON that is not such a
    record ends the script with one line naming the option, the path and the problem (exit
    2, as argparse's errors), not a traceback.
    """
    try:
        record = json.loads(path.read_text())
    except FileNotFoundError:
        _refuse(option, path, "no such file")
    except IsADirectoryError:
        _refuse(option, path, "a folder, not a record (a .json file)")
    except OSError as error:
        _refuse(option, path, f"cannot be read ({error.strerror or error})")
    except UnicodeDecodeError:
        _refuse(option, path, "not a text file, not a record (JSON)")
    except json.JSONDecodeError as error:
        _refuse(option, path, f"not valid JSON ({error.msg}, line {error.lineno} column "
                              f"{error.colno})")  # fmt: skip
    if not isinstance(record, dict):
        _refuse(option, path, f"JSON but not a record (an object), a {type(record).__name__}")
    missing = [key for key in needs if key not in record]
    if missing:
        _refuse(option, path, f"not the record this option takes: no {', '.join(missing)}")
    if each_model:
        models = record.get("models")
        if not isinstance(models, list) or not models:
            _refuse(option, path, "not the record this option takes: no list of models")
        for entry in models:
            lacks = [key for key in each_model if not isinstance(entry, dict) or key not in entry]
            if lacks:
                _refuse(option, path, "not the record this option takes: a model without "
                                      f"{', '.join(lacks)}")  # fmt: skip
    return record


def read_records(
    paths: list[Path], option: str, needs: tuple[str, ...] = (), each_model: tuple[str, ...] = ()
) -> list[dict[str, Any]]:
    """read_record of each of `paths`; the same file twice is refused the same way, since it
    would count its contents twice."""
    seen: dict[Path, Path] = {}
    for path in paths:
        if path.resolve() in seen:
            first = seen[path.resolve()]
            _refuse(option, path, f"given twice (as {first} too): name each record once")
        seen[path.resolve()] = path
    return [read_record(path, option, needs, each_model) for path in paths]


def _refuse(option: str, path: Path, problem: str) -> NoReturn:
    """End the script with one line: `option`'s `path` and its `problem` (exit 2)."""
    print(f"{Path(sys.argv[0]).name}: error: {option} {path}: {problem}", file=sys.stderr)
    raise SystemExit(2)


def _finite(value: Any) -> Any:
    """NaN and infinities become null, so the file is plain JSON any reader takes."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value
