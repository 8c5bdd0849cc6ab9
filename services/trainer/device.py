"""What the training device can do: decides spec defaults (num_gpus, precision), refusals
(qlora) and the memory a job is checked against."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

PROBE_TIMEOUT_S = 300  # importing torch (and CUDA init) on a cold, busy machine


@dataclass(frozen=True)
class DeviceInfo:
    cuda: bool
    gpu_count: int
    # Total memory of one training device (one GPU, or the host's RAM on CPU), in bytes.
    memory_bytes: int
    name: str
    # CPUs with AVX512-BF16 or AMX run bf16 fast; on plain AVX2 it is ~3x slower than fp32.
    cpu_bf16: bool = False


def cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def _read(path: str) -> str:
    with open(path) as f:
        return f.read().strip()


def cgroup_cpu_limit() -> int | None:
    """Whole CPUs this container may use (cgroup v2 ``cpu.max``, rounded up), if limited. A
    Kubernetes ``limits.cpu`` of 2 on a 64-core node is 2 here, while the affinity mask still
    lists all 64."""
    try:
        quota, period = _read("/sys/fs/cgroup/cpu.max").split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def physical_cores(cpus: set[int]) -> int:
    """Physical cores among ``cpus`` (hyper-threads of one core count once): torch's matmuls
    gain nothing from a core's second thread and lose to the contention."""
    cores = set()
    for cpu in cpus:
        topology = f"/sys/devices/system/cpu/cpu{cpu}/topology/"
        try:
            cores.add((_read(topology + "physical_package_id"), _read(topology + "core_id")))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return len(cores)


def training_threads() -> tuple[int, str]:
    """Intra-op threads for a CPU training process, and why: ``OMP_NUM_THREADS`` when the
    operator set it; else the physical cores this process may run on, capped by the
    container's CPU limit."""
    env = os.environ.get("OMP_NUM_THREADS", "")
    if env.isdigit() and int(env) > 0:
        return int(env), "OMP_NUM_THREADS"
    cores = physical_cores(os.sched_getaffinity(0))
    limit = cgroup_cpu_limit()
    if limit is not None and limit < cores:
        return limit, f"the container's CPU limit ({limit}; {cores} physical cores visible)"
    return cores, "physical cores available to the worker"


def probe_device() -> DeviceInfo:
    """This machine's device as torch sees it (what the workers will train on)."""
    import psutil
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return DeviceInfo(
            cuda=True,
            gpu_count=torch.cuda.device_count(),
            memory_bytes=props.total_memory,
            name=f"cuda:{props.name}",
            cpu_bf16=cpu_has_fast_bf16(),
        )
    return DeviceInfo(
        cuda=False,
        gpu_count=0,
        memory_bytes=psutil.virtual_memory().total,
        name="cpu",
        cpu_bf16=cpu_has_fast_bf16(),
    )


def detect_device(memory_override: int | None = None) -> DeviceInfo:
    """The device of this machine. ``memory_override`` replaces the detected memory (settings).

    Probed in a child process (``python -m services.trainer.device``): importing torch for
    this one question would cost the long-lived service seconds of start and hundreds of MiB
    that only the workers need."""
    try:
        probe = subprocess.run(
            [sys.executable, "-m", __name__],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            cwd=Path(__file__).resolve().parents[2],
            check=True,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        detail = (getattr(exc, "stderr", "") or "").strip().splitlines()[-1:] or [str(exc)]
        raise RuntimeError(f"probing the training device failed: {detail[0]}") from None
    device = DeviceInfo(**json.loads(probe.stdout.strip().splitlines()[-1]))
    if memory_override:
        device = replace(device, memory_bytes=memory_override)
    return device


def host_cpu(device: DeviceInfo, host_memory_bytes: int) -> DeviceInfo:
    """The CPU beside ``device``, with the host's memory: where a job that asks for no GPU
    (num_gpus 0, an export) runs on a GPU machine. On a CPU machine that is ``device`` itself
    (its memory as detected or as configured)."""
    if not device.cuda:
        return device
    return DeviceInfo(
        cuda=False,
        gpu_count=0,
        memory_bytes=host_memory_bytes,
        name="cpu",
        cpu_bf16=device.cpu_bf16,
    )


def cluster_gpu_device(gpus: int, memory_bytes: int) -> DeviceInfo:
    """The device a Kubernetes GPU node offers, as configured (the service cannot see it)."""
    return DeviceInfo(cuda=True, gpu_count=gpus, memory_bytes=memory_bytes, name="cuda:k8s")


if __name__ == "__main__":
    print(json.dumps(asdict(probe_device())))
