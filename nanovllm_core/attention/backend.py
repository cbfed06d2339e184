"""What an attention backend implements, and the per-step metadata it receives.

A step's tokens form one flat batch: first the sequences that run on a single
token (decodes), then prefill chunks. For each sequence, ``context_lens`` is
its number of tokens in the KV cache *after* this step (cached prefix + new
tokens), so a prefill chunk attends causally to ``context_len`` keys of which
the last ``query_len`` are its own.

A layer may attend through a sliding window of ``W`` keys (``sliding_window``
on ``Attention``, passed to ``forward``): the query at position ``i`` sees keys
``i - W + 1 .. i``, as Hugging Face's ``sliding_window`` means. The window is a
property of the layer, so one step's metadata serves windowed and global layers.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class AttentionMetadata:
    num_decode_tokens: int  # = number of decode sequences; they come first
    slot_mapping: torch.Tensor  # [num_tokens] int64: where each new token's K/V go
    block_tables: torch.Tensor  # [num_seqs, max_blocks] int32, padded with 0
    context_lens: torch.Tensor  # [num_seqs] int32
    query_start_loc: torch.Tensor  # [num_seqs + 1] int32: cumulative query lengths
    max_query_len: int
    max_context_len: int
    # the same on the host, for backends that loop over prefill sequences
    query_lens_host: list[int]
    context_lens_host: list[int]

    @property
    def num_decodes(self) -> int:
        return self.num_decode_tokens


class AttentionBackend:
    """Base class of attention backends (see the ``register_attention_backends`` hook)."""

    name: str = ""
    devices: tuple[str, ...] = ("cpu", "cuda")
    supports_cuda_graphs = False  # True when forward() on decodes needs no host synchronisation
    # True when forward() on decodes depends on nothing but its tensors and the batch size, so a
    # recording of the operators it called replays it (engine/decode_graphs.py)
    supports_cpu_graphs = False
    supports_sliding_window = False  # True when forward() honours its sliding_window argument

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, block_size: int):
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_dim = head_dim
        self.block_size = block_size

    @classmethod
    def check_available(cls, device: torch.device) -> None:
        """Raise RuntimeError with a how-to-fix message if unusable on ``device``."""
        if device.type not in cls.devices:
            raise RuntimeError(
                f"attention backend {cls.name!r} runs on {', '.join(cls.devices)}, not {device.type}"
            )

    @classmethod
    def check_config(cls, block_size: int, dtype: torch.dtype) -> None:
        """Raise RuntimeError with a how-to-fix message if the backend cannot run this KV-cache
        block size or model dtype; checked before anything is built (``auto`` then tries the next)."""

    def kv_cache_shape(self, num_blocks: int) -> tuple[int, ...]:
        """Shape of one layer's K (and of its V) cache."""
        raise NotImplementedError

    def store(self, key: torch.Tensor, value: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
              slot_mapping: torch.Tensor) -> None:
        """Write key/value ``[tokens, kv_heads, head_dim]`` into the caches at ``slot_mapping``."""
        raise NotImplementedError

    def forward(
        self,
        query: torch.Tensor,  # [num_tokens, num_heads, head_dim]
        key: torch.Tensor,  # [num_tokens, num_kv_heads, head_dim]
        value: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        metadata: AttentionMetadata,
        scale: float,
        sliding_window: int | None = None,
    ) -> torch.Tensor:  # [num_tokens, num_heads, head_dim]
        """Store the new K/V in the cache, then attend: causally, and within the last
        ``sliding_window`` keys when it is set (only on backends that declare
        ``supports_sliding_window``; the engine refuses the others for such models)."""
        raise NotImplementedError

    def forward_bidirectional(
        self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, metadata: AttentionMetadata, scale: float
    ) -> torch.Tensor:
        """An encoder's attention: each sequence's whole prompt is in the step, every token
        attends to every token of its sequence, and nothing is cached. This portable version
        runs PyTorch's SDPA per sequence; a backend may override it with a varlen kernel."""
        output = torch.empty_like(query)
        start = 0
        for length in metadata.query_lens_host:
            end = start + length
            q, k, v = (t[start:end].transpose(0, 1).unsqueeze(0) for t in (query, key, value))
            out = F.scaled_dot_product_attention(q, k, v, scale=scale, enable_gqa=True)
            output[start:end] = out[0].transpose(0, 1)
            start = end
        return output


_current_metadata: AttentionMetadata | None = None


@contextlib.contextmanager
def forward_context(metadata: AttentionMetadata) -> Iterator[None]:
    """Make ``metadata`` visible to every attention layer during one forward pass."""
    global _current_metadata
    _current_metadata = metadata
    try:
        yield
    finally:
        _current_metadata = None


def get_forward_context() -> AttentionMetadata:
    if _current_metadata is None:
        raise RuntimeError("attention layer called outside the engine's forward_context")
    return _current_metadata
