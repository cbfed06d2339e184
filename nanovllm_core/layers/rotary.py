"""Rotary position embedding in the Hugging Face (rotate-half) layout."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from nanovllm_core import cpu_kernels


class RotaryEmbedding(nn.Module):
    def __init__(self, head_dim: int, max_position: int, base: float, inv_freq: torch.Tensor | None = None):
        super().__init__()
        self.head_dim = head_dim
        if inv_freq is None:
            inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        positions = torch.arange(max_position, dtype=torch.float32)
        freqs = torch.outer(positions, inv_freq)
        self.register_buffer("cos", freqs.cos(), persistent=False)  # [max_position, head_dim / 2]
        self.register_buffer("sin", freqs.sin(), persistent=False)

    def forward(
        self, positions: torch.Tensor, query: torch.Tensor, key: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``query`` [tokens, heads, head_dim], ``key`` [tokens, kv_heads, head_dim]."""
        if query.is_cpu and self.cos.dtype == torch.float32 and cpu_kernels.loaded():  # the kernel's table format
            return cpu_kernels.rotary_embedding(query, key, positions, self.cos, self.sin)
        cos = self.cos[positions].unsqueeze(1)
        sin = self.sin[positions].unsqueeze(1)
        return self._rotate(query, cos, sin), self._rotate(key, cos, sin)

    @staticmethod
    def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x1, x2 = x.float().chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).to(x.dtype)


def _llama3_inv_freq(head_dim: int, base: float, scaling: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1's frequency-dependent scaling of long wavelengths."""
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    factor = scaling["factor"]
    low, high = scaling.get("low_freq_factor", 1.0), scaling.get("high_freq_factor", 4.0)
    original = scaling["original_max_position_embeddings"]
    wavelength = 2 * math.pi / inv_freq
    smooth = (original / wavelength - low) / (high - low)
    scaled = torch.where(wavelength > original / low, inv_freq / factor, inv_freq)
    blended = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    medium = (wavelength >= original / high) & (wavelength <= original / low)
    return torch.where(medium, blended, scaled)


# one module per distinct configuration and device, shared by every layer that asks for it:
# the tables are [max_position, head_dim / 2] twice, ~21 MB a layer for Qwen3-0.6B
_shared_ropes: dict[tuple, RotaryEmbedding] = {}


def get_rope(
    head_dim: int,
    max_position: int,
    base: float,
    rope_scaling: dict[str, Any] | None,
    freq_factors: list[float] | None = None,
) -> RotaryEmbedding:
    """Rotary embedding for a HF config's ``rope_theta`` / ``rope_scaling``, shared between layers.
    ``freq_factors`` divide the frequencies one by one: GGUF's ``rope_freqs`` tensor, which is
    how llama.cpp's files carry Llama 3's scaling (``rope_freq_factors`` on a GGUF's config)."""
    kind = (rope_scaling or {}).get("rope_type", (rope_scaling or {}).get("type", "default"))
    if kind not in ("default", "linear", "llama3"):
        raise NotImplementedError(f"rope_scaling type {kind!r} is not supported (supported: default, linear, llama3)")
    key = (head_dim, max_position, base, kind, _freeze(rope_scaling), _freeze(freq_factors),
           str(torch.get_default_device()))
    if key not in _shared_ropes:
        if kind == "llama3":
            inv_freq = _llama3_inv_freq(head_dim, base, rope_scaling)
        else:
            inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
        if kind == "linear":  # positions divided by the factor (Gemma 3's global layers from 4B on)
            inv_freq = inv_freq / rope_scaling["factor"]
        if freq_factors is not None:
            inv_freq = inv_freq / torch.tensor(freq_factors, dtype=torch.float32)
        _shared_ropes[key] = RotaryEmbedding(head_dim, max_position, base, inv_freq)
    return _shared_ropes[key]


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value
