"""Where each replica runs: disjoint CPU sets in NUMA order, or its own GPUs."""

from __future__ import annotations

import os
from pathlib import Path

import torch


def numa_nodes() -> list[set[int]]:
    """The CPUs of each NUMA node (one set holding every CPU where the kernel reports none)."""
    nodes = sorted(Path("/sys/devices/system/node").glob("node[0-9]*"))
    found = [parse_cpu_list((node / "cpulist").read_text()) for node in nodes if (node / "cpulist").exists()]
    return [cpus for cpus in found if cpus] or [set(os.sched_getaffinity(0))]


def parse_cpu_list(text: str) -> set[int]:
    """The kernel's CPU list format: ``0-3,8,10-11``."""
    cpus: set[int] = set()
    for part in filter(None, text.strip().split(",")):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def replica_cpu_sets(num_replicas: int, threads_per_replica: int | None) -> list[list[int]]:
    """Disjoint CPU sets, one per replica: the usable CPUs in NUMA-node order, split evenly
    (or ``threads_per_replica`` each), so a replica stays on one node when the split allows."""
    usable = os.sched_getaffinity(0)
    ordered = [cpu for node in numa_nodes() for cpu in sorted(node & usable)]
    per_replica = threads_per_replica or max(1, len(ordered) // num_replicas)
    if per_replica * num_replicas > len(ordered):
        raise ValueError(
            f"{num_replicas} replicas x {per_replica} threads need {per_replica * num_replicas} CPUs; "
            f"this process may use {len(ordered)}")
    return [ordered[index * per_replica:(index + 1) * per_replica] for index in range(num_replicas)]


def replica_cuda_devices(num_replicas: int, tensor_parallel_size: int) -> list[str]:
    """CUDA_VISIBLE_DEVICES of each replica: its own ``tensor_parallel_size`` GPUs."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    if num_replicas * tensor_parallel_size > len(devices):
        raise ValueError(f"{num_replicas} replicas x tensor_parallel_size {tensor_parallel_size} need "
                         f"{num_replicas * tensor_parallel_size} GPUs; {len(devices)} are visible")
    size = tensor_parallel_size
    return [",".join(devices[index * size:(index + 1) * size]) for index in range(num_replicas)]
