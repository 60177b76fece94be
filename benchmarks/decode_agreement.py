"""Does the decode path compute what the prefill path computes? Per model, each decode
step's logits against one prefill of the same tokens (issue 20: a check for any change to the
decode kernels).

A change to the batch-1 decode kernels (their order of loads against the PDL wait, fused
stages) can be fast and wrong: read a buffer before the kernel that writes it has finished,
and a decode step picks other experts or attends to stale keys. Timings cannot see that. Per
random prompt (--prompts of --prompt tokens), this script:

1. decodes --new greedy tokens on the engine as profiles run it (CUDA graphs, the batch-1
   decode kernels), and counts the decode steps' tokens that the argmax of one prefill of
   prompt + tokens agrees with (the first token comes from the prefill: left out);
2. teacher-forces: the decode step captured as a CUDA graph (eager on a CPU), the prompt
   prefilled, every cache slot past it zeroed (so a step that reads its key before writing
   it reads zeros, not the reference prefill's or a capture's keys), then each decoded token
   fed through the step, replayed as the engine replays its steps; each step's logits
   against the prefill's at that position: the relative error ‖decode − prefill‖ /
   ‖prefill‖.

Both paths compute the same function in bfloat16 with different summation orders (the
prefill: tensor-core GEMMs, the grouped expert GEMM, flash attention), so the error is never
zero on a GPU. A MoE router's top-k is discontinuous: where two experts' scores tie within
rounding the paths may pick different experts and the logits jump by tens of percent, which
is rounding, not a wrong kernel. So the error is split by whether every MoE layer routed the
step as the prefill did, and the first decode step (its cache holds only the prefill's keys,
so earlier steps' flips cannot carry into it) is reported apart. For scale, the same numbers
for the prefill's last prompt token against the reference prefill (the same kernels over two
lengths) are the floor. A fault that changes a router's input would also show as routing
flips; compare their rate with the floor's. There is no pass mark: the record says what the
numbers were. Each model is cut to its first --layers layers (random weights).

Positive control (--fault previous-slot): the decode step's cache write (kernels.rope_store,
MLA's mla_kernels.latent_store) puts each step's key and value one slot early, over the
previous token's, the off-by-one a fused kernel can make; installed after the engine's
start-up self-checks, before any graph is captured. Its errors say how far a real fault
moves these figures.

Run (GPU): PYTHONPATH=src python benchmarks/decode_agreement.py
           [--models qwen3-30b-a3b,gpt-oss-20b,deepseek-v2-lite] [--layers 8] [--new 64]
           [--fault previous-slot]
CPU check (tiny specs, float32, no CUDA graphs, the engine's torch paths): ... --quick
Writes docs/benchmarks/decode_agreement.json and .md with device, date and commit.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import statistics
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import DOCS, write_result
from decode_breakdown import truncated
from infermeter.backends.engine import EngineBackend
from infermeter.errors import UserError
from infermeter.spec.catalog import resolve_spec

GPU_MODELS = "qwen3-30b-a3b,gpt-oss-20b,deepseek-v2-lite"
QUICK_MODELS = "tiny-qwen3-moe,tiny-gpt-oss"
PROMPTS = 4  # random prompts per model, one sequence each (batch 1): --prompts
FAULTS = ("previous-slot",)


class Fault:
    """An installed positive control (see the module docstring): the decode step's cache
    writes land one slot early, over the previous token's (a window's ring wraps: slot 0's
    write lands in its last slot). Patches the kernel modules' functions, which the engine
    looks up at each call (so at graph capture; a replay calls no Python). `calls` counts
    the patched calls; undo() puts the kernels back. Raises UserError for an unknown fault,
    or where `engine` would not run the patched kernels (its decode step off the Triton
    kernels, or MLA layers off the latent kernels): a control that changes nothing."""

    def __init__(self, fault: str, engine: Any = None) -> None:
        from infermeter.engine import kernels, mla_kernels

        if fault not in FAULTS:
            raise UserError(f"--fault takes {', '.join(FAULTS)}, not {fault!r}")
        if engine is not None and (
            engine.attention != "triton" or (engine.model.mla and engine.model.mla_kernels is None)
        ):
            raise UserError("--fault needs the Triton decode kernels (a GPU, --attention auto)")
        self.fault, self.calls = fault, 0
        self._kernels, self._mla = kernels, mla_kernels
        self._rope_store, self._latent_store = kernels.rope_store, mla_kernels.latent_store
        kernels.rope_store, mla_kernels.latent_store = self._faulty_rope, self._faulty_latent

    def _faulty_rope(self, qkv, cache, pos, cos, sin, nq, slots=None):  # type: ignore[no-untyped-def]
        self.calls += 1
        early = (pos - 1).clamp_min(0) if slots is None else (slots - 1) % cache.shape[1]
        self._rope_store(qkv, cache, pos, cos, sin, nq, early)

    def _faulty_latent(self, y, q, w, eps, cache, pos, slots, *rest):  # type: ignore[no-untyped-def]
        self.calls += 1
        self._latent_store(y, q, w, eps, cache, pos, (slots - 1).clamp_min(0), *rest)

    def undo(self) -> None:
        self._kernels.rope_store, self._mla.latent_store = self._rope_store, self._latent_store

    def require_ran(self) -> None:
        """UserError where no patched kernel was called: a control that changed nothing."""
        if self.calls == 0:
            raise UserError("--fault never ran: the decode step did not call the patched kernels")


def _median(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _relative(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


def _routing(moes: list[Any]) -> list[torch.Tensor]:
    """Each MoE layer's expert choices of its last forward, sorted per token [T, k]."""
    return [moe.last_ids.sort(-1).values.cpu() for moe in moes]


