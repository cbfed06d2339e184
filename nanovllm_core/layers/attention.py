"""The attention layer models use: projections stay in the model; this layer
owns the KV cache of its layer and hands the work to the engine's backend."""

from __future__ import annotations

import torch
from torch import nn

from nanovllm_core.attention.backend import AttentionBackend, get_forward_context


class Attention(nn.Module):
    def __init__(self, num_heads: int, head_dim: int, scale: float, num_kv_heads: int):
        super().__init__()
        self.num_heads = num_heads  # on this tensor-parallel rank
        self.head_dim = head_dim
        self.scale = scale
        self.num_kv_heads = num_kv_heads
        # set by the model runner once the cache is allocated
        self.backend: AttentionBackend | None = None
        self.k_cache = self.v_cache = torch.tensor([])

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``query`` [tokens, heads * head_dim], ``key``/``value`` [tokens, kv_heads * head_dim]."""
        tokens = query.shape[0]
        out = self.backend.forward(
            query.view(tokens, self.num_heads, self.head_dim),
            key.view(tokens, self.num_kv_heads, self.head_dim),
            value.view(tokens, self.num_kv_heads, self.head_dim),
            self.k_cache,
            self.v_cache,
            get_forward_context(),
            self.scale,
        )
        return out.view(tokens, self.num_heads * self.head_dim)
