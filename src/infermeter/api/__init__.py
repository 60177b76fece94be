"""Black-box APIs: exact-size prompts, a timing client, parallel-load sweeps, noise analysis.

- tokenizers: count tokens offline (SentencePiece, tokenizer.json, bytes)
- prompts: prompts of exactly p tokens as a server counts them, calibrated and cached
- client: async requests (streaming or not) with retries, timing every chunk; a response
  counts only on evidence (http: the HTTP/1.1 client under it)
- load: bursts of c queries (Fig. 6), c kept in flight, or a request rate
- outcome: how an API run ended (counts by cause, exit code)
- analysis: per-point variation and raw vs denoised vs idealized runtime
"""
