"""CreateJob's memory check against the device the job really uses: the GPUs when it trains on
them, the host's memory for num_gpus 0 (a GPU trainer included), and only what the jobs that
may run beside it leave free."""

from __future__ import annotations

import pytest

from services.common.errors import FailedPrecondition, ResourceExhausted
from services.common.stubs import trainer_pb2
from services.trainer.admission import Admission
from services.trainer.device import DeviceInfo
from services.trainer.memory import GIB, ActiveJob
from tests.helpers.admission_registry import RegistryAtVersionOne

TWO_GPUS = DeviceInfo(cuda=True, gpu_count=2, memory_bytes=80 * GIB, name="cuda:H100")
CPU = DeviceInfo(cuda=False, gpu_count=0, memory_bytes=24 * GIB, name="cpu")
# The test suite's job (batch 4 x 128 tokens): ~2.1 GiB on the CPU, measured.
SMALL = dict(batch_size=4, max_seq_length=128)
# batch 2 x 512 tokens: ~5.3 GiB on the CPU, measured.
MEDIUM = dict(batch_size=2, max_seq_length=512)


def training(num_gpus: int | None = None, **hp) -> trainer_pb2.JobSpec:
    spec = trainer_pb2.TrainingSpec(
        base_model="smollm2-135m-instruct",
        dataset="shop-sql",
        output_name="sql-lora",
        hyperparameters=trainer_pb2.Hyperparameters(**hp),
    )
    if num_gpus is not None:
        spec.num_gpus = num_gpus
    return trainer_pb2.JobSpec(training=spec)


def admission(device: DeviceInfo, host_gib: float = 24, runner: str = "local") -> Admission:
    return Admission(RegistryAtVersionOne(), device, runner, host_memory_bytes=int(host_gib * GIB))


def test_an_unset_num_gpus_trains_on_every_gpu_and_is_checked_against_gpu_memory():
    admitted = admission(TWO_GPUS, host_gib=2).admit(training(**SMALL))
    assert admitted.config.num_gpus == 2 and admitted.config.zero_stage == 2
    assert admitted.estimate.device == "cuda:H100"
    assert admitted.estimate.available_bytes == 80 * GIB


def test_an_explicit_zero_on_a_gpu_trainer_is_checked_against_host_memory():
    small_host = admission(TWO_GPUS, host_gib=2)
    estimate = small_host.admit(training(0, **SMALL), enforce_fit=False).estimate
    assert (estimate.device, estimate.available_bytes) == ("cpu", 2 * GIB)
    with pytest.raises(FailedPrecondition) as refused:
        small_host.admit(training(0, **SMALL))
    assert refused.value.code == "out_of_memory"
    assert "cpu has 2.0 GiB" in refused.value.message
    config = admission(TWO_GPUS, host_gib=24).admit(training(0, **SMALL)).config
    assert config.num_gpus == 0 and config.precision == "fp32"  # the CPU's precision


def test_jobs_that_may_run_beside_a_new_one_leave_it_only_what_they_do_not_hold():
    cpu = admission(CPU)
    alone = cpu.admit(training(**MEDIUM)).estimate
    busy = [
        ActiveJob("job-big", "cpu", 20 * GIB),
        ActiveJob("job-small", "cpu", 1 * GIB),
        ActiveJob("job-gpu", "cuda:H100", 70 * GIB),  # another device: holds nothing here
    ]
    # Two at a time: the largest other job on the CPU may run beside the new one.
    with pytest.raises(ResourceExhausted) as refused:
        cpu.admit(training(**MEDIUM), active=busy, slots=2)
    message = refused.value.message
    assert refused.value.code == "out_of_memory"
    assert "cpu has 4.0 GiB free for it (24.0 GiB less" in message
    assert "job-big 20.0 GiB" in message and "job-small" not in message
    assert "once job-big has finished (or cancel it)" in message
    estimate = cpu.admit(training(**SMALL), active=busy, slots=2).estimate
    assert estimate.available_bytes == 4 * GIB and estimate.held == (("job-big", 20 * GIB),)
    # Three at a time: both may; one at a time: the queue starts it when the device is free.
    three = cpu.admit(training(**SMALL), active=busy, slots=3).estimate
    assert three.available_bytes == 3 * GIB
    one = cpu.admit(training(**MEDIUM), active=busy, slots=1).estimate
    assert one.available_bytes == 24 * GIB and one.peak_bytes == alone.peak_bytes


def test_a_kubernetes_job_gets_a_pod_of_its_own():
    k8s = admission(CPU, runner="kubernetes")
    busy = [ActiveJob("job-big", "cpu", 20 * GIB)]
    assert k8s.admit(training(**MEDIUM), active=busy, slots=4).estimate.available_bytes == 24 * GIB


def test_an_export_is_checked_against_the_host_beside_the_cpu_jobs():
    gpu = admission(TWO_GPUS, host_gib=24)
    export = trainer_pb2.JobSpec(
        export=trainer_pb2.ExportSpec(adapter="sql-lora", output_name="sql-merged")
    )
    busy = [ActiveJob("job-cpu", "cpu", 10 * GIB), ActiveJob("job-gpu", "cuda:H100", 70 * GIB)]
    estimate = gpu.admit(export, active=busy, slots=2).estimate
    assert (estimate.device, estimate.available_bytes) == ("cpu", 14 * GIB)
