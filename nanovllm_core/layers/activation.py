import torch
import torch.nn.functional as F
from torch import nn

from nanovllm_core import cpu_kernels


class SiluAndMul(nn.Module):
    """SwiGLU on a fused [gate | up] projection."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_cpu and cpu_kernels.loaded():
            return cpu_kernels.silu_and_mul(x)
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up


class GeluAndMul(nn.Module):
    """GeGLU on a fused [gate | up] projection (Gemma: ``approximate="tanh"``)."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = x.chunk(2, dim=-1)
        return F.gelu(gate, approximate=self.approximate) * up
