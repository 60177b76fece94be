"""A mixture-of-experts FFN on one tensor-parallel rank: router, routed experts, shared expert.

Tensor parallelism shards every expert along its FFN dimension, like the dense FFN (each rank
holds rows [r·f/tp, (r+1)·f/tp) of every expert's gate and up and the matching columns of its
down projection), rather than placing whole experts on ranks (expert parallelism). Why: a
decode step's time is its slowest rank's bytes, and with whole experts per rank a batch's few
touched experts land unevenly (at batch 1 and top-4 of 128 over 2 ranks, all four on one rank
one time in eight), while sharding splits each touched expert's bytes exactly in tp equal
parts whatever the routing. It also keeps one all_reduce per layer, as a dense layer has. The
router is replicated: every rank routes the same (all-reduced) hidden states identically.

Routing (see spec.MoE): softmax or sigmoid scores, optional selection bias and group limits,
top-k, optional renormalisation and scale; weights in float32. Llama-4 (`input_scaled`, top-1)
scales each expert's input by its weight instead of its output (the expert is not linear, so
the two differ): every expert path starts from _scaled().

Expert paths, chosen once per engine (Decoder.moe_path):
- "triton": the grouped GEMM of moe_kernels.py (CUDA), reads only the experts a batch touches;
  one token (batch-1 decode) may take GEMVs of its k experts instead (`gemv`: where routing is
  fused, each mode self-checked, the fastest of them and the grouped GEMM timed at start;
  select.choose_moe);
- "loop": per expert, the tokens routed to it (data-dependent shapes: eager, CPU);
- "dense": every expert on every token, weighted by a dense routing matrix; static shapes
  (CUDA graphs) but it reads every expert: the fallback when Triton fails its self-check.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from infermeter.engine.layers import Norm, activation, fused_norm, linear, param
from infermeter.spec.model import ModelSpec


class MoELayer(nn.Module):
    """Router + routed experts (this rank's FFN slice of each) + optional shared expert."""

    def __init__(
        self,
        spec: ModelSpec,
        expert_ffn: int,
        shared_ffn: int,
        lead: bool,
        device: torch.device,
        dtype: torch.dtype,
    ) -> None:
        super().__init__()
        moe = spec.moe
        assert moe is not None
        h, e = spec.hidden_size, moe.num_experts
        kw = {"device": device, "dtype": dtype}
        self.spec, self.cfg, self.lead = spec, moe, lead
        self.gated, self.kind, self.extra = spec.gated, spec.ffn_kind, spec.extra
        self.f, self.fs = expert_ffn, shared_ffn
        width = (2 if self.gated else 1) * expert_ffn
        self.router = param(e, h, **kw)
        self.router_bias = param(e, **kw) if moe.router_bias else None
        self.score_bias = (
            param(e, device=device, dtype=torch.float32) if moe.score_correction else None
        )
        self.w13 = param(e, width, h, **kw)  # [gate; up] rows of this rank, per expert
        self.b13 = param(e, width, **kw) if moe.expert_bias else None
        self.w2 = param(e, h, expert_ffn, **kw)
        self.b2 = param(e, h, **kw) if moe.expert_bias else None
        self.ws_in = self.ws_down = self.shared_gate = None
        if shared_ffn:
            self.ws_in = param((2 if self.gated else 1) * shared_ffn, h, **kw)
            self.ws_down = param(h, shared_ffn, **kw)
            self.shared_gate = param(1, h, **kw) if moe.shared_gate else None
        self.path = "loop"
        self.kernels: Any = None
        self.gemv: str | None = None  # batch-1 expert GEMVs on the triton path: "sum", "pairs"
        self.batch1_us: dict[str, float | None] | None = None  # per path, timed at start
        self.route_warps: int | None = None  # route_align's warps; None: by the tokens
        self.last_ids: Tensor | None = None  # set by record(): routing of the last forward
        self.record = False

    # ---- routing -------------------------------------------------------------------------
    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x [T, h] -> (expert ids [T, k] int64, weights [T, k] float32)."""
        cfg = self.cfg
        logits = F.linear(x, self.router, self.router_bias).float()
        scores = logits.softmax(-1) if cfg.scoring == "softmax" else logits.sigmoid()
        if self.score_bias is not None:
            choice = scores + self.score_bias
        elif cfg.scoring == "sigmoid" and cfg.groups == 1:  # the same order as the sigmoid's,
            choice = logits  # without float32's ties at 1 (transformers' Llama4Router ranks
        else:  # its logits)
            choice = scores
        if cfg.groups > 1:
            grouped = choice.view(x.shape[0], cfg.groups, -1)
            if cfg.group_score == "top2":
                group = grouped.topk(2, dim=-1).values.sum(-1)
            else:
                group = grouped.max(dim=-1).values
            keep = torch.zeros_like(group)
            keep.scatter_(1, group.topk(cfg.top_groups, dim=-1).indices, 1.0)
            masked = keep[:, :, None].expand_as(grouped).reshape(choice.shape) == 0
            choice = choice.masked_fill(masked, -torch.inf)
        ids = choice.topk(cfg.experts_per_token, dim=-1).indices
        weights = scores.gather(1, ids)
        if cfg.normalize:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        if cfg.scale != 1.0:
            weights = weights * cfg.scale
        if self.record:
            self.last_ids = ids
        return ids, weights

    # ---- experts -------------------------------------------------------------------------
    def _act(self, y: Tensor, width: int) -> Tensor:
        if not self.gated:
            if self.kind == "relu":
                return F.relu(y)
            return F.gelu(y, approximate="none" if self.kind == "gelu_exact" else "tanh")
        return activation(y, self.kind, width, self.extra)

    def _scaled(self, x: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
        """(expert input, output weights): x and the routing weights as they are, or with
        input scaling (Llama-4, top-1) x·weight in x's dtype (the weight rounded to it first,
        as transformers' Llama4TextMoe does) and weights of 1."""
        if not self.cfg.input_scaled:
            return x, weights
        return x * weights.to(x.dtype), torch.ones_like(weights)

    def _loop(self, x: Tensor, ids: Tensor, weights: Tensor) -> Tensor:
        x, weights = self._scaled(x, weights)
        out = torch.zeros_like(x)
        for e in torch.unique(ids).tolist():
            token, slot = torch.where(ids == e)
            y = F.linear(x[token], self.w13[e], None if self.b13 is None else self.b13[e])
            y = F.linear(self._act(y, self.f), self.w2[e])
            if self.b2 is not None and self.lead:
                y = y + self.b2[e]
            out.index_add_(0, token, (y * weights[token, slot, None]).to(x.dtype))
        return out

    def _dense(self, x: Tensor, ids: Tensor, weights: Tensor) -> Tensor:
        x, weights = self._scaled(x, weights)
        dense = torch.zeros(x.shape[0], self.cfg.num_experts, device=x.device)
        dense.scatter_(1, ids, weights)  # [T, E] routing weights, 0 where not chosen
        y = torch.einsum("th,efh->etf", x, self.w13)
        if self.b13 is not None:
            y = y + self.b13[:, None]
        y = torch.einsum("etf,ehf->eth", self._act(y, self.f), self.w2)
        if self.b2 is not None and self.lead:
            y = y + self.b2[:, None]
        return torch.einsum("eth,te->th", y.float(), dense).to(x.dtype)

    def _triton(
        self, x: Tensor, ids: Tensor, weights: Tensor, layout: tuple[Tensor, Tensor] | None = None
    ) -> Tensor:
        x, weights = self._scaled(x, weights)
        k = self.kernels
        tokens, topk = ids.shape
        pairs = tokens * topk
        if layout is None:
            small = pairs <= 4 * k.DECODE_BLOCK_M
            block = k.DECODE_BLOCK_M if small else k.PREFILL_BLOCK_M
            layout = k.align(ids, self.cfg.num_experts, block)
        rows, blocks = layout
        if self.gated:  # the gated activation rides in the first GEMM's epilogue
            y = k.grouped_linear(
                x, self.w13, rows, blocks, pairs, topk, self.b13, act=self.kind,
                **self._glu_args(),
            )  # fmt: skip
        else:
            y = self._act(k.grouped_linear(x, self.w13, rows, blocks, pairs, topk, self.b13), 0)
        bias = self.b2 if self.lead else None
        y = k.grouped_linear(y, self.w2, rows, blocks, pairs, 1, bias, weights.reshape(-1))
        return y.view(tokens, topk, -1).sum(1)

    def _glu_args(self) -> dict[str, float]:
        """gpt-oss's clamped SiLU constants for the kernels' gated epilogue (defaults else)."""
        return {
            "limit": self.extra.get("swiglu_limit", 7.0),
            "alpha": self.extra.get("swiglu_alpha", 1.702),
        }

    def _one_token(
        self,
        x: Tensor,
        ids: Tensor,
        weights: Tensor,
        residual: Tensor | None = None,
        norm: Norm | None = None,
    ) -> Tensor:
        """A batch-1 decode step's experts: GEMVs of the k chosen experts (expert_gemv), the
        gated activation in the first one's epilogue (and x's pre-`norm` as it loads x); the
        second sums over k itself ("sum", adding `residual` in its epilogue too) or writes k
        rows summed after it ("pairs")."""
        x, weights = self._scaled(x, weights)  # norm is None then (see _takes_norm)
        k, topk = self.kernels, ids.shape[1]
        pre = (norm.weight, norm.eps) if norm is not None else None
        if self.gated:
            y = k.expert_gemv(
                x, self.w13, ids, topk, self.b13, act=self.kind, norm=pre,
                **self._glu_args(),
            )  # fmt: skip
        else:
            y = self._act(k.expert_gemv(x, self.w13, ids, topk, self.b13, norm=pre), 0)
        bias = self.b2 if self.lead else None
        if self.gemv == "sum":
            return k.expert_gemv(
                y, self.w2, ids, 1, bias, weights.reshape(-1), total=True, residual=residual
            )
        y = k.expert_gemv(y, self.w2, ids, 1, bias, weights.reshape(-1)).sum(0, keepdim=True)
        return y if residual is None else y + residual

    def _fused(self, tokens: int) -> bool:
        """Whether `tokens` tokens route and align in one Triton launch (decode sizes)."""
        cfg = self.cfg
        return (
            self.path == "triton"
            and cfg.groups == 1
            and self.kernels.fused_routing(tokens, cfg.experts_per_token, cfg.num_experts)
        )

    def _takes_norm(self, x: Tensor, norm: Norm | None, fast: Any) -> bool:
        """Whether this layer's GEMVs apply x's pre-norm themselves: one token on the expert
        GEMVs (router, experts and shared experts all whole-rows GEMVs; no shared gate, which
        reads the normed x through torch; not with input scaling, which scales the normed x)."""
        return (
            not self.cfg.input_scaled
            and fused_norm(norm, x, fast)
            and self.gemv is not None
            and self.shared_gate is None
            and self._fused(1)
        )

    def _routed(
        self,
        x: Tensor,
        fast: Any,
        residual: Tensor | None = None,
        norm: Norm | None = None,
    ) -> Tensor:
        """The routed experts' output (+ residual): decode sizes route and align in one Triton
        launch (one token on the GEMVs: routing alone, no layout to build; `norm`, x's
        pre-norm, only there, see _takes_norm)."""
        cfg, k = self.cfg, self.kernels
        tokens = x.shape[0]
        if self._fused(tokens):
            logits = linear(x, self.router, self.router_bias, fast, norm)
            gemv = tokens == 1 and self.gemv is not None
            ids, weights, rows, blocks = k.route_align(
                logits, cfg.experts_per_token, sigmoid=cfg.scoring == "sigmoid",
                normalize=cfg.normalize, scale=cfg.scale, score_bias=self.score_bias,
                layout=not gemv, warps=self.route_warps,
            )  # fmt: skip
            if self.record:
                self.last_ids = ids
            if gemv:
                return self._one_token(x, ids, weights, residual, norm)
            assert rows is not None and blocks is not None
            y = self._triton(x, ids, weights, (rows, blocks))
        else:
            ids, weights = self.route(x)
            experts = {"triton": self._triton, "dense": self._dense}.get(self.path, self._loop)
            y = experts(x, ids, weights)
        return y if residual is None else y + residual

    def forward(
        self, x: Tensor, residual: Tensor | None, fast: Any = None, norm: Norm | None = None
    ) -> Tensor:
        """x [T, h] -> this rank's partial output (+ residual), to be all-reduced; `fast` is
        the Triton decode kernels module on the decode path (GEMVs), else None; `norm` is x's
        pre-norm, not yet applied (None: x is the layer's input as it is): the one-token
        GEMVs apply it as they load x, any other path first."""
        if norm is not None and not self._takes_norm(x, norm, fast):
            x, norm = norm(x, fast), None
        y = self._routed(x, fast, residual, norm)  # the residual rides in its last kernel
        if self.ws_in is not None:
            assert self.ws_down is not None
            shared = linear(x, self.ws_in, None, fast, norm)
            if fast is not None and self.kind == "swiglu":
                shared = fast.silu_mul(shared, self.fs)
            else:
                shared = self._act(shared, self.fs)
            if self.shared_gate is None and fast is not None and x.shape[0] <= fast.SMALL_M:
                return fast.small_linear(shared, self.ws_down, None, y)  # y added in epilogue
            s = linear(shared, self.ws_down, None, fast)
            if self.shared_gate is not None:
                s = s * torch.sigmoid(F.linear(x, self.shared_gate))
            y = y + s
        return y
