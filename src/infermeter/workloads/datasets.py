"""Workloads from real datasets: Alpaca-format and GSM8K prompts, sampled with a seed.

Two formats, as a JSON list or JSON Lines (optionally gzipped), told apart by their fields:

- Alpaca: records of {instruction, input, output}. The self-instruct seed tasks keep their
  input/output pairs under `instances`; each instance is one prompt.
- GSM8K: records of {question, answer}.

Named datasets ("gsm8k", "alpaca", ...) are looked up in the folders of $INFERMETER_DATA, then
in the copies bundled with infermeter (infermeter/data), then in the `shared/data` folder beside
a source checkout. "alpaca" is the 52K alpaca_data.json where one of those folders holds it,
else the 175 seed tasks (with a note saying so). Any other value is a path to a file.

A Workload is N prompts drawn with a seed: without replacement when the dataset has at least
N records, with replacement (and a note) when it has fewer, as the paper's 4,096 from Alpaca's
seed tasks would need.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import string
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from infermeter.errors import UserError

Kind = Literal["alpaca", "gsm8k"]
DATA_ENV = "INFERMETER_DATA"
BUNDLED_DATA = Path(__file__).resolve().parents[1] / "data"

# Stanford Alpaca's prompts (tatsu-lab/stanford_alpaca, train.py PROMPT_DICT).
ALPACA_TEMPLATE = (
    "Below is an instruction that describes a task, paired with an input that provides further "
    "context. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:"
)
ALPACA_NO_INPUT_TEMPLATE = (
    "Below is an instruction that describes a task. Write a response that appropriately "
    "completes the request.\n\n### Instruction:\n{instruction}\n\n### Response:"
)
GSM8K_TEMPLATE = "Question: {question}\nAnswer:"

# name -> files, first match wins per file; "alpaca" falls back to the seed tasks.
NAMED: dict[str, tuple[str, ...]] = {
    "gsm8k": ("gsm8k_train.jsonl", "gsm8k_test.jsonl"),
    "gsm8k-train": ("gsm8k_train.jsonl",),
    "gsm8k-test": ("gsm8k_test.jsonl",),
    "alpaca-seed": ("alpaca_seed_tasks.jsonl",),
    "alpaca-52k": ("alpaca_data.json",),
}


def data_dirs() -> list[Path]:
    """Where named datasets and the LLaMA tokenizer are looked for, in order."""
    dirs = [Path(p).expanduser() for p in os.environ.get(DATA_ENV, "").split(os.pathsep) if p]
    dirs.append(BUNDLED_DATA)
    here = Path(__file__).resolve()
    if len(here.parents) > 4:  # src/infermeter/workloads/datasets.py -> <checkout>/../shared/data
        dirs.append(here.parents[4] / "shared" / "data")
    return dirs


def find_data_file(name: str) -> Path | None:
    """The first `name` (or `name`.gz) in data_dirs(), or None."""
    for folder in data_dirs():
        for candidate in (folder / name, folder / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def read_bytes(path: Path) -> bytes:
    """A file's bytes, un-gzipped when its name ends in .gz."""
    try:
        data = path.read_bytes()
    except OSError as error:
        raise UserError(f"cannot read {path}: {error.strerror or error}") from error
    if path.suffix == ".gz":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as error:
            raise UserError(f"{path} is not a valid gzip file: {error}") from error
    return data


@dataclass(frozen=True)
class Dataset:
    """Records of one format: Alpaca {instruction, input, output} or GSM8K {question, answer}."""

    name: str
    kind: Kind
    sources: tuple[str, ...]
    records: tuple[dict[str, str], ...]
    note: str | None = None

    def __len__(self) -> int:
        return len(self.records)

    def frame(self) -> pd.DataFrame:
        """The records as a table, one row per record, one column per field."""
        return pd.DataFrame(list(self.records))


