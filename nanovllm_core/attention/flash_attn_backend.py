"""The ``flash-attn`` backend: the flash-attn package's paged kernels (CUDA only).

Decodes use ``flash_attn_with_kvcache`` and prefill chunks
``flash_attn_varlen_func``, both reading K/V through the block table. flash-attn
wants pages of a multiple of 256 tokens, so this backend needs ``block_size``
256 (or 512, ...). It keeps the triton backend's cache layout, and new K/V are written
with its store kernel.
"""

from __future__ import annotations

import torch

from nanovllm_core.attention.backend import AttentionMetadata
from nanovllm_core.attention.triton_backend import TritonAttentionBackend

PAGE_MULTIPLE = 256
MIN_VERSION = (2, 5)  # paged K/V (block_table) in flash_attn_with_kvcache and flash_attn_varlen_func
INSTALL_HINT = "pip install flash-attn --no-build-isolation (needs a CUDA GPU and a matching torch)"


class FlashAttentionBackend(TritonAttentionBackend):
    name = "flash-attn"

    @classmethod
    def check_available(cls, device: torch.device) -> None:
        if device.type != "cuda":  # before triton's check, which its interpreter passes on a CPU
            raise RuntimeError(f"attention backend 'flash-attn' runs on cuda, not {device.type}")
        try:
            import flash_attn
        except ImportError as error:
            raise RuntimeError(f"attention backend 'flash-attn' is not installed: {INSTALL_HINT}") from error
        version = tuple(int(part) for part in flash_attn.__version__.split(".")[:2] if part.isdigit())
        if version < MIN_VERSION:
            raise RuntimeError(f"attention backend 'flash-attn' needs flash-attn >= 2.5 (paged K/V), "
                               f"found {flash_attn.__version__}: {INSTALL_HINT}")
        super().check_available(device)  # the store kernel

    @classmethod
    def check_config(cls, block_size: int, dtype: torch.dtype) -> None:
        if block_size % PAGE_MULTIPLE:
            raise RuntimeError(f"attention backend 'flash-attn' needs block_size to be a multiple of "
                               f"{PAGE_MULTIPLE}, got {block_size}; pass --block-size 256")
        if dtype not in (torch.float16, torch.bfloat16):
            raise RuntimeError(f"attention backend 'flash-attn' runs in float16 or bfloat16, not {dtype}; "
                               "pass --dtype bfloat16")

    def forward(self, query, key, value, k_cache, v_cache, metadata: AttentionMetadata, scale: float,
                sliding_window: int | None = None):
        from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache

        # flash-attn counts the keys left of the query's own; (-1, -1) is no window
        window = (sliding_window - 1, 0) if sliding_window else (-1, -1)
        self.store(key, value, k_cache, v_cache, metadata.slot_mapping)
        num_decodes = metadata.num_decode_tokens
        output = torch.empty_like(query)
        if num_decodes:
            output[:num_decodes] = flash_attn_with_kvcache(
                query[:num_decodes].unsqueeze(1), k_cache, v_cache,
                cache_seqlens=metadata.context_lens[:num_decodes],
                block_table=metadata.block_tables[:num_decodes],
                softmax_scale=scale, causal=True, window_size=window,
            ).squeeze(1)
        if len(metadata.query_lens_host) > num_decodes:
            context_lens = metadata.context_lens[num_decodes:]
            query_start = metadata.query_start_loc[num_decodes:] - metadata.query_start_loc[num_decodes]
            context_start = torch.nn.functional.pad(context_lens.cumsum(0, dtype=torch.int32), (1, 0))
            output[num_decodes:] = flash_attn_varlen_func(
                query[num_decodes:], k_cache, v_cache,
                cu_seqlens_q=query_start, cu_seqlens_k=context_start,
                max_seqlen_q=metadata.max_query_len, max_seqlen_k=metadata.max_context_len,
                softmax_scale=scale, causal=True, window_size=window, block_table=metadata.block_tables[num_decodes:],
            )
        return output
