"""Tensor parallelism: which slice of every weight a rank holds, and the two collectives.

Layout (Megatron style, one all_reduce after each row-parallel projection):

- QKV and the FFN input (gate+up, or the single GELU/ReLU matrix) are column-parallel: rank r
  holds query heads [r·n/tp, (r+1)·n/tp) and the matching FFN columns.
- KV heads are split the same way when tp divides them; when they are fewer than tp (GQA/MQA
  with num_kv_heads < tp), each rank keeps the one KV head its query heads read (replicated).
- The attention output and FFN down projections are row-parallel: each rank multiplies its
  slice and one all_reduce sums the partial results (rank 0 folds in residual and bias).
- Mixture-of-experts layers shard every expert along its FFN dimension exactly like the dense
  FFN (engine/moe.py says why not whole experts per rank); the router is replicated.
- Multi-head latent attention splits heads; the latent projection and the latent KV cache
  are replicated (every rank needs the whole latent for its heads).
- The embedding is replicated (a gather of b rows, cheap); the LM head is vocab-parallel: rank r
  computes logits for its vocabulary chunk and an all_gather assembles them, so every rank holds
  bit-identical logits and samples the same token with the same seed; no token broadcast needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from infermeter.errors import UserError
from infermeter.spec.model import ModelSpec


@dataclass(frozen=True)
class Layout:
    """What rank `rank` of `tp` holds. Head and FFN ranges index the full (logical) model."""

    tp: int
    rank: int
    q_start: int  # first query head
    q_heads: int
    kv_start: int  # first KV head
    kv_heads: int
    ffn_start: int
    ffn: int
    vocab_start: int
    vocab_end: int  # exclusive; the last chunk may be shorter than vocab_chunk
    vocab_chunk: int  # ceil(vocab / tp): every rank's logits are padded to this width
    expert_ffn_start: int = 0  # MoE: this rank's rows of every routed expert ...
    expert_ffn: int = 0
    shared_ffn_start: int = 0  # ... and of the shared expert
    shared_ffn: int = 0


def check_tp(spec: ModelSpec, tp: int) -> None:
    """Raise UserError when `spec` cannot be split over `tp` ranks."""
    if tp < 1:
        raise UserError(f"engine: tp must be >= 1, got {tp}")
    n, kv = spec.num_heads, spec.kv_heads
    if n % tp:
        raise UserError(f"{spec.name}: tp={tp} does not divide num_heads={n}")
    if kv % tp and tp % kv:
        raise UserError(
            f"{spec.name}: tp={tp} must divide num_kv_heads={kv} or be a multiple of it"
        )
    if spec.ffn_dim % tp:
        raise UserError(f"{spec.name}: tp={tp} does not divide ffn_size={spec.ffn_dim}")
    moe = spec.moe
    if moe is not None and (moe.expert_ffn_size % tp or moe.shared_ffn_size % tp):
        raise UserError(
            f"{spec.name}: tp={tp} must divide the expert FFN size ({moe.expert_ffn_size}) "
            f"and the shared expert's ({moe.shared_ffn_size})"
        )
    if spec.vocab_size < tp:
        raise UserError(f"{spec.name}: vocab_size={spec.vocab_size} is smaller than tp={tp}")


def partition(spec: ModelSpec, tp: int = 1, rank: int = 0) -> Layout:
    """This rank's slice of the model under `tp`-way tensor parallelism: its query heads, the
    KV heads they read, its FFN columns and vocabulary rows (Megatron-LM's column/row
    split). Raises UserError where tp does not divide the heads or FFN (check_tp)."""
    check_tp(spec, tp)
    q_heads = spec.num_heads // tp
    group = spec.num_heads // spec.kv_heads
    q_start = rank * q_heads
    kv_start = q_start // group
    kv_end = (q_start + q_heads - 1) // group + 1  # one past the KV head of the last query head
    ffn = spec.ffn_dim // tp
    chunk = -(-spec.vocab_size // tp)
    v0 = min(rank * chunk, spec.vocab_size)
    return Layout(
        tp=tp,
        rank=rank,
        q_start=q_start,
        q_heads=q_heads,
        kv_start=kv_start,
        kv_heads=kv_end - kv_start,
        ffn_start=rank * ffn,
        ffn=ffn,
        vocab_start=v0,
        vocab_end=min(v0 + chunk, spec.vocab_size),
        vocab_chunk=chunk,
        **_moe_slices(spec, tp, rank),
    )


def _moe_slices(spec: ModelSpec, tp: int, rank: int) -> dict[str, int]:
    if spec.moe is None:
        return {}
    expert, shared = spec.moe.expert_ffn_size // tp, spec.moe.shared_ffn_size // tp
    return {
        "expert_ffn_start": rank * expert,
        "expert_ffn": expert,
        "shared_ffn_start": rank * shared,
        "shared_ffn": shared,
    }


class Comm:
    """The collectives the decoder needs; no-ops for a single rank (tp=1)."""

    def __init__(self, group: Any = None) -> None:
        self.group = group
        self.size = dist.get_world_size(group) if group is not None else 1
        self.rank = dist.get_rank(group) if group is not None else 0
        self.nccl = group is not None and dist.get_backend(group) == "nccl"

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum x over the TP group in place (torch.distributed.all_reduce); x itself with one
        rank."""
        if self.size > 1:
            dist.all_reduce(x, group=self.group)
        return x

    def maximum(self, x: torch.Tensor) -> torch.Tensor:
        """The elementwise maximum of x over the TP group, in place; x itself with one rank."""
        if self.size > 1:
            dist.all_reduce(x, op=dist.ReduceOp.MAX, group=self.group)
        return x

    def gather_columns(self, x: torch.Tensor) -> torch.Tensor:
        """[n, c] on every rank -> [n, size·c], rank r's block at columns [r·c, (r+1)·c)."""
        if self.size == 1:
            return x
        out = x.new_empty(self.size, *x.shape)
        if self.nccl:  # one collective into one buffer; also what CUDA graphs capture best
            dist.all_gather_into_tensor(out.view(-1, x.shape[-1]), x.contiguous(), self.group)
        else:
            dist.all_gather(list(out.unbind(0)), x.contiguous(), group=self.group)
        return out.permute(1, 0, 2).reshape(x.shape[0], -1)

    def barrier(self) -> None:
        """Wait for every rank of the TP group; nothing with one rank."""
        if self.size > 1:
            dist.barrier(group=self.group)
