"""Attention in plain PyTorch, for CPU and CUDA.

The KV cache is head-major, ``[num_kv_heads, num_blocks, block_size, head_dim]``,
so gathering a sequence's blocks yields each head's keys contiguously and the
attention is two batched matmuls with no further copy. Decodes use grouped
matmuls rather than ``scaled_dot_product_attention``: on CPU in bfloat16 the
latter is over ten times slower for single-token queries (docs/benchmarks.md).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from nanovllm_core.attention.backend import AttentionBackend, AttentionMetadata


class TorchAttentionBackend(AttentionBackend):
    name = "torch"
    supports_sliding_window = True

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, block_size: int):
        super().__init__(num_heads, num_kv_heads, head_dim, block_size)
        self._buffers: dict[str, torch.Tensor] = {}

    def kv_cache_shape(self, num_blocks: int) -> tuple[int, ...]:
        return (self.num_kv_heads, num_blocks, self.block_size, self.head_dim)

    def forward(self, query, key, value, k_cache, v_cache, metadata: AttentionMetadata, scale: float,
                sliding_window: int | None = None):
        self.store(key, value, k_cache, v_cache, metadata.slot_mapping)
        num_decodes = metadata.num_decode_tokens
        if num_decodes == len(metadata.query_lens_host):  # decodes only: no output to assemble
            return self._decode(query, k_cache, v_cache, metadata, scale, sliding_window)
        output = torch.empty_like(query)
        if num_decodes:
            output[:num_decodes] = self._decode(query[:num_decodes], k_cache, v_cache, metadata, scale, sliding_window)
        start = num_decodes
        for i in range(num_decodes, len(metadata.query_lens_host)):
            end = start + metadata.query_lens_host[i]
            output[start:end] = self._prefill(query, key, value, k_cache, v_cache, metadata, i, start, end, scale,
                                              sliding_window)
            start = end
        return output

    def store(self, key, value, k_cache, v_cache, slot_mapping):
        kv_heads, head_dim = k_cache.shape[0], k_cache.shape[-1]
        # .to: a float32 model may keep a 16-bit cache on the CPU (model_runner.kv_cache_dtype)
        k_cache.view(kv_heads, -1, head_dim).index_copy_(1, slot_mapping, key.transpose(0, 1).to(k_cache.dtype))
        v_cache.view(kv_heads, -1, head_dim).index_copy_(1, slot_mapping, value.transpose(0, 1).to(v_cache.dtype))

    def _gather(self, cache: torch.Tensor, block_tables: torch.Tensor, workspace: str) -> torch.Tensor:
        """[kv_heads, num_seqs, num_blocks * block_size, head_dim], copied block by block.

        One ``index_select`` per head into a reused buffer: on CPU much faster than
        advanced indexing of the whole cache, and close to a plain copy (docs/benchmarks.md).
        """
        kv_heads, num_blocks, head_dim = cache.shape[0], cache.shape[1], cache.shape[-1]
        flat_ids = block_tables.reshape(-1)
        out = self._workspace(workspace, (kv_heads, flat_ids.numel(), self.block_size * head_dim), cache)
        for head in range(kv_heads):
            torch.index_select(cache[head].view(num_blocks, -1), 0, flat_ids, out=out[head])
        return out.view(kv_heads, block_tables.shape[0], -1, head_dim)

    def _workspace(self, name: str, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        """A buffer reused across layers and steps, so large gathers do not fault in fresh pages."""
        needed = shape[0] * shape[1] * shape[2]
        buffer = self._buffers.get(name)
        if buffer is None or buffer.numel() < needed or buffer.dtype != like.dtype or buffer.device != like.device:
            buffer = torch.empty(needed, dtype=like.dtype, device=like.device)
            self._buffers[name] = buffer
        return buffer[:needed].view(shape)

    def _decode(self, query, k_cache, v_cache, metadata: AttentionMetadata, scale: float, sliding_window: int | None):
        num_seqs = query.shape[0]
        block_tables = metadata.block_tables[:num_seqs]
        blocks_needed = -(-max(metadata.context_lens_host[:num_seqs]) // self.block_size)
        block_tables = block_tables[:, :blocks_needed]
        keys = self._gather(k_cache, block_tables, "keys").to(query.dtype)
        values = self._gather(v_cache, block_tables, "values").to(query.dtype)
        group = self.num_heads // self.num_kv_heads
        # [kv_heads, seqs, group, head_dim]: each kv head's query group in one matmul
        grouped = query.view(num_seqs, self.num_kv_heads, group, self.head_dim).transpose(0, 1)
        scores = torch.matmul(grouped, keys.transpose(-1, -2)).float() * scale
        positions = torch.arange(keys.shape[2], device=query.device)
        context_lens = metadata.context_lens[:num_seqs, None]
        masked = positions[None, :] >= context_lens
        if sliding_window is not None:  # the query sits at context_len - 1
            masked |= positions[None, :] < context_lens - sliding_window
        scores.masked_fill_(masked[None, :, None, :], float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(values.dtype)
        out = torch.matmul(probs, values)  # [kv_heads, seqs, group, head_dim]
        return out.transpose(0, 1).reshape(num_seqs, self.num_heads, self.head_dim)

    def _prefill(self, query, key, value, k_cache, v_cache, metadata, index, start, end, scale, sliding_window):
        context_len = metadata.context_lens_host[index]
        query_len = end - start
        q = query[start:end].transpose(0, 1)  # [heads, query_len, head_dim]
        windowed = sliding_window is not None and sliding_window < context_len
        if context_len == query_len:  # nothing cached before this chunk: attend to the new K/V
            k, v = key[start:end].transpose(0, 1), value[start:end].transpose(0, 1)
            if k_cache.dtype != k.dtype:  # as rounded in the cache: what the same prompt reads there when cached
                k, v = k.to(k_cache.dtype).to(k.dtype), v.to(v_cache.dtype).to(v.dtype)
        else:
            block_tables = metadata.block_tables[index : index + 1, : -(-context_len // self.block_size)]
            k = self._gather(k_cache, block_tables, "keys")[:, 0, :context_len].to(q.dtype)
            v = self._gather(v_cache, block_tables, "values")[:, 0, :context_len].to(q.dtype)
        if context_len == query_len and not windowed:
            return self._sdpa(q, k, v, scale, is_causal=True, mask=None)
        # query i sits at absolute position context_len - query_len + i
        query_positions = torch.arange(context_len - query_len, context_len, device=q.device)[:, None]
        key_positions = torch.arange(context_len, device=q.device)[None, :]
        mask = key_positions <= query_positions
        if windowed:
            mask &= key_positions > query_positions - sliding_window
        return self._sdpa(q, k, v, scale, is_causal=False, mask=mask)

    def _sdpa(self, q, k, v, scale, is_causal, mask):
        out = F.scaled_dot_product_attention(
            q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0),
            attn_mask=mask, is_causal=is_causal, scale=scale, enable_gqa=True,
        )
        return out[0].transpose(0, 1)
