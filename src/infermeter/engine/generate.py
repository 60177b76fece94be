"""One rank's generator: prefill, CUDA-graph decode, on-device sampling, event timing.

A run is: prefill the (right-padded) prompts in one forward, sample the first token, then
`o - 1` decode steps. Everything a decode step reads or writes lives in static buffers
(`_State`: current tokens, positions, output buffer, done flags), and the step itself advances
the positions and the output index on the device, so on CUDA a step is one graph replay with no
host work beyond the launch and no synchronisation. The host loop knows every position in
advance (sequences advance in lockstep), which is how it picks the graph for the next step.

Graphs are cached per (batch, cache length) allocation: with the Triton or flash decode
attention one graph serves every position; with masked SDPA one graph per span bucket of
SPAN_BUCKET keys. They are captured, and replayed once, before the timed region.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from infermeter.backends.base import Point
from infermeter.engine.checkpoint import load_hf_checkpoint
from infermeter.engine.flex import choose_prefill, prefill_mode
from infermeter.engine.model import Decoder
from infermeter.engine.parallel import Comm, partition
from infermeter.engine.select import (
    choose_attention,
    choose_moe,
    kernel_switches,
    moe_gemv_modes,
    route_warps_fixed,
    route_warps_note,
)
from infermeter.engine.weights import init_random
from infermeter.errors import UserError, is_oom
from infermeter.spec.model import ModelSpec
from infermeter.units import ms_to_s

Sampling = Literal["greedy", "top_p"]
SPAN_BUCKET = 64  # masked decode attends to a multiple of this many keys (and caches round up)
MAX_STOPS = 16
CHECK_EVERY = 8  # with stop tokens, the host looks at the done flags every this many steps
WARMUP_TOKENS = 8
# Prompts of at most this many tokens (batch x width) prefill through a CUDA graph; longer
# ones eagerly. A graph is there for short prompts, whose eager prefill is bound by kernel
# launches on a slow host; gpt-oss-20b's prefill of 4,065 tokens took 0.34 s on an H200.
# And a capture does not reuse memory as an eager run does: on an H200 (41eac75, nvidia-smi
# every 5 s against the store's times) capturing gpt-oss-20b's prefill (explicit attention:
# sinks) took about 19 GB over the weights at p = 6,113, 41 GB at 10,209 and 79 GB at
# 14,305 (nvidia-smi's MiB in GB of 10^9 bytes), and from 16,097 on every capture ran out
# of memory with 96 GiB in graph pools, where the eager run before it had fitted (the
# thermal warm-up's capture at 32,225, the run's first, had taken 87-93 GB: what a capture
# takes depends on more than p).
PREFILL_GRAPH_MAX_TOKENS = 4096


def sample_top_p(
    logits: Tensor, temperature: float, top_p: float, generator: torch.Generator | None = None
) -> Tensor:
    """Temperature + nucleus sampling without host sync or data-dependent shapes.

    The nucleus is the most probable tokens whose cumulative probability *before* them is
    below top_p (so the top token is always in). Drawing is the exponential race: argmax of
    p_i / E_i with E_i ~ Exp(1) picks token i with probability proportional to p_i.
    """
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    sorted_p, order = probs.sort(dim=-1, descending=True)
    before = sorted_p.cumsum(dim=-1) - sorted_p
    sorted_p = sorted_p.masked_fill(before >= top_p, 0.0)
    race = torch.empty_like(sorted_p).exponential_(generator=generator).clamp_(min=1e-20)
    choice = (sorted_p / race).argmax(dim=-1, keepdim=True)
    return order.gather(-1, choice).squeeze(-1)


@dataclass
class Generation:
    """Tokens and timings of one run. Times in seconds; ttft = prefill + first token."""

    tokens: list[list[int]]  # per sequence; with stop tokens, up to and including the stop
    ttft_s: float
    prefill_s: float
    decode_s: float
    decode_steps: int
    extra: dict[str, Any] = field(default_factory=dict)
    # The whole generate() call as its caller times it (token ids in, token ids on the host),
    # less a first visit's warm-up and the wait for the other ranks to reach the call: 0.5-1 ms
    # more than runtime_s on an H200.
    wall_s: float = math.nan

    @property
    def runtime_s(self) -> float:
        """The timed device work: prefill, first token and decode steps."""
        return self.ttft_s + self.decode_s


@dataclass
class _State:
    """Static buffers of one (batch, cache length) allocation; CUDA graphs read them."""

    batch: int
    length: int
    tok: Tensor  # [b] token fed to the next decode step
    pos: Tensor  # [b] its position (= cache slot)
    step: Tensor  # [1] index into `out` of the next token written
    out: Tensor  # [b, length] generated tokens
    done: Tensor  # [b] a stop token was generated
    stops: Tensor  # [MAX_STOPS] stop token ids, -1 padded


@dataclass
class _PrefillGraphs:
    key: tuple[int, int, bool, bool]  # batch, width, padded, stop tokens
    tokens: Tensor  # static inputs, copied in before each replay
    lengths: Tensor | None
    logits: Tensor  # forward's output, first's input (in the shape's own graph pool)
    forward: torch.cuda.CUDAGraph  # prefill -> logits of the last prompt tokens
    first: torch.cuda.CUDAGraph  # sample and record the first token, set up decode state
    masks: tuple[Any, ...] = ()  # FlexAttention's block masks forward reads (flex.py)


class _Clock:
    """Marks on the device timeline (CUDA events) or the host clock (CPU)."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.marks: list[Any] = []

    def mark(self) -> None:
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            self.marks.append(event)
        else:
            self.marks.append(time.perf_counter())

    def intervals(self) -> list[float]:
        if self.cuda:
            self.marks[-1].synchronize()
            return [ms_to_s(a.elapsed_time(b)) for a, b in pairwise(self.marks)]
        return [b - a for a, b in pairwise(self.marks)]


