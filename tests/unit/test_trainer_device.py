"""The CPU thread default: physical cores the worker may use, capped by the container's limit."""

from __future__ import annotations

import pytest

from services.trainer import device


@pytest.mark.parametrize(
    ("cpu_max", "limit"), [("max 100000", None), ("200000 100000", 2), ("150000 100000", 2)]
)
def test_the_cgroup_cpu_limit_is_read_in_whole_cpus(monkeypatch, cpu_max, limit):
    monkeypatch.setattr(device, "_read", lambda path: cpu_max)
    assert device.cgroup_cpu_limit() == limit


def test_threads_follow_the_operator_then_the_container_then_the_cores(monkeypatch):
    monkeypatch.setattr(device, "physical_cores", lambda cpus: 64)
    monkeypatch.setattr(device, "cgroup_cpu_limit", lambda: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert device.training_threads() == (3, "OMP_NUM_THREADS")
    monkeypatch.delenv("OMP_NUM_THREADS")
    threads, because = device.training_threads()
    assert threads == 2 and "CPU limit" in because  # a 2-CPU pod on a 64-core node
    monkeypatch.setattr(device, "cgroup_cpu_limit", lambda: None)
    assert device.training_threads()[0] == 64


def test_hyper_threads_of_one_core_count_once(monkeypatch):
    core_of = {0: "0", 1: "0", 2: "1", 3: "1", 4: "2"}  # cpus 0/1 and 2/3 are sibling threads

    def read(path: str) -> str:
        cpu = int(path.split("/cpu")[-1].split("/")[0])
        return "0" if path.endswith("physical_package_id") else core_of[cpu]

    monkeypatch.setattr(device, "_read", read)
    assert device.physical_cores({0, 1, 2, 3, 4}) == 3
    assert device.physical_cores({0, 2}) == 2
