"""The reference engine: a compact, fast decoder built from a ModelSpec (our "Megatron").

- model.py     the decoder: fused QKV and gate/up, static KV cache, flash/SDPA attention
- layers.py    what every layer is made of: parameters, norms, projections, gated activations
- attention.py windows, sinks, soft-capping, multi-head latent attention
- moe.py       mixture-of-experts layers; moe_kernels.py: their Triton grouped GEMM
- rope.py      rotary tables (plain, linear, llama3, YaRN)
- weights.py   random weights drawn on the device; checkpoint.py: local HF checkpoints
- generate.py  prefill, CUDA-graph decode, on-device sampling and stop tokens, event timing
- select.py    picks the decode attention (triton | flash | sdpa) by self-check
- kernels.py   Triton decode kernels: flash-decoding, rotary+cache write, RMSNorm, GEMV
- parallel.py  tensor-parallel layout and collectives
- launch.py    one process per rank (torch.multiprocessing spawn), with deadlines
- ranks.py     where a rank sits in a torchrun/srun job (torch-free), what its answer means
- launched.py  ranks a launcher started: commands, heartbeats, process groups
- launcher.py  the first call of a command every launched rank runs (serve_if_follower)

`infermeter.backends.engine.EngineBackend` wraps it in the Backend protocol. Needs torch.
"""

from infermeter.engine.checkpoint import load_hf_checkpoint
from infermeter.engine.generate import Engine, Generation, sample_top_p
from infermeter.engine.model import Decoder
from infermeter.engine.parallel import Comm, Layout, check_tp, partition
from infermeter.engine.weights import (
    assign,
    init_random,
    load_state,
    logical_tensors,
)

__all__ = [
    "Comm",
    "Decoder",
    "Engine",
    "Generation",
    "Layout",
    "assign",
    "check_tp",
    "init_random",
    "load_hf_checkpoint",
    "load_state",
    "logical_tensors",
    "partition",
    "sample_top_p",
]
