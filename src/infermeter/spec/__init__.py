"""What is modelled and what it runs on.

- model.py     ModelSpec: the architecture as numbers (layers, heads, experts, windows), its
               parameter count, FLOPs and bytes per token (paper 1 §3.2)
- catalog.py   named specs: the paper's Table 1 models, LLaMA, today's families, test specs
- hfconfig.py  a Hugging Face config.json read into a ModelSpec
- hardware.py  accelerators (peak FLOP/s, bandwidth, TDP, price, each with its source) and Stack
"""