def _flipped(moes: list[Any], chosen: list[torch.Tensor], row: int, position: int) -> bool:
    """Whether any MoE layer's last forward chose, at its `row`, other experts than the
    prefill chose at `position`."""
    now = _routing(moes)
    return any(not torch.equal(r[row], c[position]) for r, c in zip(now, chosen, strict=True))


def _clear_past(model: Any, p: int) -> None:
    """Zero every cache slot from position p on, in each layer whose cache is longer than p
    (a window's ring shorter than p holds only the prompt's keys)."""
    caches = model.cache if isinstance(model.cache, list) else list(model.cache)
    for cache in caches:
        if cache.shape[1] > p:
            cache[:, p:] = 0


class _Step:
    """One decode step of (token, position) -> float32 logits [vocab], as the engine runs it:
    where the engine uses CUDA graphs, a graph per attention span of `positions`, captured
    here (each capture's eager run performs a step and writes its key into the cache: make
    the _Step before the prompt's prefill and _clear_past, so no key is left there), then
    replayed; else eager."""

    def __init__(self, engine: Any, positions: range) -> None:
        self.engine = engine
        self.token = torch.zeros((1, 1), device=engine.device, dtype=torch.long)
        self.pos = torch.zeros((1,), device=engine.device, dtype=torch.long)
        self.graphs: dict[int, tuple[Any, torch.Tensor]] = {}
        self.moes = _moes(engine)
        self.routing: dict[int, list[Any]] = {}  # a graph's routing buffers (record=True)
        if engine.graphs:
            for position in positions:
                span = engine._span(position)
                if span not in self.graphs:
                    self.pos.fill_(position)
                    self.graphs[span] = engine._capture(functools.partial(self._body, span))
                    self.routing[span] = [moe.last_ids for moe in self.moes]

    def _body(self, span: int) -> torch.Tensor:
        model = self.engine.model
        ctx = model.decode_context(self.pos, span, self.engine.attention)
        return model.logits(model(self.token, ctx), ctx.fast)[0]

    def __call__(self, token: int, position: int) -> torch.Tensor:
        self.token.fill_(token)
        self.pos.fill_(position)
        span = self.engine._span(position)
        if not self.engine.graphs:
            return self._body(span)
        graph, out = self.graphs[span]
        graph.replay()  # writes its own routing buffers: point the layers back at them
        for moe, ids in zip(self.moes, self.routing[span], strict=True):
            moe.last_ids = ids
        return out


def _moes(engine: Any) -> list[Any]:
    return [blk.moe for blk in engine.model.layers if blk.moe is not None]


@contextlib.contextmanager
def _recording(engine: Any) -> Iterator[list[Any]]:
    """The engine's MoE layers, each recording its routing (last_ids) inside the block."""
    moes = _moes(engine)
    for moe in moes:
        moe.record = True
    try:
        yield moes
    finally:
        for moe in moes:
            moe.record = False


