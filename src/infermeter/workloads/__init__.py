"""What is asked: datasets, prompts of an exact token count, query files.

- datasets.py  GSM8K and Alpaca-format prompt sets, where data files are looked for
- tokenizer.py count tokens offline (SentencePiece, tokenizer.json, bytes)
- textgen.py   prompt text of a given length from a corpus
- prompts.py   prompts of exactly p tokens as a server counts them, calibrated and cached
- queries.py   query files (CSV, JSONL, JSON, Parquet) read and checked
"""
