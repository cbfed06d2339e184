"""The ``cpu`` backend: the torch backend with decodes done by a C++ kernel.

Decode attention is where the pure-PyTorch path loses most on a CPU: it copies
each sequence's K/V blocks into a contiguous buffer, then runs a dozen small
ops per layer. The kernel (csrc/paged_decode.cpp) reads the paged cache in
place in one parallel loop; new K/V are stored by one operator there too.
Prefills keep the torch path, whose SDPA is efficient for many query tokens.
"""

from __future__ import annotations

import torch

from nanovllm_core import cpu_kernels
from nanovllm_core.attention.backend import AttentionMetadata
from nanovllm_core.attention.torch_backend import TorchAttentionBackend


class CpuAttentionBackend(TorchAttentionBackend):
    name = "cpu"
    devices = ("cpu",)
    supports_cpu_graphs = True

    @classmethod
    def check_available(cls, device: torch.device) -> None:
        super().check_available(device)
        cpu_kernels.load()

    def store(self, key, value, k_cache, v_cache, slot_mapping):
        cpu_kernels.store_kv(key, value, k_cache, v_cache, slot_mapping)

    def _decode(self, query, k_cache, v_cache, metadata: AttentionMetadata, scale: float, sliding_window: int | None):
        num_seqs = query.shape[0]
        block_tables, context_lens = metadata.block_tables, metadata.context_lens
        if block_tables.shape[0] != num_seqs:  # prefills follow the decodes (slicing every layer shows at batch 1)
            block_tables, context_lens = block_tables[:num_seqs], context_lens[:num_seqs]
        return cpu_kernels.paged_decode_attention(query, k_cache, v_cache, block_tables, context_lens, scale,
                                                  sliding_window=sliding_window)
