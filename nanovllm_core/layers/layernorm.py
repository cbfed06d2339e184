import torch
from torch import nn

from nanovllm_core import cpu_kernels


class RMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size))

    def forward(
        self, x: torch.Tensor, residual: torch.Tensor | None = None
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Normalise ``x``; with ``residual``, first add it and also return the sum
        (the next layer's residual), as pre-norm decoders need."""
        if x.is_cpu and cpu_kernels.loaded():
            normed, residual = cpu_kernels.rms_norm(x, residual, self.weight, self.eps)
            return normed if residual is None else (normed, residual)
        if residual is not None:
            x = x + residual
            residual = x
        normed = torch.nn.functional.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype) * self.weight
        return normed if residual is None else (normed, residual)
