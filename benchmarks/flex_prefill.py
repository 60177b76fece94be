"""The engine's prefill of soft-capped and sink layers: FlexAttention against the explicit path.

engine/flex.py serves the prefill of layers that soft-cap (Gemma-2) or have sinks (gpt-oss)
with compiled FlexAttention where its self-check passes, instead of attention.attend's
explicit float32 scores in blocks of queries (benchmarks/explicit_attention.py measured one
layer's attention taking 33-94 % less time at these shapes, 18 % more at one). This measures
the whole engine, per model cut to --layers layers (random weights, bf16, without CUDA
graphs, as prefill_parity), in two arms in one process, alternating:
- "explicit": those layers through attention.blocked_attend (model.flex_prefill removed);
- "flex": the engine as it chose (its FlexPrefill; with --quick an uncompiled one);
the prefill time of a 1-token generation at each p (the engine's CUDA-event timing, least of
--trials rounds, prefill_parity.prefill_times). Figures: each arm's time, flex over explicit
at each p, and the two arms' agreement on one prompt of --check-p tokens: the largest
difference of the last position's logits over the largest logit, and the share of positions
whose greedy next token is the same; and per size, one layer of each kind (random q, k, v:
engine/flex.flex_differences), where no MoE routing amplifies a difference. With --float32
the engine runs in float32 (written as flex_prefill_float32): agreement without bf16
rounding, to tell flex's differences from routing's.

Run (GPU): PYTHONPATH=src python benchmarks/flex_prefill.py [--models gemma-2-9b,gpt-oss-20b]
           [--layers 8] [--sizes 33,97,...]
CPU check (tiny specs, float32, flex unfused, times meaningless): ... --quick
With a GPU also, per arm in a fresh engine with CUDA graphs, the peak memory of setting up a
prefill of --graph-p tokens (its warm-up and captures; at 2c856e4 gpt-oss-20b's default profile
ran out of memory there, 96 GiB in graph pools).
Writes docs/benchmarks/flex_prefill.json and .md (or _float32, _quick) with device, date and
commit.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import signed_pct, write_result
from decode_breakdown import truncated
from infermeter.backends.engine import EngineBackend
from infermeter.engine.flex import (
    SWITCH,
    FlexPrefill,
    first_line,
    flex_differences,
    prefill_mode,
)
from infermeter.errors import UserError
from infermeter.spec.catalog import resolve_spec
from prefill_parity import engine_cli, prefill_times

GPU_MODELS = "gemma-2-9b,gpt-oss-20b"
QUICK_MODELS = "tiny-gemma2,tiny-gpt-oss"
# Each model's within its context. 33-128: either side of 128 queries, under which compiled flex
# took its decoding kernel until 2d6fae5 (engine/flex.py PREFILL_KERNEL).
GPU_SIZES = (33, 97, 127, 128, 481, 496, 1841, 1856, 4097, 8191, 16097)
GRAPH_P = 16097  # a long prompt's prefill graph: the peak memory of its capture per arm
QUICK_SIZES = (9, 16, 33)
ARMS = ("explicit", "flex")


def agreement(engine: Any, flex: Any, p: int) -> dict[str, float]:
    """Both arms' float32 logits of one random prompt of p tokens (Engine.score): the
    largest difference at the last position over its largest logit, and the share of the
    p positions whose argmax agrees."""
    tokens = engine.random_prompts(1, p)
    out = {}
    for which in ARMS:
        engine.model.flex_prefill = flex if which == "flex" else None
        out[which] = engine.score(tokens)[0]
    engine.model.flex_prefill = flex
    last = out["explicit"][-1]
    return {
        "last_logits_rel_diff": float((out["flex"][-1] - last).abs().max() / last.abs().max()),
        "greedy_agreement": float(
            (out["flex"].argmax(-1) == out["explicit"].argmax(-1)).float().mean()
        ),
    }


def layer_differences(engine: Any, flex: Any, p: int) -> dict[str, Any]:
    """engine/flex.flex_differences at p for the engine's model (per kind of layer and the
    cap-2 check case), or {"error": its first line} where flex fails to compile or run."""
    try:
        return flex_differences(flex, engine.model, engine.device, engine.dtype, p)
    except Exception as error:  # kept with the row's timings, not lost with them
        return {"error": first_line(error)}


def model_sizes(spec: Any, given: list[int] | None, quick: bool) -> list[int]:
    """The prompt sizes measured for `spec`: those given (checked against every model's
    context up front), else the defaults that leave room in its context for one output
    token (Gemma-2's context is 8,192)."""
    if given:
        return given
    return [p for p in (QUICK_SIZES if quick else GPU_SIZES) if p < spec.max_context]


def graph_peak_gb(spec: Any, flex: Any, p: int) -> dict[str, Any]:
    """Per arm, the peak GPU memory (GB, torch's allocated) of setting up a CUDA-graph
    prefill of p tokens and one output token (Engine.warm_point: the warm-up run and the
    captures), in a fresh engine each (random weights, bf16), and whether its prefill graph
    was captured: the engine's limit (generate.PREFILL_GRAPH_MAX_TOKENS) is raised to p for
    it, so this says what capturing a long prompt costs each arm. Out of memory is recorded
    as such."""
    from infermeter.backends.base import Point
    from infermeter.engine import generate
    from infermeter.errors import is_oom

    out: dict[str, Any] = {}
    limit = generate.PREFILL_GRAPH_MAX_TOKENS  # the engine captures up to it: raised here
    generate.PREFILL_GRAPH_MAX_TOKENS = max(limit, p)
    for which in ARMS:
        backend = EngineBackend(device="cuda", dtype="bfloat16")
        backend.prepare(spec)
        engine = backend._engine
        engine.model.flex_prefill = flex if which == "flex" else None
        try:
            torch.cuda.reset_peak_memory_stats()
            try:
                engine.warm_point(Point(p, 1, 1))
                peak = round(torch.cuda.max_memory_allocated() / 1e9, 2)
                out[which] = {"peak_gb": peak, "prefill_graph": engine._prefill is not None}
            except Exception as error:
                if not is_oom(error):
                    raise
                out[which] = {"peak_gb": None, "prefill_graph": False, "out_of_memory": True}
        finally:
            backend.close()
            gc.collect()
            torch.cuda.empty_cache()
    generate.PREFILL_GRAPH_MAX_TOKENS = limit
    return out


def one_model(
    name: str,
    sizes: list[int],
    layers: int,
    device: str,
    trials: int,
    check_p: int,
    graph_p: int = 0,
    float32: bool = False,
) -> dict[str, Any]:
    spec = truncated(resolve_spec(name), layers)
    dtype = "float32" if float32 else "bfloat16" if device == "cuda" else None
    if device == "cuda":  # the engine's choice under auto (its default), with why not
        os.environ.setdefault(SWITCH, "auto")
        from torch import _dynamo

        _dynamo.reset()  # each model's compiles counted from zero (RECOMPILE_LIMIT)
    backend = EngineBackend(device=device, dtype=dtype, cuda_graphs=False)  # as prefill_parity
    backend.prepare(spec)
    engine = backend._engine
    row: dict[str, Any] = {"model": name, "spec": spec.name, "layers": spec.num_layers}
    row["engine_choice"] = engine.prefill_attention
    row["engine_note"] = engine.prefill_attention_note
    row["dtype"] = str(engine.dtype).removeprefix("torch.")
    if row["engine_choice"] is None:
        backend.close()
        why = "no layer soft-caps or has sinks: flex would serve none of its layers"
        return row | {"failed": {"flex": why}}
    flex = engine.model.flex_prefill
    if flex is None and device == "cpu":
        flex = FlexPrefill(compiled=False)  # the CPU check: the same math, unfused
    if flex is None:
        backend.close()
        return row | {"failed": {"flex": f"the engine did not take flex: {row['engine_note']}"}}

    @contextlib.contextmanager
    def arm(which: str) -> Iterator[None]:
        engine.model.flex_prefill = flex if which == "flex" else None
        try:
            yield
        finally:
            engine.model.flex_prefill = flex

    try:
        times, failed = prefill_times(backend, sizes, ARMS, arm, trials)
        with torch.inference_mode():
            row |= agreement(engine, flex, min(check_p, spec.max_context - 1))
            # the layers alone, on random q, k, v: an MoE model's routing turns a small
            # difference in attention into a large one in the logits (decode_agreement.md)
            row["layer_rel_diff"] = [layer_differences(engine, flex, p) for p in sizes]
    finally:
        backend.close()
    if graph_p and graph_p < spec.max_context:
        row["graph_p"] = graph_p
        row["graph_setup"] = graph_peak_gb(spec, flex, graph_p)
    elif graph_p:
        row["graph_setup_skipped"] = (
            f"--graph-p {graph_p} leaves no room in its context of {spec.max_context} tokens"
        )
    row["sizes"], row["failed"] = sizes, failed
    for which in ARMS:
        row[f"{which}_prefill_s"] = [times[which][p] for p in sizes]
    row["flex_over_explicit_pct"] = [
        None if e is None or f is None else (f / e - 1) * 100
        for e, f in zip(row["explicit_prefill_s"], row["flex_prefill_s"], strict=True)
    ]
    return row


def worst(cases: dict[str, Any]) -> str:
    """The largest difference among a model's own kinds and the check case's, or the error."""
    if "error" in cases:
        return str(cases["error"])
    own = [x for name, x in cases.items() if not name.startswith("check: ")]
    check = [x for name, x in cases.items() if name.startswith("check: ")]
    return f"{max(own):.2e}; {max(check):.2e}"


def table(rows: list[dict[str, Any]]) -> list[tuple[str, str, str]]:
    out = []
    for r in rows:
        name = r["spec"] if "@" in r["spec"] else f"{r['spec']}@{r['layers']}L"  # gemma-2-9b@8L
        out.append((f"{name}: prefill attention the engine chose", str(r["engine_choice"]), "flex"))
        if "sizes" not in r:
            out.append((f"{name}: not measured", str(r["failed"]), "-"))
            continue
        cells = ", ".join(
            "p {}: {} / {} ({})".format(
                p,
                "-" if e is None else f"{e * 1e3:.1f}",
                "-" if f is None else f"{f * 1e3:.1f}",
                signed_pct(x),
            )
            for p, e, f, x in zip(
                r["sizes"], r["explicit_prefill_s"], r["flex_prefill_s"],
                r["flex_over_explicit_pct"], strict=True,
            )
        )  # fmt: skip
        out.append((f"{name}: prefill ms explicit / flex (flex over explicit)", cells, "-"))
        agree = f"{r['last_logits_rel_diff']:.2e}; greedy tokens {r['greedy_agreement']:.1%}"
        out.append((f"{name}: flex vs explicit logits, largest difference / largest", agree, "-"))
        if "layer_rel_diff" in r:
            layers = ", ".join(
                f"p {p}: {worst(x)}" for p, x in zip(r["sizes"], r["layer_rel_diff"], strict=True)
            )
            label = f"{name}: flex vs explicit, one layer on random q, k, v, largest difference"
            out.append((f"{label} / largest (its kinds; the cap-2 check case)", layers, "-"))
        if "graph_setup" in r:
            g = r["graph_setup"]
            cell = " / ".join(
                "out of memory"
                if g[a].get("out_of_memory")
                else f"{g[a]['peak_gb']} GB" + ("" if g[a]["prefill_graph"] else " (no graph)")
                for a in ARMS
            )
            label = f"{name}: peak memory setting up a graph prefill of p {r['graph_p']}"
            out.append((f"{label}, explicit / flex", cell, "-"))
        if "graph_setup_skipped" in r:
            out.append((f"{name}: graph prefill memory", r["graph_setup_skipped"], "-"))
        if r["failed"]:
            out.append((f"{name}: failed", str(r["failed"]), "-"))
    return out


def main() -> None:
    def more(parser: argparse.ArgumentParser) -> None:
        parser.add_argument("--sizes", default=None, help=f"prompt sizes ({GPU_SIZES})")
        parser.add_argument("--check-p", type=int, default=1841, help="the agreement prompt")
        parser.add_argument(
            "--graph-p",
            type=int,
            default=GRAPH_P,
            help="prompt of the graph memory check (0: none)",
        )
        parser.add_argument(
            "--float32",
            action="store_true",
            help="GPU in float32, not bfloat16: the arms' agreement without bf16 rounding "
            "(written as flex_prefill_float32)",
        )

    parser, args, device, models = engine_cli(
        __doc__ or "", "flex_prefill", GPU_MODELS, QUICK_MODELS, more
    )
    try:  # a misspelt switch, before any model is built
        prefill_mode()
    except UserError as error:
        parser.error(str(error))
    try:
        sizes = [int(x) for x in args.sizes.split(",")] if args.sizes else None
    except ValueError:
        parser.error(f"--sizes takes prompt sizes separated by commas, not {args.sizes!r}")
    most = min(spec.max_context for _, spec in models) - 1
    if (sizes is not None and (min(sizes) < 1 or max(sizes) > most)) or args.check_p < 1:
        parser.error(f"--sizes and --check-p must be 1 to {most} (p and its output token)")
    if args.graph_p < 0:
        parser.error("--graph-p must be a prompt size, or 0 for no graph memory check")
    if args.float32 and args.quick:
        parser.error("--float32 is for a GPU: --quick runs in float32 already")
    given = sizes
    name = "flex_prefill" + ("_quick" if args.quick else "_float32" if args.float32 else "")
    check_p = min(args.check_p, 33) if args.quick else args.check_p
    rows: list[dict[str, Any]] = []
    began = time.perf_counter()
    graph_p = 0 if args.quick else args.graph_p  # CUDA graphs: a GPU only
    for model, spec in models:
        # the default sizes, each model's within its context (Gemma-2's is 8,192)
        sizes = model_sizes(spec, given, args.quick)
        rows.append(
            one_model(
                model, sizes, args.layers, device, args.trials, check_p, graph_p, args.float32
            )
        )
        r = rows[-1]
        print(
            f"{r['spec']}: {r['engine_choice']}"
            + (f" ({r['engine_note']})" if r["engine_note"] else "")
            + (
                "; flex over explicit "
                + ", ".join(
                    f"{p}: {signed_pct(x)}"
                    for p, x in zip(r["sizes"], r["flex_over_explicit_pct"], strict=True)
                )
                + f"; logits {r['last_logits_rel_diff']:.1e}, greedy {r['greedy_agreement']:.1%}"
                if "sizes" in r
                else f"; {r['failed']}"
            )
        )
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()
        # written after each model: a run cut short keeps what it measured
        result = {"layers_asked": args.layers, "trials": args.trials, "models": rows}
        path = write_result(name, result, table(rows), args.out)
        print(f"written {path} after {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
