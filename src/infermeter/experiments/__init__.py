"""Experiments: resumable runs that measure a backend and land every result in the store.

- base.py      the Experiment protocol the three below implement (after optimum-benchmark)
- run.py       the resumable run's life, written once: claim, find, what is left, open, status
- profile.py   the (prompt size, output length) grid of paper 1 §3.3, with validation queries
- second_look.py  the grid points a profile measures again, where their neighbours contradict them
- energy.py    the Words-to-Watts benchmark of paper 2 (datasets × batch sizes × lengths × caps)
- load.py      black-box API load: bursts, concurrency, request rates (paper 1 Fig. 6)
- sweep.py     many runs from a SWEEP.toml, one after another or on Ray
- plans.py     an experiment's plan from a caller's choices (grids, sweeps, defaults), checked
"""
