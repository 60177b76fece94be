"""Can one launch stream a chain of dependent batch-1 GEMVs at the copy bandwidth? (issue 20)

A batch-1 decode step is a chain of GEMVs, each reading the one before's output. Launched
one kernel a GEMV (the engine, with PDL), each pays about 1.7 µs on top of its bytes (a
line through l2_prefetch_probe's fastest tiles at 16 and 50 MiB, README.md): the launch,
the first bytes' latency and the last wave's tail, and Qwen3-30B-A3B's five GEMVs a layer
pay about 8.5 µs of it. Here the whole
chain is one launch of many short programs, a tile each: a program takes the next tile in
order from a ticket counter, loads its weights, and only then waits until every tile of the
GEMV before has added its part to the input it needs (a counter a GEMV). The weights of the
next GEMV so stream while the last one drains. The ticket keeps it from deadlocking: every
tile waited on holds an earlier ticket, so it belongs to a program that is already running.

A tile is BLOCK_N rows by KC columns (the last one masked); its partial sums are added to
the GEMV's float32 output with atomics. The chain: `--layers` layers of four GEMVs shaped
like `--shape`'s (qwen3: Qwen3-30B-A3B's QKV, output projection and its eight active
experts' gate/up and down as dense matrices, the router left out; llama: LLaMA-7B's), input
i+1 being the first K of output i, every weight its own, bfloat16, random, so each repeat
reads them all from HBM (check: the chain is over three times the L2).

Arms, each a CUDA graph of `--repeats` chains, µs a chain (every one checked first against
torch's float32 chain, or a bfloat16-rounded one where the intermediates are bfloat16):
- engine: gemv_kernels.rows_gemv a GEMV (its tuned tiles, PDL as the engine launches it);
- a launch a GEMV: this kernel, one launch a GEMV (no waiting), at each tile; and without
  counting its tiles (no CTA barrier and release at a program's end: what publishing costs);
- one launch, weights after the wait / before the wait: the whole chain, at each tile;
- one launch, weights before the wait, program order: the ticket replaced by the program
  id (relies on the GPU starting programs in order; not a guarantee);
- state reset: the memset that zeroes each repeat's outputs and counters (in every arm of
  this kernel, once a graph, so amortised over the repeats; not in the engine's arm).
Outputs are checked after an arm's first run and after its graph's last replay, not after
every replay.
The floor is the chain's bytes at the copy bandwidth measured in the same process.

Run on a GPU: python benchmarks/gemv_chain_probe.py [--shape qwen3] [--layers 4]
    [--repeats 8] [--out DIR] [--name gemv_chain_probe]
Writes DIR/NAME.json and .md with device, date and commit.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from _record import DOCS, name_problem, write_result  # noqa: E402

SHAPES = {  # a layer's GEMVs, (N, K): QKV, output projection, gate/up, down
    "qwen3": ((5120, 2048), (2048, 4096), (12288, 2048), (2048, 6144)),
    "llama": ((12288, 4096), (4096, 4096), (22016, 4096), (4096, 11008)),
}
TILES = [  # (BLOCK_N, KC, warps): 32-64 weight elements a thread
    (4, 2048, 4), (2, 2048, 4), (8, 1024, 4), (4, 1024, 2), (8, 2048, 8), (16, 512, 4),
    (16, 2048, 16), (32, 1024, 16),
]  # fmt: skip


@triton.jit
def _chain(
    W, Act, Woff, Xoff, Yoff, Ns, Ks, Starts, Need, Done, Ticket, first, stages,
    STAGES_P2: tl.constexpr, BLOCK_N: tl.constexpr, KC: tl.constexpr, EARLY: tl.constexpr,
    TICKET: tl.constexpr, WAIT: tl.constexpr, COUNT: tl.constexpr,
):  # fmt: skip
    """One tile of a chain of GEMVs: Act[Yoff[s] + n] += sum_k W[Woff[s] + n K + k] *
    Act[Xoff[s] + k] over the tile's rows and columns, stage s being the one whose tiles
    (Starts[s] to Starts[s + 1]) hold this tile's index: the next ticket, or first plus the
    program id (Starts has `stages` + 1 entries; STAGES_P2 is a power of two above that).
    With WAIT, it first waits until Done[s - 1] reaches Need[s - 1] (the tiles of stage
    s - 1); with EARLY it loads its weights before that wait. With COUNT it then adds 1 to
    Done[s] (after a CTA barrier, with release semantics: what publishes its sums)."""
    if TICKET:  # noqa: SIM108 (Triton: a constexpr branch, not a select)
        t = tl.atomic_add(Ticket, 1, sem="relaxed")
    else:
        t = first + tl.program_id(0)
    i = tl.arange(0, STAGES_P2)
    starts = tl.load(Starts + i + 1, mask=i < stages, other=t + 1)
    s = tl.sum((starts <= t).to(tl.int32), 0)  # stages whose tiles all come before t
    n = tl.load(Ns + s)
    k = tl.multiple_of(tl.load(Ks + s), 16)  # plan(): rows 16-aligned, so loads are vectors
    local = t - tl.load(Starts + s)
    chunks = tl.cdiv(k, KC)
    rows = (local // chunks) * BLOCK_N + tl.arange(0, BLOCK_N)
    cols = (local % chunks) * KC + tl.arange(0, KC)
    w_ptr = (
        W + tl.multiple_of(tl.load(Woff + s), 16) + rows.to(tl.int64)[:, None] * k + cols[None, :]
    )
    w_mask = (rows < n)[:, None] & (cols < k)[None, :]
    if EARLY:
        w = tl.load(w_ptr, mask=w_mask, other=0.0)
    if WAIT:  # noqa: SIM102 (a constexpr branch around a runtime one)
        if s > 0:
            need = tl.load(Need + s - 1)
            done = tl.atomic_add(Done + s - 1, 0, sem="acquire")
            while done < need:
                done = tl.atomic_add(Done + s - 1, 0, sem="acquire")
    if not EARLY:
        w = tl.load(w_ptr, mask=w_mask, other=0.0)
    x = tl.load(
        Act + tl.multiple_of(tl.load(Xoff + s), 16) + cols,
        mask=cols < k,
        other=0.0,
        cache_modifier=".cg",
    )
    y = tl.sum(w.to(tl.float32) * x[None, :], 1)
    tl.atomic_add(
        Act + tl.multiple_of(tl.load(Yoff + s), 16) + rows, y, mask=rows < n, sem="relaxed"
    )
    if COUNT:
        tl.debug_barrier()  # every thread's adds before the count that publishes them
        tl.atomic_add(Done + s, 1, sem="release")


@dataclass(frozen=True)
class Plan:
    """Where a chain's stages live: element offsets into the packed weights (Woff) and into
    one repeat's float32 activations (Xoff: input, Yoff: output; the input x0 at 0), each
    stage's first tile (Starts, STAGES + 1 long) and tile count (Need)."""

    shapes: tuple[tuple[int, int], ...]
    woff: list[int]
    xoff: list[int]
    yoff: list[int]
    starts: list[int]
    need: list[int]
    act_len: int  # float32s of one repeat's activations (x0 first, then each output)

    @property
    def tiles(self) -> int:
        return self.starts[-1]

    @property
    def weight_elements(self) -> int:
        return sum(n * k for n, k in self.shapes)


