"""What would fusing a decode kernel away buy? The batch-1 step with that kernel removed.

decode_breakdown.md counts 10-12 dependent kernels a layer in a batch-1 decode step of the
fine-grained MoE models, and models.md puts their steps at 1.5-2.2x the bytes floor. Before
fusing any of them into a neighbour, this probe bounds the gain: it removes one kernel from
the step (its launch does nothing, so the answer is wrong) and times the step again. A fused
kernel still does the removed one's work, so the saving measured here is an upper bound.

Removals (each counts the calls it skipped, so a removal that never took shows 0 there; the
tokens may not change: with random weights the residual stream can decide them alone):
- qk_norm: the per-head RMSNorm of queries and keys (Qwen3);
- rope_store: the rotation of Q and K and the K/V cache write;
- combine: flash-decoding's merge of the key splits (the two-kernel path with its second
  kernel launched as nothing: the output is left unwritten, whatever the memory held, so
  the layers after it may route differently);
- route_align: the routing kernel (every later call returns the first call's experts and
  weights, so the expert GEMVs read the same experts each step);
- all: every removal above that the model has.

And variants that remove nothing, to time the engine's default against another path in the
same process (twice each, alternating with base):
- merge_fused: the splits merged by each group's last split program (INFERMETER_SPLIT_MERGE=1)
  instead of by a kernel of their own;
- qk_norm_kernel: the per-head qk-norm in a kernel of its own before rope_store, instead of
  inside it (Qwen3).

One process a model: the engine is built once (random weights, bf16, CUDA graphs, its own
choices made with every kernel in place), then for each variant its graphs are freed, the
removal is patched in, and the step is timed as decode_breakdown does (tpot of p = 480,
o = 65, median of 5 runs after one untimed). `base` runs first and last, to show drift.

Run (GPU): PYTHONPATH=src python benchmarks/kernel_removal_probe.py
           [--models qwen3-30b-a3b,gpt-oss-20b,llama-7b] [--repeats 5] [--name NAME]
           [--base-only]  (the engine as it is, three times: an A/B of settings read at
                           import, such as INFERMETER_PDL_TRIGGER, a process each)
Writes docs/benchmarks/<NAME>.json and .md (default kernel_removal_probe) with device, date
and commit.
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import DOCS, record_problem, write_result
from infermeter.backends.base import Point
from infermeter.backends.engine import EngineBackend
from infermeter.spec.catalog import get_spec
from models_bench import copy_bandwidth

MODELS = "qwen3-30b-a3b,gpt-oss-20b,llama-7b"
REMOVALS = ("qk_norm", "rope_store", "combine", "route_align")
OTHER_PATHS = ("merge_fused", "qk_norm_kernel")
PROMPT, NEW = 480, 65


SKIPPED: dict[str, int] = {}  # removal: calls it skipped since the last reset


def _nothing(name: str) -> Callable[..., None]:
    def call(*args: Any, **kwargs: Any) -> None:
        SKIPPED[name] = SKIPPED.get(name, 0) + 1

    return call


class _NoLaunch:
    """Stands in for a Triton kernel: `kernel[grid](...)` launches nothing."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __getitem__(self, grid: Any) -> Callable[..., None]:
        return _nothing(self.name)


def _first_call(fn: Callable[..., Any], name: str = "route_align") -> Callable[..., Any]:
    """fn, run once per argument shape; later calls return that call's output unchanged."""
    kept: dict[tuple[Any, ...], Any] = {}

    def call(logits: Any, *args: Any, **kwargs: Any) -> Any:
        key = (tuple(logits.shape), kwargs.get("layout"))
        if key not in kept:
            kept[key] = fn(logits, *args, **kwargs)
        else:
            SKIPPED[name] = SKIPPED.get(name, 0) + 1
        return kept[key]

    return call


@contextmanager
def removed(names: tuple[str, ...]) -> Iterator[None]:
    """The engine's kernels with `names` removed (REMOVALS), restored on exit."""
    from infermeter.engine import kernels, moe_kernels

    patches: list[tuple[Any, str, Any]] = []
    for name in names:
        if name == "qk_norm":
            patches.append((kernels, "ROPE_QK_NORM", False))
            patches.append((kernels, "qk_norm", _nothing(name)))
        elif name == "qk_norm_kernel":
            patches.append((kernels, "ROPE_QK_NORM", False))
        elif name == "merge_fused":
            patches.append((kernels, "SPLIT_MERGE", True))
        elif name == "rope_store":
            patches.append((kernels, "rope_store", _nothing(name)))
        elif name == "combine":
            patches.append((kernels, "SPLIT_MERGE", False))
            patches.append((kernels, "_attn_combine", _NoLaunch(name)))

        elif name == "route_align":
            patches.append((moe_kernels, "route_align", _first_call(moe_kernels.route_align)))
        else:
            known = ", ".join((*REMOVALS, *OTHER_PATHS))
            raise ValueError(f"unknown removal {name!r}; known: {known}")
    saved = [(module, attr, getattr(module, attr)) for module, attr, _ in patches]
    try:
        for module, attr, value in patches:
            setattr(module, attr, value)
        yield
    finally:
        for module, attr, value in saved:
            setattr(module, attr, value)


