"""The attention layer models use: projections stay in the model; this layer
owns the KV cache of its layer and hands the work to the engine's backend.

``causal=False`` makes an encoder's attention: every token of a sequence sees
every other, within the step, and nothing is cached. ``sliding_window=W`` makes
a local layer: each token sees itself and the ``W - 1`` tokens before it."""

from __future__ import annotations

import torch
from torch import nn

from nanovllm_core.attention.backend import AttentionBackend, get_forward_context


class Attention(nn.Module):
    def __init__(self, num_heads: int, head_dim: int, scale: float, num_kv_heads: int, causal: bool = True,
                 sliding_window: int | None = None):
        super().__init__()
        if sliding_window is not None and (not causal or sliding_window < 1):
            raise ValueError(f"sliding_window must be a positive size on a causal layer, got {sliding_window}")
        self.causal = causal
        self.sliding_window = sliding_window
        self.num_heads = num_heads  # on this tensor-parallel rank
        self.head_dim = head_dim
        self.scale = scale
        self.num_kv_heads = num_kv_heads
        # set by the model runner once the cache is allocated
        self.backend: AttentionBackend | None = None
        self.k_cache = self.v_cache = torch.tensor([])

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
        """``query`` [tokens, heads * head_dim] or [tokens, heads, head_dim], ``key``/``value``
        the same with kv_heads; returns [tokens, heads * head_dim]."""
        tokens = query.shape[0]
        # a view per tensor and layer shows in a one-token decode step: skipped where the model has one
        if query.dim() == 2:
            query = query.view(tokens, self.num_heads, self.head_dim)
        if key.dim() == 2:
            key = key.view(tokens, self.num_kv_heads, self.head_dim)
        if value.dim() == 2:
            value = value.view(tokens, self.num_kv_heads, self.head_dim)
        if self.causal:
            # passed only when set, so backends written before windows existed keep working
            window = {} if self.sliding_window is None else {"sliding_window": self.sliding_window}
            out = self.backend.forward(query, key, value, self.k_cache, self.v_cache, get_forward_context(),
                                       self.scale, **window)
        else:
            out = self.backend.forward_bidirectional(query, key, value, get_forward_context(), self.scale)
        return out.view(tokens, self.num_heads * self.head_dim)
