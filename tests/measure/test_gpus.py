"""GPU identity against a fake NVML of four GPUs: indices, UUIDs and MIG instances in
CUDA_VISIBLE_DEVICES map to the right card, or are refused in one line; the meter measures
that card and no other."""

from __future__ import annotations

import pytest

from fake_nvml import FakeClock, FakeGpu, FakeNvml, fake_uuid, mig_instance
from infermeter.errors import UserError
from infermeter.measure.gpus import cuda_ordinal, resolve_gpus
from infermeter.measure.meter import Meter

JOB = 2  # the job's GPU draws 400 W, the others idle at 60 W (the reproduction)


def machine(clock: FakeClock | None = None, **gpu_options: object) -> FakeNvml:
    gpus = [FakeGpu(power=lambda t, i=i: 400.0 if i == JOB else 60.0) for i in range(4)]
    for gpu in gpus:
        for key, value in gpu_options.items():
            setattr(gpu, key, value)
    return FakeNvml(gpus, clock=clock)


def nvml_indices(env: dict[str, str], device: str = "cuda", count: int = 1) -> list[int]:
    refs = resolve_gpus(device, count, machine(), environ=env, cuda_uuid=None)
    return [r.nvml_index for r in refs]


def test_indices_and_device_ordinals() -> None:
    assert nvml_indices({}) == [0]
    assert nvml_indices({}, "cuda:1", 2) == [1, 2]
    assert nvml_indices({"CUDA_VISIBLE_DEVICES": "2,3"}) == [2]
    assert nvml_indices({"CUDA_VISIBLE_DEVICES": "2,3"}, "cuda:1") == [3]
    assert nvml_indices({"CUDA_VISIBLE_DEVICES": "3,1"}, "cuda", 2) == [3, 1]
    assert cuda_ordinal("cuda:3") == 3 and cuda_ordinal("auto") == 0
    with pytest.raises(UserError, match="not a GPU"):
        cuda_ordinal("cpu")


def test_uuids_and_unique_prefixes_resolve_through_nvml() -> None:
    assert nvml_indices({"CUDA_VISIBLE_DEVICES": fake_uuid(JOB)}) == [JOB]
    assert nvml_indices({"CUDA_VISIBLE_DEVICES": f"{fake_uuid(3)},{fake_uuid(JOB)}"}, "cuda:1") == [
        JOB
    ]
    assert nvml_indices({"CUDA_VISIBLE_DEVICES": fake_uuid(JOB)[:-1].lower() + "2"}) == [JOB]
    with pytest.raises(UserError, match="matches 4 GPUs"):
        nvml_indices({"CUDA_VISIBLE_DEVICES": "GPU-3f2a9c1e"})
    with pytest.raises(UserError, match=r"matches no GPU of this machine.*nvidia-smi -L"):
        nvml_indices({"CUDA_VISIBLE_DEVICES": "GPU-ffffffff-0000-4000-8000-000000000002"})
    with pytest.raises(UserError, match="not an index"):
        nvml_indices({"CUDA_VISIBLE_DEVICES": "gpu2"})


def test_what_cannot_be_told_is_refused_in_one_line() -> None:
    for env, device, count in (
        ({"CUDA_VISIBLE_DEVICES": "2"}, "cuda:1", 1),
        ({"CUDA_VISIBLE_DEVICES": "2"}, "cuda", 2),
        ({"CUDA_VISIBLE_DEVICES": "-1"}, "cuda", 1),
        ({"CUDA_VISIBLE_DEVICES": ""}, "cuda", 1),
        ({"CUDA_VISIBLE_DEVICES": "1,-1,2"}, "cuda:1", 1),  # CUDA stops at -1
    ):
        with pytest.raises(UserError, match="shows") as error:
            nvml_indices(env, device, count)
        assert "\n" not in str(error.value)
    with pytest.raises(UserError, match="names no GPU"):
        nvml_indices({"CUDA_VISIBLE_DEVICES": "7"})
    with pytest.raises(UserError, match="one GPU twice"):
        nvml_indices({"CUDA_VISIBLE_DEVICES": f"2,{fake_uuid(2)}"}, "cuda", 2)


def test_mixed_models_need_pci_bus_order_for_indices() -> None:
    nvml = machine()
    nvml.gpus[0].name = "NVIDIA A100-SXM4-80GB"
    with pytest.raises(UserError, match="CUDA_DEVICE_ORDER=PCI_BUS_ID"):
        resolve_gpus("cuda", 1, nvml, environ={"CUDA_VISIBLE_DEVICES": "2"}, cuda_uuid=None)
    env = {"CUDA_VISIBLE_DEVICES": "2", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}
    assert resolve_gpus("cuda", 1, nvml, environ=env, cuda_uuid=None)[0].nvml_index == 2
    # A UUID needs no order.
    env = {"CUDA_VISIBLE_DEVICES": fake_uuid(2)}
    assert resolve_gpus("cuda", 1, nvml, environ=env, cuda_uuid=None)[0].nvml_index == 2