def plan(shapes: list[tuple[int, int]], block_n: int, kc: int) -> Plan:
    """The Plan of a chain of (N, K) GEMVs read input i + 1 from the first K of output i.

    Raises ValueError where a GEMV's K is more than the N before it, a size is < 1, or a K
    is not a multiple of 16 (the kernel loads rows as 16-element vectors)."""
    if not shapes or any(n < 1 or k < 1 or k % 16 for n, k in shapes):
        raise ValueError("a chain needs a GEMV, every N at least 1, every K a multiple of 16")
    for i in range(1, len(shapes)):
        if shapes[i][1] > shapes[i - 1][0]:
            raise ValueError(f"GEMV {i} reads K = {shapes[i][1]} of {shapes[i - 1][0]} outputs")
    woff, xoff, yoff, starts, need = [], [], [], [0], []
    w = 0
    act = -(-shapes[0][1] // 16) * 16  # x0, then each output on a 64-byte boundary
    for i, (n, k) in enumerate(shapes):
        woff.append(w)
        w += n * k
        xoff.append(0 if i == 0 else yoff[-1])
        yoff.append(act)
        act += -(-n // 16) * 16
        need.append(-(-n // block_n) * -(-k // kc))
        starts.append(starts[-1] + need[-1])
    return Plan(tuple(shapes), woff, xoff, yoff, starts, need, act)


class Chain:
    """A chain's weights and `repeats` sets of activations and counters, for one tile.

    packed: bfloat16 [sum of N x K], each GEMV's row-major N x K in turn; shapes: the GEMVs'
    (N, K), as plan() takes them; x0: the chain's input [1, K0] (any float dtype, kept as
    float32 in every repeat); tile: (BLOCK_N rows, KC columns, warps). Activations are
    float32 [repeats, plan.act_len] on x0's device, counters int32 [repeats, GEMVs + 1]
    (tiles done a GEMV, then the ticket). Raises ValueError where plan() refuses the shapes
    or `packed` does not hold their weights."""

    def __init__(
        self, packed: Any, shapes: list[tuple[int, int]], x0: Any, repeats: int,
        tile: tuple[int, int, int],
    ) -> None:  # fmt: skip
        import torch

        self.block_n, self.kc, self.warps = tile
        self.plan = p = plan(shapes, self.block_n, self.kc)
        if packed.numel() != p.weight_elements:
            raise ValueError(f"{packed.numel()} packed weights for {p.weight_elements} needed")
        dev = x0.device
        self.w = packed
        self.act = torch.zeros(repeats, p.act_len, device=dev, dtype=torch.float32)
        self.act[:, : x0.numel()] = x0.float().reshape(-1)
        self.counters = torch.zeros(repeats, len(shapes) + 1, device=dev, dtype=torch.int32)
        table = [p.woff, p.xoff, p.yoff, [n for n, _ in shapes], [k for _, k in shapes]]
        self.tables = [torch.tensor(t, device=dev, dtype=torch.int64) for t in table]
        self.starts = torch.tensor(p.starts, device=dev, dtype=torch.int64)
        self.need = torch.tensor(p.need, device=dev, dtype=torch.int64)
        self.x0_len = x0.numel()

    def reset(self) -> None:
        """Zero every repeat's outputs and counters (x0 kept)."""
        self.act[:, self.x0_len :].zero_()
        self.counters.zero_()

    def run(
        self, r: int, early: bool = True, ticket: bool = True, one_launch: bool = True,
        count: bool = True,
    ) -> None:  # fmt: skip
        """Repeat r's chain: one launch of every tile, or a launch a GEMV (no waits; with
        `count` False, no tile counted either)."""
        done, tick = self.counters[r, :-1], self.counters[r, -1:]
        args = (self.w, self.act[r], *self.tables, self.starts, self.need, done, tick)
        stages = len(self.plan.shapes)
        meta = {
            "STAGES_P2": triton.next_power_of_2(stages + 1), "BLOCK_N": self.block_n,
            "KC": self.kc, "num_warps": self.warps, "num_stages": 1,
        }  # fmt: skip
        if one_launch:
            _chain[(self.plan.tiles,)](
                *args, 0, stages, EARLY=early, TICKET=ticket, WAIT=True, COUNT=True, **meta
            )
            return
        for s, tiles in enumerate(self.plan.need):
            _chain[(tiles,)](
                *args, self.plan.starts[s], stages, EARLY=True, TICKET=False, WAIT=False,
                COUNT=count, **meta,
            )  # fmt: skip

    def output(self, r: int) -> Any:
        """Repeat r's last output [N] (float32)."""
        return self.outputs(r)[-1]

    def outputs(self, r: int) -> list[Any]:
        """Repeat r's output of every GEMV, in order ([N] float32 views)."""
        return [
            self.act[r, y : y + n]
            for y, (n, _) in zip(self.plan.yoff, self.plan.shapes, strict=True)
        ]

    def counts(self, r: int) -> tuple[list[int], int]:
        """Repeat r's counters: tiles done a GEMV, and tickets taken."""
        row = self.counters[r].tolist()
        return row[:-1], row[-1]


def reference(weights: list[Any], x0: Any, bf16: bool) -> list[Any]:
    """torch's chain in float32 (each output rounded to bfloat16 with `bf16`): every GEMV's
    output [N], in order."""
    x = x0.float().reshape(-1)
    outs = []
    for w in weights:
        y = w.float() @ x[: w.shape[1]]
        x = y.bfloat16().float() if bf16 else y
        outs.append(x)
    return outs


def chain_close(got: list[Any], want: list[Any], rel: float) -> bool:
    """Whether every output in `got` is within rel x the largest |value| of its counterpart
    in `want` (the same number of outputs, the same shapes)."""
    return len(got) == len(want) and all(
        (g.float().reshape(-1) - w.reshape(-1)).abs().max().item()
        <= rel * (w.abs().max().item() + 1e-6)
        for g, w in zip(got, want, strict=True)
    )


def chain_weights(shape: str, layers: int, device: str, seed: int = 0) -> list[Any]:
    """`layers` layers of SHAPES[shape], bfloat16, N(0, 1/K) so activations stay near 1."""
    import torch

    gen = torch.Generator(device=device).manual_seed(seed)
    out = []
    for _ in range(layers):
        for n, k in SHAPES[shape]:
            w = torch.randn(n, k, device=device, generator=gen) * k**-0.5
            out.append(w.to(torch.bfloat16))
    return out


def probe(shape: str, layers: int, repeats: int) -> dict[str, Any]:
    """{"arms_us": µs a chain of each arm, "floor_us": its bytes at the copy bandwidth, ...}.
    Every arm's outputs are checked against torch's once before it is timed and after its
    graph has run: the engine's last output (bfloat16 between GEMVs) within 2 %, this
    kernel's every output of every repeat within 1e-4 of its largest value, and its
    counters (every tile counted once, every ticket taken once; SystemExit otherwise)."""
    import torch

    from gemv_sweep import graph_time_s
    from infermeter.engine.gemv_kernels import rows_gemv
    from models_bench import copy_bandwidth

    weights = chain_weights(shape, layers, "cuda")
    shapes = [tuple(w.shape) for w in weights]
    gen = torch.Generator(device="cuda").manual_seed(1)
    x0 = torch.randn(1, weights[0].shape[1], device="cuda", generator=gen).bfloat16()
    want = reference(weights, x0, bf16=False)
    want_bf16 = reference(weights, x0, bf16=True)[-1:]
    packed = torch.cat([w.reshape(-1) for w in weights])
    nbytes = 2 * packed.numel()
    arms: dict[str, float] = {}

    def timed(label: str, step: Callable[[int], None], got: Callable[[int], list[Any]],
              ref: list[Any], rel: float, runs: int) -> None:  # fmt: skip
        """Check step(0)'s outputs got(0), time the graph, then check every repeat's."""
        step(0)
        torch.cuda.synchronize()
        if not chain_close(got(0), ref, rel):
            raise SystemExit(f"{label}: the chain's outputs disagree with torch's")
        arms[label] = graph_time_s(step, repeats) * 1e6
        torch.cuda.synchronize()
        if not all(chain_close(got(r), ref, rel) for r in range(runs)):
            raise SystemExit(f"{label}: a repeat's outputs in the timed graph disagree")

    last: list[Any] = [None]

    def engine(r: int) -> None:
        x = x0
        for w in weights:
            x = rows_gemv(x[:, : w.shape[1]], w)
        last[0] = x

    # bfloat16 between GEMVs: 2 % of the last output's largest value (gemv_sweep's bound)
    timed("engine: rows_gemv a GEMV (tuned, PDL)", engine, lambda r: last, want_bf16, 2e-2, 1)
    for tile in TILES:
        c = Chain(packed, shapes, x0, repeats, tile)
        name = f"n{tile[0]} k{tile[1]} w{tile[2]}"
        variants = [("a launch a GEMV", {"one_launch": False})]
        variants.append(
            ("a launch a GEMV, tiles not counted", {"one_launch": False, "count": False})
        )
        variants += [(f"one launch, weights {w} the wait", {"early": w == "before"})
                     for w in ("after", "before")]  # fmt: skip
        variants.append(("one launch, weights before the wait, program order", {"ticket": False}))
        for label, options in variants:

            def step(r: int, c: Chain = c, options: dict[str, bool] = options) -> None:
                if r == 0:
                    c.reset()
                c.run(r, **options)

            # float32 between GEMVs, atomics in any order: every output, every repeat, 1e-4
            timed(f"{label}, {name}", step, c.outputs, want, 1e-4, repeats)
            counted = options.get("count", True)
            ticketed = options.get("one_launch", True) and options.get("ticket", True)
            for r in range(repeats):
                tiles, tickets = c.counts(r)
                if tiles != (c.plan.need if counted else [0] * len(c.plan.need)) or tickets != (
                    c.plan.tiles if ticketed else 0
                ):
                    raise SystemExit(
                        f"{label}: repeat {r} counted tiles {tiles} and {tickets} tickets"
                    )
        if tile == TILES[0]:
            arms["state reset (once a graph)"] = graph_time_s(lambda r, c=c: c.reset(), 1) * 1e6
        del c
    bandwidth = copy_bandwidth("cuda")
    return {
        "arms_us": arms,
        "floor_us": nbytes / bandwidth * 1e6,
        "chain_bytes": nbytes,
        "copy_bandwidth_Bps": bandwidth,
        "l2_bytes": torch.cuda.get_device_properties(0).L2_cache_size,
        "gemvs": len(weights),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--shape", choices=sorted(SHAPES), default="qwen3")
    parser.add_argument("--layers", type=int, default=4, help="layers of four GEMVs")
    parser.add_argument("--repeats", type=int, default=8, help="chains a CUDA graph")
    parser.add_argument("--out", type=Path, default=DOCS)
    parser.add_argument("--name", default="gemv_chain_probe", help="record name")
    args = parser.parse_args()
    for option, value in (("--layers", args.layers), ("--repeats", args.repeats)):
        if value < 1:
            parser.error(f"{option} must be at least 1, not {value}")
    if problem := name_problem(args.name):
        parser.error(problem)
    if args.out.exists() and not args.out.is_dir():
        parser.error(f"--out {args.out} is a file, not a folder")
    import torch

    if not torch.cuda.is_available():
        raise SystemExit("gemv_chain_probe needs a CUDA GPU (it times Triton kernels)")
    nbytes = 2 * args.layers * sum(n * k for n, k in SHAPES[args.shape])
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    if nbytes < 3 * l2:
        parser.error(
            f"--layers {args.layers}: the chain's {nbytes / 2**20:.0f} MiB is under three times "
            f"the L2 ({l2 / 2**20:.0f} MiB), so repeats would read from it: give more layers"
        )
    if 3 * nbytes > 0.8 * torch.cuda.mem_get_info()[0]:
        raise SystemExit(f"--layers {args.layers}: the chain needs more memory than is free")
    result = probe(args.shape, args.layers, args.repeats)
    print(result, flush=True)
    floor_us = result["floor_us"]
    rows = [
        (
            "setup",
            f"{args.layers} {args.shape} layers, {result['gemvs']} GEMVs, "
            f"{result['chain_bytes'] / 2**20:.0f} MiB (L2 {result['l2_bytes'] / 2**20:.0f} "
            f"MiB); {args.repeats} chains a graph; floor {floor_us:.1f} µs at the copy bandwidth "
            f"{result['copy_bandwidth_Bps'] / 1e12:.2f} TB/s",
            "-",
        )
    ]
    for name, value in result["arms_us"].items():
        share = f" = {value / floor_us:.2f}x floor, {value / args.layers:.1f} µs a layer"
        rows.append((name, f"{value:.1f} µs{share if 'reset' not in name else ''}", "-"))
    record = {"shape": args.shape, "layers": args.layers, "repeats": args.repeats, **result}
    print("written", write_result(args.name, record, rows, args.out))


if __name__ == "__main__":
    main()