@torch.inference_mode()
def reference_prefill(
    engine: Any, tokens: torch.Tensor, decoded: list[int]
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One prefill of prompt + decoded[:-1] (engine.score): float32 logits [p + n − 1, vocab]
    and each MoE layer's sorted expert choices [p + n − 1, k]. The cache is sized first as
    generate() sized it (p + n), so nothing after this reallocates it."""
    engine._ensure_state(1, tokens.shape[1] + len(decoded))
    with _recording(engine) as moes:
        logits = engine.score(torch.cat([tokens, torch.tensor([decoded[:-1]])], dim=1))[0]
        return logits, _routing(moes)


@torch.inference_mode()
def teacher_forced(
    engine: Any,
    tokens: torch.Tensor,
    decoded: list[int],
    reference: tuple[torch.Tensor, list[torch.Tensor]] | None = None,
) -> tuple[tuple[float, bool], list[tuple[float, bool]]]:
    """(floor, steps). Each is (relative logits error, whether any MoE layer chose other
    experts than the reference prefill at that position). floor: the prompt's prefill
    against the reference prefill (reference_prefill(), made here unless given) at the last
    prompt position; steps: decoded[j] fed at position p + j through the decode step
    (_Step), after the prompt's prefill and _clear_past, against the reference at p + j. The
    first step's cache holds the prompt prefill's keys only."""
    p, n, device = tokens.shape[1], len(decoded), engine.device
    logits_ref, chosen = reference or reference_prefill(engine, tokens, decoded)
    with _recording(engine) as moes:
        step = _Step(engine, range(p, p + n - 1))  # captures write keys: before the clearing
        logits = engine._prefill_logits(tokens.to(device), None)[0]
        floor = (_relative(logits, logits_ref[p - 1]), _flipped(moes, chosen, -1, p - 1))
        _clear_past(engine.model, p)
        steps = []
        for j in range(n - 1):
            error = _relative(step(decoded[j], p + j), logits_ref[p + j])
            steps.append((error, _flipped(moes, chosen, 0, p + j)))
        del step  # its graphs, and their memory in the engine's pool
    return floor, steps


def _errors(pairs: list[tuple[float, bool]], prefix: str) -> dict[str, Any]:
    """Median and max error of `pairs`, of those routed alike and of those routed apart."""
    alike = [e for e, flip in pairs if not flip]
    apart = [e for e, flip in pairs if flip]
    return {
        f"{prefix}": len(pairs),
        f"{prefix}_rel_error_median": _median([e for e, _ in pairs]),
        f"{prefix}_rel_error_max": max((e for e, _ in pairs), default=None),
        f"{prefix}_routed_alike": len(alike),
        f"{prefix}_alike_rel_error_median": _median(alike),
        f"{prefix}_alike_rel_error_max": max(alike, default=None),
        f"{prefix}_apart_rel_error_median": _median(apart),
    }


def agreement(
    name: str, layers: int, device: str, new: int, prompt: int, args: argparse.Namespace
) -> dict[str, Any]:
    """One model's row: the decode steps' greedy agreement and the teacher-forced errors.
    args.eager: no CUDA graphs; args.attention "sdpa": the decode step's attention and dense
    layers on torch's ops instead of the Triton decode kernels (MoE layers keep theirs)."""
    spec = truncated(resolve_spec(name), layers)
    dtype = "bfloat16" if device == "cuda" else None
    backend = EngineBackend(device=device, dtype=dtype, cuda_graphs=not args.eager)
    backend.prepare(spec)
    engine = backend._engine
    if args.attention == "sdpa":
        engine.attention = "sdpa"  # before the first generate(): its graphs capture this path
    agree = total = prefill_token_agrees = 0
    floors: list[tuple[float, bool]] = []
    steps: list[tuple[float, bool]] = []
    firsts: list[tuple[float, bool]] = []
    fault = None
    try:
        if args.fault:  # after the engine's self-checks, before any graph is captured
            fault = Fault(args.fault, engine)
        for i in range(args.prompts):
            draw = torch.Generator().manual_seed(i)
            tokens = torch.randint(0, spec.vocab_size, (1, prompt), generator=draw)
            decoded = engine.generate(tokens, new, seed=i).tokens[0]
            assert len(decoded) == new
            reference = reference_prefill(engine, tokens, decoded)
            predicted = reference[0][prompt - 1 :].argmax(-1).tolist()
            prefill_token_agrees += predicted[0] == decoded[0]
            agree += sum(a == b for a, b in zip(predicted[1:], decoded[1:], strict=True))
            total += new - 1
            floor, forced = teacher_forced(engine, tokens, decoded, reference)
            floors.append(floor)
            steps += forced
            firsts.append(forced[0])
        info = engine.describe()  # after any switch above (the backend's is from prepare())
    finally:
        if fault is not None:
            fault.undo()
        backend.close()
    if fault is not None:
        fault.require_ran()
    return {
        "model": name,
        "spec": spec.name,
        "prompts": args.prompts,
        "prompt_tokens": prompt,
        "new_tokens": new,
        "decode_tokens": total,
        "decode_tokens_agree": agree,
        "agreement_pct": 100.0 * agree / total,
        "prefill_tokens_agree": prefill_token_agrees,
        **_errors(steps, "steps"),
        **_errors(firsts, "first_steps"),
        **_errors(floors, "floor"),
        "decode_path": engine.attention,
        "fault": args.fault,
        "fault_calls": fault.calls if fault is not None else None,
        "backend_info": info,
    }


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _split(r: dict[str, Any], prefix: str, label: str) -> str:
    """`label`: median and max error, and for MoE the routed-alike split."""
    text = (f"{label} off by {_pct(r[f'{prefix}_rel_error_median'])} (median), "
            f"{_pct(r[f'{prefix}_rel_error_max'])} (max)")  # fmt: skip
    if r["backend_info"].get("moe_experts") is None:
        return text
    return text + (
        f", routed as the prefill in {r[f'{prefix}_routed_alike']} of {r[prefix]}: "
        f"{_pct(r[f'{prefix}_alike_rel_error_median'])} (median), "
        f"{_pct(r[f'{prefix}_alike_rel_error_max'])} (max); the others "
        f"{_pct(r[f'{prefix}_apart_rel_error_median'])} (median)"
    )


def row_text(r: dict[str, Any]) -> tuple[str, str, str]:
    info = r["backend_info"]
    return (
        f"{r['spec']}, {r['prompts']} prompts, p = {r['prompt_tokens']}, o = "
        f"{r['new_tokens']}" + (f", FAULT {r['fault']}" if r.get("fault") else ""),
        f"greedy decode tokens the prefill's argmax agrees with: {r['decode_tokens_agree']} of "
        f"{r['decode_tokens']} ({r['agreement_pct']:.1f}%); "
        + "; ".join([
            _split(r, "steps", "teacher-forced decode steps' logits"),
            _split(r, "first_steps", "first decode steps"),
            _split(r, "floor", "floor (prefill against prefill)"),
        ])
        + f"; decode path {r['decode_path']}, CUDA graphs {info.get('cuda_graphs')}, PDL "
        f"{info.get('decode_pdl')}, batch-1 experts {info.get('moe_batch1_gemv')}",
        "-",
    )  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--models", default=None, help=f"catalog names or config.json paths (GPU {GPU_MODELS})"
    )
    parser.add_argument("--layers", type=int, default=8, help="layers kept of each model")
    parser.add_argument("--new", type=int, default=64, help="greedy tokens a prompt, >= 2")
    parser.add_argument("--prompts", type=int, default=PROMPTS, help="random prompts a model")
    parser.add_argument("--prompt", type=int, default=None, help="prompt tokens (GPU 480)")
    parser.add_argument("--eager", action="store_true", help="no CUDA graphs")
    parser.add_argument(
        "--attention", choices=("auto", "sdpa"), default="auto",
        help="sdpa: the decode step's attention and dense layers on torch's ops, not the "
        "Triton decode kernels (MoE layers keep theirs)",
    )  # fmt: skip
    parser.add_argument(
        "--fault", choices=FAULTS, default=None,
        help="positive control: the decode step's cache writes one slot early",
    )  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="CPU: tiny specs, o at most 8")
    parser.add_argument("--out", type=Path, default=DOCS, help="folder of the record")
    parser.add_argument("--name", default=None, help="record name (default decode_agreement)")
    args = parser.parse_args()
    least_of = {"--layers": (args.layers, 1), "--new": (args.new, 2),
                "--prompts": (args.prompts, 1), "--prompt": (args.prompt, 1)}  # fmt: skip
    for option, (value, least) in least_of.items():
        if value is not None and value < least:
            parser.error(f"{option} must be at least {least}, not {value}")
    if args.fault and (args.quick or args.attention == "sdpa"):  # torch's ops: no kernel to fault
        parser.error(
            "--fault needs the Triton decode kernels: leave out --quick and --attention sdpa"
        )
    device = "cpu" if args.quick else "cuda"
    if device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA GPU here: run with --quick for the CPU check")
    models = [m.strip() for m in (args.models or "").split(",") if m.strip()]
    if args.models is not None and not models:
        parser.error("--models is empty: give catalog names or config.json paths, comma-separated")
    models = models or (QUICK_MODELS if args.quick else GPU_MODELS).split(",")
    for model in models:  # before minutes of the others
        try:
            resolve_spec(model)
        except UserError as error:
            parser.error(str(error))
    prompt = args.prompt if args.prompt is not None else (480 if device == "cuda" else 24)
    new = args.new if device == "cuda" else min(args.new, 8)
    name = args.name or "decode_agreement" + ("_quick" if args.quick else "")
    began = time.perf_counter()
    rows: list[dict[str, Any]] = []
    for model in models:  # written after each model: a run cut short keeps what it measured
        try:
            rows.append(agreement(model, args.layers, device, new, prompt, args))
        except UserError as error:
            parser.exit(2, f"{parser.prog}: error: {error}\n")
        print(" | ".join(row_text(rows[-1])[:2]), flush=True)
        result = {"layers": args.layers, "new_tokens": new, "prompt_tokens": prompt,
                  "models": rows, "wall_s": time.perf_counter() - began}  # fmt: skip
        path = write_result(name, result, [row_text(r) for r in rows], args.out)
    print(f"written {path}")


if __name__ == "__main__":
    main()