def test_the_uuid_cuda_reports_wins_over_the_variable() -> None:
    """Where torch runs CUDA, the ordinal's own UUID (bare, as torch prints it) decides."""
    reported = {0: fake_uuid(3).removeprefix("GPU-")}
    refs = resolve_gpus("cuda", 1, machine(), environ={}, cuda_uuid=reported.get)
    assert refs[0].nvml_index == 3
    refs = resolve_gpus("cuda:1", 1, machine(), environ={}, cuda_uuid=reported.get)
    assert refs[0].nvml_index == 1  # no UUID for ordinal 1: the variable (absent) decides


def test_a_uuid_picked_job_meters_its_own_gpu() -> None:
    """The issue's reproduction: the job's GPU (2, 400 W) chosen by UUID is the one metered
    (about 200 J over 0.5 s), not GPU 0 (30 J)."""
    clock = FakeClock()
    nvml = machine(clock)
    env = {"CUDA_VISIBLE_DEVICES": fake_uuid(JOB)}
    meter = Meter(
        resolve_gpus("cuda", 1, nvml, environ=env, cuda_uuid=None),
        interval_s=0.01,
        nvml=nvml,
        clock=clock,
    )
    with meter:
        meter.begin("w")
        clock.advance(0.5)
        window = meter.end("w")
    assert meter.gpus == [JOB] and meter.describe()["gpus"][0]["uuid"] == fake_uuid(JOB)
    assert window.total_j == pytest.approx(400 * window.seconds, rel=0.02)


def mig_machine(has_power: bool = False) -> tuple[FakeNvml, str]:
    nvml = machine()
    uuid = "MIG-7b1e2f30-0000-4000-8000-0000000000a1"
    instance = mig_instance(uuid, gpu_instance=3, compute_instance=0)
    instance.has_power = has_power
    nvml.gpus[JOB].migs = [mig_instance("MIG-7b1e2f30-0000-4000-8000-0000000000a0"), instance]
    return nvml, uuid


def test_mig_instances_are_resolved_and_refused_where_nvml_cannot_meter_them() -> None:
    nvml, uuid = mig_machine()
    for entry in (uuid, f"MIG-{fake_uuid(JOB)}/3/0"):
        (ref,) = resolve_gpus("cuda", 1, nvml, environ={"CUDA_VISIBLE_DEVICES": entry})
        assert ref.mig and ref.uuid == uuid and ref.nvml_index == JOB
    with pytest.raises(UserError, match=r"MIG instance .* cannot be metered.*--no-energy"):
        Meter([ref], nvml=nvml)
    with pytest.raises(UserError, match="no MIG instance"):
        resolve_gpus("cuda", 1, nvml, environ={"CUDA_VISIBLE_DEVICES": f"MIG-{fake_uuid(1)}/1/0"})


def test_a_mig_instance_nvml_can_read_is_metered_itself() -> None:
    clock = FakeClock()
    nvml, uuid = mig_machine(has_power=True)
    nvml.clock = clock
    nvml.gpus[JOB].migs[1].power = lambda t: 90.0
    (ref,) = resolve_gpus("cuda", 1, nvml, environ={"CUDA_VISIBLE_DEVICES": uuid})
    with Meter([ref], interval_s=0.01, nvml=nvml, clock=clock) as meter:
        meter.begin("w")
        clock.advance(0.3)
        window = meter.end("w")
    assert window.method == "integrated"
    assert window.total_j == pytest.approx(90 * window.seconds, rel=0.05)


def test_device_cuda_n_meters_gpu_n_and_its_ranks_the_next(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert Meter.for_device("cuda:1", 1, nvml=machine()).gpus == [1]
    assert Meter.for_device("cuda:1", 2, nvml=machine()).gpus == [1, 2]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", f"{fake_uuid(3)},{fake_uuid(JOB)}")
    meter = Meter.for_device("cuda:1", 1, nvml=machine())
    assert meter.gpus == [JOB] and meter.refs[0].cuda_index == 1


def test_a_gpu_cuda_does_not_show_is_refused_in_one_line(tmp_path: object) -> None:
    """Without that GPU (here: no CUDA at all) `--device cuda:1` stops before anything runs."""
    from typer.testing import CliRunner

    from infermeter.cli.main import app
    from infermeter.store.provenance import cuda_device_name

    if cuda_device_name("cuda:1") is not None:
        pytest.skip("this machine has a second GPU")
    result = CliRunner().invoke(app, ["profile", "tiny-llama", "--device", "cuda:1"])
    assert result.exit_code == 2
    assert "--device cuda:1 asked for, but CUDA shows no such GPU" in result.output
