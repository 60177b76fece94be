"""Measuring: energy windows on NVML, power caps, which GPUs, CPU threads, memory.

- meter.py     Meter: energy windows (NVML total-energy counter, sampled power), idle power
- window.py    EnergyWindow (what a window measured) and Window (the handle work holds)
- cluster.py   one meter over the GPUs of several ranks and nodes
- powercap.py  power limits set and restored through NVML
- gpus.py      the GPUs a process runs on, however they are named (indices, UUIDs, MIG)
- cpu.py       CPU threads for a run on a shared machine
- memory.py    whether a model fits before it is loaded
"""
