"""Black-box APIs: exact-size prompts, a timing client, parallel-load sweeps, noise analysis.

- tokenizers: count tokens offline (SentencePiece, tokenizer.json, bytes)
- prompts: prompts of exactly p tokens as a server counts them, calibrated and cached
- client: async requests (streaming or not) with retries, timing every token
- load: the parallel-load sweep (runtime vs queries in flight)
- analysis: per-point variation and raw vs denoised vs idealized runtime
"""