class Engine:
    """A model of `spec` on one device (one rank of `comm`), ready to generate and measure."""

    def __init__(
        self,
        spec: ModelSpec,
        *,
        device: str | torch.device = "cpu",
        dtype: torch.dtype = torch.float32,
        comm: Comm | None = None,
        seed: int = 0,
        sampling: Sampling = "greedy",
        temperature: float = 0.8,
        top_p: float = 0.95,
        cuda_graphs: bool = True,
        checkpoint: str | None = None,
        decode_attention: str = "auto",
    ) -> None:
        if sampling not in ("greedy", "top_p"):
            raise UserError(f"engine: sampling must be 'greedy' or 'top_p', not {sampling!r}")
        self.spec, self.comm = spec, comm or Comm()
        self.device, self.dtype = torch.device(device), dtype
        if self.device.type == "cuda":  # streams, events, graphs and the RNG follow it
            if self.device.index is None:  # plain "cuda": the current device, made explicit
                self.device = torch.device("cuda", torch.cuda.current_device())
            torch.cuda.set_device(self.device)
        self.seed, self.sampling = seed, sampling
        self.temperature, self.top_p = temperature, top_p
        # a misspelt setting refused before any weight
        moe_gemv_modes(), route_warps_fixed(), kernel_switches()
        prefill = prefill_mode()
        layout = partition(spec, self.comm.size, self.comm.rank)
        with torch.inference_mode():
            self.model = Decoder(spec, layout, self.comm, self.device, dtype)
            if checkpoint:
                load_hf_checkpoint(self.model, checkpoint)
            else:
                init_random(self.model, seed)
        self.graphs = cuda_graphs and self.device.type == "cuda"
        self.attention, self.attention_notes = choose_attention(self.model, decode_attention)
        self.moe_path, self.moe_note = choose_moe(self.model, self.graphs)
        self.prefill_attention, self.prefill_attention_note = choose_prefill(
            self.model, self.device, dtype, prefill, self.comm
        )
        # CPU draws from a private generator; CUDA graphs need the default (graph-safe) one.
        self._gen = torch.Generator() if self.device.type == "cpu" else None
        self._state: _State | None = None
        self._graph_cache: dict[tuple[int, bool], torch.cuda.CUDAGraph] = {}
        self._prefill: _PrefillGraphs | None = None  # the latest prompt shape only (memory)
        self.prefill_graph_problem: str | None = None if self.graphs else "cuda_graphs off or CPU"
        self._pool: Any = None
        self._warm: set[tuple[int, int]] = set()

    # ---- buffers and graphs ----------------------------------------------------------------
    def release(self) -> None:
        """Drop graphs, KV cache and decode buffers (the weights stay)."""
        self._graph_cache.clear()
        self._prefill = None
        self._pool = None
        self._state = None
        self.model.cache = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _ensure_state(self, batch: int, need: int) -> _State:
        st = self._state
        if st is not None and st.batch == batch and st.length >= need:
            return st
        length = min(self.spec.max_context, -(-need // SPAN_BUCKET) * SPAN_BUCKET)
        if st is not None and st.batch == batch:
            length = max(length, st.length)  # only grow, so a sweep settles on one cache
        self.release()
        self.model.allocate_cache(batch, length)

        def zeros(*shape: int, dtype: torch.dtype = torch.long) -> Tensor:
            return torch.zeros(shape, device=self.device, dtype=dtype)

        stops = torch.full((MAX_STOPS,), -1, device=self.device, dtype=torch.long)
        self._state = _State(
            batch, length, zeros(batch), zeros(batch), zeros(1), zeros(batch, length),
            zeros(batch, dtype=torch.bool), stops,
        )  # fmt: skip
        return self._state

    def _span(self, pos: int) -> int:
        """Keys a decode step at position `pos` attends to (the graph key)."""
        assert self._state is not None
        if self.attention != "sdpa":
            return self._state.length
        return min(self._state.length, -(-(pos + 1) // SPAN_BUCKET) * SPAN_BUCKET)

    def _spans(self, first: int, count: int) -> list[int]:
        """The distinct spans of `count` decode steps from position `first`, ascending:
        sorted({_span(first + i) for i in range(count)}) without a step-by-step loop (it runs
        inside the timed call)."""
        if count <= 0:
            return []
        low, high = self._span(first), self._span(first + count - 1)
        return sorted({*range(low, high, SPAN_BUCKET), high})

    def _capture(
        self, body: Callable[[], Any], shared: bool = True
    ) -> tuple[torch.cuda.CUDAGraph, Any]:
        """Run `body` once eagerly on a side stream (cuBLAS handles, Triton autotuning, NCCL
        setup), then capture it into a graph: in the memory pool the decode graphs share
        (they replay one at a time) or, not `shared`, in a pool of its own, freed with it."""
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            body()
        torch.cuda.current_stream().wait_stream(side)
        if shared and self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        # thread_local: the NCCL watchdog thread may query events while we capture.
        mode = "thread_local" if self.comm.size > 1 else "global"
        with torch.cuda.graph(graph, pool=self._pool if shared else None, capture_error_mode=mode):
            out = body()
        return graph, out

    def _graph(self, span: int, stops: bool) -> torch.cuda.CUDAGraph:
        key = (span, stops)
        if key in self._graph_cache:
            return self._graph_cache[key]
        st = self._state
        assert st is not None
        st.pos.zero_()  # any in-range state will do: the next prefill resets it
        st.step.zero_()
        graph, _ = self._capture(lambda: self._step(span, stops))
        graph.replay()  # the first launch uploads the graph: keep that out of timed runs
        self._graph_cache[key] = graph
        return graph

    def _try_prefill_graphs(
        self, batch: int, width: int, padded: bool, stops: bool
    ) -> _PrefillGraphs | None:
        """Prefill graphs, or None (eager prefill): for more than PREFILL_GRAPH_MAX_TOKENS
        tokens (the last shape's graphs are freed then: the long prompts are those short of
        memory), and once a capture has failed other than for memory."""
        if self.prefill_graph_problem is not None:
            return None
        if batch * width > PREFILL_GRAPH_MAX_TOKENS:
            if self._prefill is not None:
                self._prefill = None
                torch.cuda.empty_cache()
            return None
        try:
            return self._prefill_graphs(batch, width, padded, stops)
        except Exception as error:
            if is_oom(error):
                raise
            self._prefill = None
            self.prefill_graph_problem = f"{type(error).__name__}: {error}"[:300]
            return None

    def _prefill_graphs(self, batch: int, width: int, padded: bool, stops: bool) -> _PrefillGraphs:
        """Prefill and first-token graphs for one prompt shape: eager prefill of a short
        prompt is bound by kernel launches on a slow host, which TTFT must not measure."""
        key = (batch, width, padded, stops)
        if self._prefill is not None and self._prefill.key == key:
            return self._prefill
        # Free the previous shape's graphs with their pools, and the eager warm-up's blocks,
        # back to the driver. A shape's graphs have pools of their own, so their memory goes
        # back when the shape changes; in the decode graphs' pool it stayed with them. (That
        # was not what ran gpt-oss-20b's default profile out of memory on an H200: see
        # PREFILL_GRAPH_MAX_TOKENS.)
        self._prefill = None
        torch.cuda.empty_cache()
        tokens = torch.zeros(batch, width, device=self.device, dtype=torch.long)
        lengths = torch.full((batch,), width, device=self.device) if padded else None
        forward, logits = self._capture(lambda: self._prefill_logits(tokens, lengths), False)
        first, _ = self._capture(lambda: self._first_token(logits, lengths, width, stops), False)
        forward.replay()  # upload both now, outside any timed region
        first.replay()
        flex = self.model.flex_prefill  # the block masks the forward graph reads, held by it
        masks = flex.masks() if flex is not None else ()
        self._prefill = _PrefillGraphs(key, tokens, lengths, logits, forward, first, masks)
        return self._prefill

    # ---- one step ----------------------------------------------------------------------------
    def _sample(self, logits: Tensor) -> Tensor:
        if self.sampling == "greedy":
            return logits.argmax(dim=-1)
        return sample_top_p(logits, self.temperature, self.top_p, self._gen)

    def _emit(self, token: Tensor, stops: bool) -> None:
        """Record `token` [b] as the next output and feed it to the next step (on device)."""
        st = self._state
        assert st is not None
        if stops:  # finished sequences keep emitting their stop token; flag new stops
            token = torch.where(st.done, st.stops[0], token)
            st.done |= (token[:, None] == st.stops).any(dim=-1)
        st.out.index_copy_(1, st.step, token[:, None])
        st.tok.copy_(token)
        st.step += 1

    def _prefill_logits(self, tokens: Tensor, lengths: Tensor | None) -> Tensor:
        """Prefill the prompts (filling the cache); float32 logits of each last prompt token."""
        b, width = tokens.shape
        model = self.model
        x = model(tokens, model.prefill_context(b, width, lengths)).view(b, width, -1)
        last = x[:, -1] if lengths is None else x[torch.arange(b, device=x.device), lengths - 1]
        return model.logits(last)

    def _first_token(self, logits: Tensor, lengths: Tensor | None, width: int, stops: bool) -> None:
        st = self._state
        assert st is not None
        if lengths is None:
            st.pos.fill_(width)
        else:
            st.pos.copy_(lengths)
        st.step.zero_()
        st.done.zero_()
        self._emit(self._sample(logits), stops)

    def _step(self, span: int, stops: bool) -> None:
        """One decode step for every sequence: the body of the CUDA graph."""
        st = self._state
        assert st is not None
        ctx = self.model.decode_context(st.pos, span, self.attention)
        x = self.model(st.tok[:, None], ctx)
        self._emit(self._sample(self.model.logits(x, ctx.fast)), stops)
        st.pos += 1

    # ---- runs --------------------------------------------------------------------------------
    def _pack(self, prompts: Tensor | list[list[int]]) -> tuple[Tensor, Tensor | None]:
        """Right-padded [b, P] tokens on the device, and lengths when they differ. Raises
        UserError (one line) for prompts that are not lists of integer ids in [0, vocab)."""
        if isinstance(prompts, Tensor):
            if prompts.ndim != 2 or prompts.shape[1] == 0:
                raise UserError("engine: prompts must be a [batch, tokens] tensor")
            return prompts.to(self.device, torch.long), None
        if isinstance(prompts, np.ndarray):
            prompts = list(prompts)
        if any(isinstance(p, (str, bytes)) or not hasattr(p, "__len__") for p in prompts):
            raise UserError("engine: prompts must be a list of token-id lists")
        if not prompts or any(len(p) == 0 for p in prompts):
            raise UserError("engine: every prompt needs at least one token")
        lengths = [len(p) for p in prompts]
        width = max(lengths)
        same = min(lengths) == width
        rows = prompts if same else [[*p, *[0] * (width - len(p))] for p in prompts]
        # Read and checked through numpy, not id by id in Python: this runs inside the timed
        # call (numpy reads a list of ints 3x faster than torch.tensor does).
        vocab = self.spec.vocab_size
        host = np.asarray(rows)
        if host.ndim != 2:
            raise UserError("engine: prompts must be a list of token-id lists")
        if host.dtype.kind == "O" and all(isinstance(t, int) for t in host.flat):
            raise UserError(f"engine: prompt token ids must be in [0, {vocab})")  # past int64
        if host.dtype.kind not in "iub":
            raise UserError(f"engine: prompt token ids must be integers, not {host.dtype}")
        if host.min() < 0 or host.max() >= vocab:
            raise UserError(f"engine: prompt token ids must be in [0, {vocab})")
        host = host.astype(np.int64, copy=False)
        tokens = torch.from_numpy(host).to(self.device)
        if same:
            return tokens, None
        return tokens, torch.tensor(lengths, dtype=torch.long).to(self.device)

    def _reseed(self, seed: int) -> None:
        if self._gen is not None:
            self._gen.manual_seed(seed)
        elif self.sampling != "greedy":
            torch.cuda.manual_seed(seed)  # the default generator: graph replays follow it

    @torch.inference_mode()
    def generate(
        self,
        prompts: Tensor | list[list[int]],
        max_new_tokens: int,
        stop_tokens: tuple[int, ...] | list[int] = (),
        *,
        seed: int | None = None,
        warmup: bool = True,
        window: Any = None,
    ) -> Generation:
        """Generate `max_new_tokens` per prompt (fewer only when every sequence has stopped).

        Without stop tokens the length is forced (profiling); with them, finished sequences are
        padded with their stop token and the run ends once all have stopped. `window` (an
        energy window: begin(), end(); infermeter.measure.window.Window) brackets exactly the timed
        generation, after a first visit's warm-up and graph capture; under tensor parallelism
        every rank gets it and its edges wait for all of them.
        """
        called = time.perf_counter()
        tokens, lengths = self._pack(prompts)
        width = tokens.shape[1]
        if max_new_tokens < 1:
            raise UserError("engine: max_new_tokens must be >= 1")
        if width + max_new_tokens > self.spec.max_context:
            raise UserError(
                f"{self.spec.name}: prompt ({width}) + output ({max_new_tokens}) tokens exceed "
                f"max_context {self.spec.max_context}"
            )
        if len(stop_tokens) > MAX_STOPS:
            raise UserError(f"engine: at most {MAX_STOPS} stop tokens")
        seed = self.seed if seed is None else seed
        need = width + max_new_tokens  # the warm-up allocates what the real run needs
        warming = 0.0
        if warmup:
            started = time.perf_counter()
            self._first_visit(tokens, lengths, max_new_tokens, stop_tokens, seed, need)
            warming = time.perf_counter() - started
        run = self._run(tokens, lengths, max_new_tokens, stop_tokens, seed, need, window)
        # Less the wait for the other ranks to reach the call: how the command reached them
        # (a pipe from the spawning parent, the launcher's store under torchrun: 0.3 ms more on
        # two H200s, 3-4% of a 1-token call) is infermeter's plumbing, not the stack's work.
        ended = time.perf_counter()
        not_timed = warming + run.extra["rank_wait_s"]
        run.wall_s = ended - called - not_timed
        # Host work inside the call, either side of the timed device work: before the first
        # mark (packing, H2D copy, graph lookups, sync; an energy window's start, where one is
        # given) and after the device was waited for (the window's end, the tokens' copy).
        run.extra["host_before_s"] = run.extra.pop("launch_at") - called - not_timed
        run.extra["host_after_s"] = ended - run.extra.pop("synced_at")
        return run

    def _first_visit(
        self,
        tokens: Tensor,
        lengths: Tensor | None,
        max_new: int,
        stop_tokens: tuple[int, ...] | list[int],
        seed: int,
        need: int,
    ) -> None:
        """A shape's untimed warm-up run (kernels, allocator, prefill graphs), once per
        (batch, prompt width)."""
        b, width = tokens.shape
        if (b, width) in self._warm:
            return
        self._run(tokens, lengths, min(max_new, WARMUP_TOKENS), stop_tokens, seed, need)
        self._warm.add((b, width))

    def _run(
        self,
        tokens: Tensor,
        lengths: Tensor | None,
        max_new: int,
        stop_tokens: tuple[int, ...] | list[int],
        seed: int,
        need: int,
        window: Any = None,
    ) -> Generation:
        """One timed generation; `window` (begin()/end()) brackets exactly the timed part."""
        b, width = tokens.shape
        st = self._ensure_state(b, need)
        stops = len(stop_tokens) > 0
        if stops:
            st.stops.fill_(-1)
            st.stops[: len(stop_tokens)] = torch.tensor(list(stop_tokens), dtype=torch.long)
        spans = self._spans(width, max_new - 1)
        prefill = None
        if self.graphs:
            for span in spans:
                self._graph(span, stops)
            prefill = self._try_prefill_graphs(b, width, lengths is not None, stops)
        if prefill is not None:
            prefill.tokens.copy_(tokens)
            if prefill.lengths is not None and lengths is not None:
                prefill.lengths.copy_(lengths)
        self._reseed(seed)
        waiting = time.perf_counter()
        self.comm.barrier()
        rank_wait_s = time.perf_counter() - waiting
        self._wait_for_device()
        if window is not None:  # energy: the GPU is idle here and again after intervals()
            window.begin()

        launch_at = time.perf_counter()
        clock = _Clock(self.device)
        clock.mark()
        if prefill is not None:
            prefill.forward.replay()
            clock.mark()
            prefill.first.replay()
        else:
            logits = self._prefill_logits(tokens, lengths)
            clock.mark()
            self._first_token(logits, lengths, width, stops)
        clock.mark()
        steps = 0
        for i in range(max_new - 1):
            span = self._span(width + i)
            if self.graphs:
                self._graph_cache[(span, stops)].replay()
            else:
                self._step(span, stops)
            steps += 1
            if stops and steps % CHECK_EVERY == 0 and bool(st.done.all()):
                break  # a sync, but only in dataset runs, every CHECK_EVERY steps
        clock.mark()
        prefill_s, first_s, decode_s = clock.intervals()
        synced_at = time.perf_counter()
        if window is not None:
            window.end()

        out = st.out[:, : steps + 1].tolist()
        if stops:
            wanted = set(stop_tokens)
            out = [
                row[: next((j + 1 for j, t in enumerate(row) if t in wanted), len(row))]
                for row in out
            ]
        return Generation(
            tokens=out,
            ttft_s=prefill_s + first_s,
            prefill_s=prefill_s,
            decode_s=decode_s,
            decode_steps=steps,
            extra={
                "cache_len": st.length,
                "decode_graphs": len(self._graph_cache),
                "rank_wait_s": rank_wait_s,
                "launch_at": launch_at,
                "synced_at": synced_at,
            },
        )

    def random_prompts(self, batch: int, length: int) -> Tensor:
        """Exact-length random prompts, drawn on the device (seeded by the shape)."""
        gen = torch.Generator(device=self.device).manual_seed(
            self.seed * 7919 + batch * 131 + length
        )
        shape = (batch, length)
        return torch.randint(0, self.spec.vocab_size, shape, device=self.device, generator=gen)

    @torch.inference_mode()
    def warm_point(self, point: Point) -> float:
        """What generate() does untimed on a shape's first visit, alone: the warm-up run of
        (batch, p), then the decode graphs of every context span a run of o tokens replays
        and the prefill graphs of (batch, p).
        An energy window begun after it holds only the timed work (on an H200 a new prompt
        size's setup put ~0.25 s of Qwen3-30B-A3B's work into its 1 s window, 10-20% of the
        joules). The device has finished all of it when this returns. Returns the seconds it
        took (0.0 when all was set up)."""
        b, p, o = point.batch_size, point.prompt_tokens, point.output_tokens
        started = time.perf_counter()
        if (b, p) not in self._warm:
            tokens, lengths = self._pack(self.random_prompts(b, p).tolist())
            self._first_visit(tokens, lengths, o, (), self.seed, p + o)
        if self.graphs:
            self._ensure_state(b, p + o)
            for span in self._spans(p, o - 1):
                self._graph(span, False)
            # One prefill graph is kept at a time: a shape visited before (the thermal
            # warm-up's) lost its graph to the shapes since, and its recapture, replays
            # included, must be done before the caller's window opens. H200, the knot at
            # p = 1505 (the warm-up's prompt size): recaptured in the window, 9% (LLaMA-7B)
            # and 17% (LLaMA-13B) above its neighbours' line in joules (2026-12-01); its
            # replays still running when warm_point returned, 56.0 J a run for 13B against
            # 52.4 on the line, one run fewer in its 1 s window (d85d767).
            self._try_prefill_graphs(b, p, False, False)
        self._wait_for_device()
        return time.perf_counter() - started

    def _wait_for_device(self) -> None:
        """Block until this rank's GPU has finished the work queued so far (no-op on a CPU)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def run_point(self, point: Point, window: Any = None) -> Generation:
        """Generate `point`'s forced output length after fresh random prompts of exactly p
        tokens (token ids from the host, as a caller gives them); `window` as in generate().
        Raises UserError for an impossible point; running out of memory raises as torch does
        (the backend turns it into an error Measurement)."""
        b, p, o = point.batch_size, point.prompt_tokens, point.output_tokens
        if b < 1 or p < 1 or o < 1:
            raise UserError(f"engine: point needs batch, prompt and output >= 1, got {point}")
        if p + o > self.spec.max_context:
            raise UserError(
                f"{self.spec.name}: p + o = {p + o} exceeds max_context {self.spec.max_context}"
            )
        return self.generate(self.random_prompts(b, p).tolist(), o, window=window)

    @torch.inference_mode()
    def score(self, tokens: Tensor) -> Tensor:
        """Float32 logits [b, s, vocab] of every position (one prefill; for checks)."""
        b, s = tokens.shape
        self._ensure_state(b, s)
        x = self.model(tokens.to(self.device), self.model.prefill_context(b, s))
        return self.model.logits(x).view(b, s, -1)

    @torch.inference_mode()
    def expert_counts(self, batch: int, context: int = 64) -> list[int]:
        """Distinct experts each MoE layer routes one decode step of `batch` random sequences
        to, after a prefill of `context` tokens (eager, outside any timing; [] without MoE).
        What a decode step reads of a MoE layer, to set beside E·(1 − (1 − k/E)^b)."""
        moes = [blk.moe for blk in self.model.layers if blk.moe is not None]
        if not moes:
            return []
        model = self.model
        tokens = self.random_prompts(batch, context + 1)
        self._ensure_state(batch, context + 2)
        model(tokens[:, :-1], model.prefill_context(batch, context))
        for moe in moes:
            moe.record = True
        try:
            pos = torch.full((batch,), context, device=self.device)
            model(tokens[:, -1:], model.decode_context(pos, self._span(context), self.attention))
        finally:
            for moe in moes:
                moe.record = False
        return [int(torch.unique(moe.last_ids).numel()) for moe in moes]

    def _fusion_notes(self) -> dict[str, str | None]:
        """How the Triton decode step ran its merge, PDL order and qk-norm, from the kernels
        module as it ran (ablations: INFERMETER_SPLIT_MERGE, INFERMETER_PDL_TRIGGER); all
        None where the Triton decode does not run."""
        notes: dict[str, str | None] = dict.fromkeys(
            ("decode_split_merge", "decode_pdl_trigger", "decode_qk_norm")
        )
        if self.attention != "triton":
            return notes
        k = self.model.kernels
        notes["decode_split_merge"] = (  # flash-decoding's merge: a kernel of its own, or fused
            "kernel"
            if self.model.mla or not k.SPLIT_MERGE
            else f"fused where batch x KV heads <= {k.MERGE_SLOTS:,} and"
            f" a group's heads x splits <= {k.MERGE_TILE:,}"
        )
        if k.pdl(self.device):  # when a kernel lets the next one launch
            order = "before" if k.PDL_TRIGGER_FIRST.value else "after"
            notes["decode_pdl_trigger"] = f"{order} its wait (INFERMETER_PDL_TRIGGER)"
        if self.model.spec.qk_norm in ("head", "l2"):
            notes["decode_qk_norm"] = "in rope_store" if k.ROPE_QK_NORM else "kernel"
        return notes

    def describe(self) -> dict[str, Any]:
        """What a run records about the engine: torch version, device, dtype, TP size, CUDA
        graphs (decode and prefill, with why not), sampling, the prefill attention of
        soft-capped or sink layers (flex.choose_prefill, with why not flex), the decode attention
        chosen (and why others were skipped), PDL, the dense layers' one-token GEMVs ("rows"
        or "looped": select.one_token_rows; None off the Triton path), how the Triton
        kernels' tiles were chosen (kept in Triton's cache or tuned per process; None where no
        Triton kernel runs) and the MoE experts path (at batch 1: the expert GEMVs or the
        grouped GEMM, and the start-up timings behind that choice: µs of one token through
        the first MoE layer's router and routed experts, not its shared expert or
        all-reduce, the slowest rank's under tensor parallelism; and the fused routing's
        warps, INFERMETER_ROUTE_WARPS's or by the tokens)."""
        cuda = self.device.type == "cuda"
        moe = next((blk.moe for blk in self.model.layers if blk.moe is not None), None)
        return {
            "torch": torch.__version__,
            "device": torch.cuda.get_device_name(self.device) if cuda else "cpu",
            "dtype": str(self.dtype).removeprefix("torch."),
            "tp": self.comm.size,
            "cuda_graphs": self.graphs,
            "sampling": self.sampling,
            "temperature": self.temperature if self.sampling == "top_p" else None,
            "top_p": self.top_p if self.sampling == "top_p" else None,
            "decode_attention": self.attention,
            "decode_pdl": self.attention == "triton" and self.model.kernels.pdl(self.device),
            "one_token_gemv": (
                ("rows" if self.model.kernels.ONE_TOKEN_ROWS else "looped")
                if self.attention == "triton"
                else None
            ),
            **self._fusion_notes(),
            **_tiles(cuda, self.attention == "triton" or self.moe_path == "triton"),
            "decode_attention_skipped": self.attention_notes or None,
            **(
                {
                    "moe_experts": self.moe_path,
                    "moe_experts_note": self.moe_note,
                    "moe_batch1_gemv": moe.gemv,
                    "moe_batch1_us": moe.batch1_us,
                    "moe_route_warps": route_warps_note(moe),
                }
                if self.moe_path and moe is not None
                else {}
            ),
            "prefill_attention": self.prefill_attention,  # soft-capped or sink layers
            "prefill_attention_note": self.prefill_attention_note,
            "prefill_graphs": self.prefill_graph_problem is None,
            "prefill_graph_max_tokens": PREFILL_GRAPH_MAX_TOKENS if self.graphs else None,
            "prefill_graphs_note": self.prefill_graph_problem,
        }


def _tiles(cuda: bool, runs_triton: bool) -> dict[str, Any]:
    """The Triton version (None where it is not installed or the engine is not on CUDA) and
    how the Triton kernels' tiles were chosen (kernels.tiles_note; None where none runs)."""
    try:
        import triton
    except ImportError:
        return {"triton": None, "kernel_tiles": None}
    if not (cuda and runs_triton):
        return {"triton": triton.__version__ if cuda else None, "kernel_tiles": None}
    from infermeter.engine import kernels  # already imported: a Triton kernel runs

    return {"triton": triton.__version__, "kernel_tiles": kernels.tiles_note()}