def _parse(path: Path) -> list[Any]:
    text = read_bytes(path).decode("utf-8", errors="replace").strip()
    if not text:
        raise UserError(f"{path} is empty")
    if text.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise UserError(f"{path}: not valid JSON ({error})") from error
        return list(data)
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise UserError(f"{path}:{number}: not a JSON line ({error.msg})") from error
    return rows


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _records(path: Path, rows: list[Any]) -> tuple[Kind, list[dict[str, str]]]:
    if not all(isinstance(row, dict) for row in rows):
        raise UserError(f"{path}: every record must be a JSON object")
    first = rows[0]
    if "question" in first:
        kind: Kind = "gsm8k"
        needed = "question"
    elif "instruction" in first:
        kind, needed = "alpaca", "instruction"
    else:
        raise UserError(
            f"{path}: records need `instruction` (Alpaca) or `question` (GSM8K); the first has "
            f"{', '.join(sorted(first)) or 'no fields'}"
        )
    out: list[dict[str, str]] = []
    for number, row in enumerate(rows, start=1):
        if needed not in row:
            raise UserError(f"{path}: record {number} has no `{needed}` field")
        if kind == "gsm8k":
            out.append({"question": _text(row["question"]), "answer": _text(row.get("answer"))})
        elif isinstance(row.get("instances"), list):  # seed tasks: one prompt per instance
            for instance in row["instances"]:
                instance = instance if isinstance(instance, dict) else {}
                out.append(
                    {
                        "instruction": _text(row["instruction"]),
                        "input": _text(instance.get("input")),
                        "output": _text(instance.get("output")),
                    }
                )
        else:
            out.append(
                {
                    "instruction": _text(row["instruction"]),
                    "input": _text(row.get("input")),
                    "output": _text(row.get("output")),
                }
            )
    return kind, out


def read_dataset(paths: Sequence[str | Path], name: str | None = None) -> Dataset:
    """One dataset from one or more files of the same format."""
    kinds: set[str] = set()
    records: list[dict[str, str]] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.is_file():
            raise UserError(
                f"dataset file {path} not found; pass gsm8k, alpaca or a JSON/JSONL file"
            )
        kind, rows = _records(path, _parse(path))
        kinds.add(kind)
        records.extend(rows)
    if len(kinds) > 1:
        raise UserError("the files mix Alpaca and GSM8K records; pass one format at a time")
    if not records:
        raise UserError(f"no records in {', '.join(map(str, paths))}")
    first = Path(paths[0])
    label = name or first.name.split(".")[0]
    return Dataset(label, kinds.pop(), tuple(str(p) for p in paths), tuple(records))  # type: ignore[arg-type]


def load_dataset(source: str | Path) -> Dataset:
    """A named dataset (gsm8k, gsm8k-train, gsm8k-test, alpaca, alpaca-seed, alpaca-52k) or a
    file (JSON list or JSONL, .gz allowed) of Alpaca or GSM8K records."""
    key = str(source).strip().lower()
    if key == "alpaca":
        full = find_data_file("alpaca_data.json")
        if full is not None:
            return read_dataset([full], name="alpaca")
        seeds = load_dataset("alpaca-seed")
        note = (
            f"alpaca: the {len(seeds)} seed tasks (the 52K alpaca_data.json is not bundled; put "
            f"it in ${DATA_ENV} or pass its path as --dataset)"
        )
        return Dataset("alpaca", seeds.kind, seeds.sources, seeds.records, note)
    if key in NAMED:
        found = [find_data_file(name) for name in NAMED[key]]
        missing = [n for n, f in zip(NAMED[key], found, strict=True) if f is None]
        if missing:
            raise UserError(
                f"dataset {key}: {', '.join(missing)} not found in "
                f"{', '.join(map(str, data_dirs()))}; put it in a folder named by ${DATA_ENV} or "
                "pass the file's path"
            )
        return read_dataset([f for f in found if f is not None], name=key)
    path = Path(str(source)).expanduser()
    if not path.exists():
        raise UserError(
            f"dataset {str(source)!r} not found: pass a JSON/JSONL file or one of "
            f"{', '.join(['alpaca', *NAMED])}"
        )
    return read_dataset([path])


# ---- templates ------------------------------------------------------------------------------


def template_fields(template: str) -> set[str]:
    """The {fields} a format string uses; a UserError if it is malformed."""
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        raise UserError(f"template {template!r} is not a valid format string: {error}") from error


