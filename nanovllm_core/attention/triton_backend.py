"""The ``triton`` backend: paged attention kernels for CUDA (see triton_kernels.py)."""

from __future__ import annotations

import os

import torch

from nanovllm_core.attention.backend import AttentionBackend, AttentionMetadata


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


class TritonAttentionBackend(AttentionBackend):
    name = "triton"
    devices = ("cuda",)
    supports_cuda_graphs = True
    supports_sliding_window = True

    @classmethod
    def check_available(cls, device: torch.device) -> None:
        try:
            import triton  # noqa: F401
        except ImportError as error:
            raise RuntimeError("attention backend 'triton' needs the triton package: pip install triton") from error
        if device.type == "cpu" and triton_interpreted():
            return  # the interpreter runs the kernels on the CPU, for tests
        if device.type != "cuda":
            raise RuntimeError(
                "attention backend 'triton' needs a CUDA GPU; on the CPU use --attention-backend torch "
                "(or auto), or set TRITON_INTERPRET=1 to run the kernels slowly for testing"
            )

    def kv_cache_shape(self, num_blocks: int) -> tuple[int, ...]:
        return (num_blocks, self.block_size, self.num_kv_heads, self.head_dim)

    def store(self, key, value, k_cache, v_cache, slot_mapping):
        from nanovllm_core.attention import triton_kernels

        triton_kernels.store_kv(key, value, k_cache, v_cache, slot_mapping)

    def forward(self, query, key, value, k_cache, v_cache, metadata: AttentionMetadata, scale: float,
                sliding_window: int | None = None):
        from nanovllm_core.attention import triton_kernels

        self.store(key, value, k_cache, v_cache, metadata.slot_mapping)
        output = torch.empty_like(query)
        num_decodes = metadata.num_decode_tokens
        if num_decodes:
            triton_kernels.paged_decode(
                query[:num_decodes], k_cache, v_cache, metadata.block_tables, metadata.context_lens, scale,
                output[:num_decodes], sliding_window,
            )
        num_prefills = len(metadata.query_lens_host) - num_decodes
        if num_prefills:
            triton_kernels.paged_prefill(
                query, k_cache, v_cache, metadata.block_tables, metadata.context_lens, metadata.query_start_loc,
                num_decodes, num_prefills, metadata.max_query_len, scale, output, sliding_window,
            )
        return output