def applicable(name: str) -> tuple[str, ...]:
    """The removals that touch a kernel `name`'s decode step runs."""
    spec = get_spec(name)
    out = ["rope_store", "combine"]
    if spec.qk_norm == "head":
        out.insert(0, "qk_norm")
    if spec.moe is not None:
        out.append("route_align")
    return tuple(out)


def step(backend: EngineBackend, repeats: int) -> tuple[float, str]:
    """(median tpot_s, tokens digest) of p = PROMPT, o = NEW after one untimed run."""
    backend.measure(Point(PROMPT, NEW, 1, 0))
    runs = [backend.measure(Point(PROMPT, NEW, 1, t)) for t in range(1, repeats + 1)]
    return statistics.median(m.extra["tpot_s"] for m in runs), runs[-1].extra["tokens_sha"]


def one_model(name: str, repeats: int, bandwidth: float, base_only: bool = False) -> dict[str, Any]:
    spec = get_spec(name)
    backend = EngineBackend(device="cuda", dtype="bfloat16", cuda_graphs=True)
    backend.prepare(spec)
    info = backend.describe()
    floor_s = spec.decode_bytes(round(PROMPT + (NEW - 2) / 2), 1) / bandwidth
    names = applicable(name)
    others = ["merge_fused", *(["qk_norm_kernel"] if "qk_norm" in names else [])]
    ab = [("base", ()), *((n, (n,)) for n in others)] * 2
    variants = [*ab, *((n, (n,)) for n in names), ("all", names), ("base", ())]
    if base_only:
        variants = [("base", ())] * 3
    rows = []
    try:
        for label, what in variants:
            backend.release()  # frees the graphs: the next measure captures them afresh
            SKIPPED.clear()
            with removed(what):
                tpot_s, sha = step(backend, repeats)
            rows.append({"variant": label, "removed": list(what), "tpot_s": tpot_s,
                         "tokens_sha": sha, "calls_skipped": dict(SKIPPED)})  # fmt: skip
            print(f"{name} {label:12s} {tpot_s * 1e3:.4f} ms  tokens {sha}", flush=True)
    finally:
        backend.close()
        gc.collect()
    base_s = statistics.mean(r["tpot_s"] for r in rows if r["variant"] == "base")
    for r in rows:
        r["saving_pct"] = 100 * (1 - r["tpot_s"] / base_s)
        r["tokens_changed"] = r["variant"] != "base" and r["tokens_sha"] != rows[0]["tokens_sha"]
    return {"model": name, "layers": spec.num_layers, "floor_s": floor_s, "base_s": base_s,
            "base_over_floor": base_s / floor_s, "variants": rows,
            "backend_info": info}  # fmt: skip


def table(models: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    out = []
    for m in models:
        out.append((f"{m['model']} ({m['layers']} layers): base step / floor",
                    f"{m['base_s'] * 1e3:.3f} ms / {m['floor_s'] * 1e3:.3f} ms = "
                    f"{m['base_over_floor']:.2f}x", "-"))  # fmt: skip
        for r in m["variants"]:
            if r["variant"] == "base":
                continue
            left = r["tpot_s"] / m["floor_s"]
            skipped = r.get("calls_skipped", {})
            missed = [n for n in r["removed"] if n in REMOVALS and not skipped.get(n)]
            took = f" (never skipped: {', '.join(missed)})" if missed else ""
            what = {
                "merge_fused": "splits merged by their last program",
                "qk_norm_kernel": "qk-norm in a kernel of its own",
            }.get(r["variant"], f"without {r['variant']}")
            out.append((f"{m['model']}: {what}",
                        f"{r['tpot_s'] * 1e3:.3f} ms ({r['saving_pct']:+.1f} % saved, "
                        f"{left:.2f}x floor){took}", "-"))  # fmt: skip
        bases = ", ".join(
            f"{r['tpot_s'] * 1e3:.3f}" for r in m["variants"] if r["variant"] == "base"
        )
        out.append((f"{m['model']}: base, in the order run (drift)", f"{bases} ms", "-"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default=MODELS)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--base-only", action="store_true", help="time the engine as it is, nothing else"
    )
    parser.add_argument("--name", default="kernel_removal_probe")
    parser.add_argument("--out", type=Path, default=DOCS)
    args = parser.parse_args()
    if problem := record_problem(args.name, args.out):
        parser.error(problem)
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")
    names = [n.strip() for n in args.models.split(",") if n.strip()]
    if not names:
        parser.error("--models names no model (e.g. --models qwen3-30b-a3b)")
    for n in names:
        try:
            get_spec(n)
        except Exception as error:  # the catalog's own one-line message
            parser.error(str(error))
    import torch

    if not torch.cuda.is_available():
        parser.error("needs a CUDA GPU: it times the engine's Triton decode kernels")
    start = time.perf_counter()
    bandwidth = copy_bandwidth("cuda")
    models: list[dict[str, Any]] = []
    for n in names:  # the record is written after each model: a later failure keeps it
        models.append(one_model(n, args.repeats, bandwidth, args.base_only))
        result = {"copy_bandwidth_Bps": bandwidth, "prompt_tokens": PROMPT,
                  "output_tokens": NEW, "repeats": args.repeats, "models": models,
                  "wall_s": time.perf_counter() - start}  # fmt: skip
        path = write_result(args.name, result, table(models), args.out)
        print(f"wrote {path}", flush=True)


if __name__ == "__main__":
    main()