def resolve_template(template: str | None, kind: Kind) -> str | None:
    """A format string, or None for the dataset's default (Alpaca's two, GSM8K's one).

    Accepts a name (alpaca, gsm8k), @FILE, or the text itself, where a typed \\n or \\t (as a
    shell passes them) become a newline or a tab.
    """
    if template is None or template == "default":
        return None
    if template == "alpaca":
        if kind != "alpaca":
            raise UserError("the alpaca template needs Alpaca records ({instruction}, {input})")
        return None
    if template == "gsm8k":
        return GSM8K_TEMPLATE
    if template.startswith("@"):
        path = Path(template[1:]).expanduser()
        try:
            return path.read_text()
        except OSError as error:
            raise UserError(f"cannot read template file {path}: {error.strerror}") from error
    return template.replace("\\n", "\n").replace("\\t", "\t")


def render(record: dict[str, str], kind: Kind, template: str | None) -> str:
    """The prompt text of one record."""
    if template is None:
        if kind == "gsm8k":
            template = GSM8K_TEMPLATE
        else:
            template = ALPACA_TEMPLATE if record.get("input") else ALPACA_NO_INPUT_TEMPLATE
    return template.format(**record)


# ---- workloads ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Workload:
    """N prompts drawn from a dataset with a seed; `indices` are their dataset records."""

    dataset: str
    kind: Kind
    prompts: tuple[str, ...]
    indices: tuple[int, ...]
    seed: int
    template: str  # the format string, or "alpaca default" / "gsm8k default"
    with_replacement: bool
    available: int
    sources: tuple[str, ...] = ()
    notes: tuple[str, ...] = field(default_factory=tuple)

    def __len__(self) -> int:
        return len(self.prompts)

    @property
    def digest(self) -> str:
        """Identity of the prompts themselves (same prompts, same digest)."""
        h = hashlib.sha256()
        for prompt in self.prompts:
            h.update(prompt.encode())
            h.update(b"\0")
        return h.hexdigest()[:16]

    def describe(self) -> dict[str, Any]:
        """What a run records about its prompts: dataset, kind, count, records available, seed,
        template, sampling with replacement, sources and the prompts' digest."""
        return {
            "dataset": self.dataset,
            "kind": self.kind,
            "prompts": len(self.prompts),
            "available": self.available,
            "seed": self.seed,
            "template": self.template,
            "with_replacement": self.with_replacement,
            "sources": list(self.sources),
            "digest": self.digest,
        }

    def frame(self) -> pd.DataFrame:
        """One row per prompt: its index, the record it came from and its text."""
        return pd.DataFrame(
            {
                "prompt_index": range(len(self.prompts)),
                "record": self.indices,
                "prompt": self.prompts,
            }
        )


def sample_workload(
    dataset: Dataset, n: int, seed: int = 0, template: str | None = None
) -> Workload:
    """`n` prompts of `dataset`, drawn with `seed` (with replacement only if n > len)."""
    if n < 1:
        raise UserError(f"the number of prompts must be at least 1, got {n}")
    fmt = resolve_template(template, dataset.kind)
    if fmt is not None:
        unknown = template_fields(fmt) - set(dataset.records[0])
        if unknown:
            raise UserError(
                f"template uses {{{sorted(unknown)[0]}}}, which {dataset.name} records lack; "
                f"their fields: {', '.join('{' + k + '}' for k in dataset.records[0])}"
            )
    available = len(dataset)
    replace = n > available
    rng = np.random.default_rng(seed)
    indices = [int(i) for i in rng.choice(available, size=n, replace=replace)]
    notes = [dataset.note] if dataset.note else []
    if replace:
        notes.append(f"{dataset.name} has {available} records: {n} prompts drawn with replacement")
    prompts = tuple(render(dataset.records[i], dataset.kind, fmt) for i in indices)
    return Workload(
        dataset=dataset.name,
        kind=dataset.kind,
        prompts=prompts,
        indices=tuple(indices),
        seed=seed,
        template=fmt if fmt is not None else f"{dataset.kind} default",
        with_replacement=replace,
        available=available,
        sources=dataset.sources,
        notes=tuple(notes),
    )


def load_workload(
    source: str | Path, n: int = 4096, seed: int = 0, template: str | None = None
) -> Workload:
    """load_dataset + sample_workload in one call."""
    return sample_workload(load_dataset(source), n, seed, template)
