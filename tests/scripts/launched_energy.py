"""One rank of a two-"node" torchrun job on 127.0.0.1 (tests/engine/test_launched.py): a metered
tp-2
profile of tiny-llama and one dataset batch, each node metering its own fake GPU (node 0 draws
300 W, node 1 200 W), rank 0 gathering them. Rank 0 writes the store and, as JSON to argv[2],
the batch window's record."""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # fake_nvml

from fake_nvml import FakeGpu, FakeNvml
from infermeter.backends.engine import EngineBackend
from infermeter.engine.launched import join, launch_env, serve
from infermeter.experiments.energy import generate_batch
from infermeter.experiments.profile import ProfileGrid, run_profile
from infermeter.measure.cluster import ClusterMeter
from infermeter.measure.meter import Meter
from infermeter.spec.catalog import get_spec
from infermeter.store.db import Store

WATTS = {0: 300.0, 1: 200.0}  # by node
env = launch_env()
assert env is not None and env.nodes == 2, "run me under torchrun, two nodes"


def node_meter(options: dict) -> Meter:
    """This node's own GPU, drawing its node's constant power (time: this process's)."""
    return Meter(nvml=FakeNvml([FakeGpu(power=lambda t: WATTS[env.node])]), **options)


if env.rank != 0:
    sys.exit(serve(node_meter))
options = {"interval_s": 0.01}
meter = ClusterMeter(node_meter(options), join(env), options)
spec = get_spec("tiny-llama")
with Store(sys.argv[1]) as store:
    run = run_profile(
        store, spec, {}, EngineBackend(device="cpu", tp=2, timeout_s=120), {"tp": 2},
        ProfileGrid((1, 8), (1, 4), (1,), 1), meter=meter, min_energy_window_s=0.2,
    )  # fmt: skip
    assert run.status == "complete", run.status
backend = EngineBackend(device="cpu", tp=2, timeout_s=120)
backend.prepare(spec)
meter.start()
try:  # a window inside the engine call: the ranks open and close it together
    generation, window, _ = generate_batch(backend, [[1, 5, 9], [7, 3]], 6, (), 0, meter)
finally:
    meter.stop()
    backend.close()
assert window is not None
Path(sys.argv[2]).write_text(
    json.dumps({**window.as_extra(), "runtime_s": generation.runtime_s, "seconds": window.seconds})
)
