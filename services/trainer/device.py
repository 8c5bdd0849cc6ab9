"""What the training device can do: decides spec defaults (precision) and refusals (qlora)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


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


def detect_device(memory_override: int | None = None) -> DeviceInfo:
    """The device of this machine. ``memory_override`` replaces the detected memory (settings)."""
    import psutil
    import torch

    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        return DeviceInfo(
            cuda=True,
            gpu_count=torch.cuda.device_count(),
            memory_bytes=memory_override or props.total_memory,
            name=f"cuda:{props.name}",
            cpu_bf16=cpu_has_fast_bf16(),
        )
    return DeviceInfo(
        cuda=False,
        gpu_count=0,
        memory_bytes=memory_override or psutil.virtual_memory().total,
        name="cpu",
        cpu_bf16=cpu_has_fast_bf16(),
    )


def cluster_gpu_device(gpus: int, memory_bytes: int) -> DeviceInfo:
    """The device a Kubernetes GPU node offers, as configured (the service cannot see it)."""
    return DeviceInfo(cuda=True, gpu_count=gpus, memory_bytes=memory_bytes, name="cuda:k8s")
