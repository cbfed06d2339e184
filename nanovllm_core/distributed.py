"""Tensor-parallel rank and size of this process (1 process unless the engine starts workers)."""

from __future__ import annotations

import torch
import torch.distributed as dist


def get_tp_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def get_tp_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    if get_tp_size() > 1:
        dist.all_reduce(tensor)
    return tensor


def divide(numerator: int, denominator: int, what: str) -> int:
    if numerator % denominator:
        raise ValueError(f"{what} ({numerator}) is not divisible by tensor_parallel_size ({denominator})")
    return numerator // denominator
