"""What an experiment is (after optimum-benchmark's scenarios/base.py): a named way of measuring
a backend under a configuration into one resumable run of the store.

Each experiment module implements it (profile.ProfileExperiment, energy.EnergyExperiment,
load.LoadExperiment) on top of infermeter.experiments.run's resumable run, and keeps a plain
function (run_profile, run_energy, run_load_sweep) as the entry point the CLI calls.
"""

from __future__ import annotations

from typing import Any, ClassVar, Protocol, TypeVar, runtime_checkable

from infermeter.store.db import RunRecord, Store

ConfigT = TypeVar("ConfigT", contravariant=True)
ProgressT = TypeVar("ProgressT", contravariant=True)


@runtime_checkable
class Experiment(Protocol[ConfigT, ProgressT]):
    """Measure `backend` under `config` into `store`, resuming a run stored with the same key.

    `backend` is what the experiment drives (a Backend, or a factory of them by shard count),
    `meter` the energy meter (or its factory, or None: runtime only), `progress` the callbacks
    told of the run's start and of each result as it is stored. Returns the run's record with
    its final status ("complete", "partial" or, re-raised after recording it, "interrupted").
    """

    name: ClassVar[str]

    def run(
        self, store: Store, backend: Any, config: ConfigT, meter: Any, progress: ProgressT
    ) -> RunRecord:
        """Measure into one run of `store` and return its record (see the class docstring)."""
