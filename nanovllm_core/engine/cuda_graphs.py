"""Decode steps replayed from CUDA graphs, one graph per padded batch size.

A decode step of a small model is mostly kernel-launch overhead on a GPU;
replaying a captured graph launches the whole forward pass at once. Each graph
reads its inputs from static buffers; a batch of n sequences runs in the
smallest captured size >= n, the extra rows padded with slot -1 (nothing is
stored) and context length 0 (nothing is read).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from nanovllm_core.attention import AttentionMetadata, forward_context

logger = logging.getLogger(__name__)

BATCH_SIZES = (1, 2, 4, 8, *range(16, 513, 16))


class CudaGraphRunner:
    def __init__(self, model: nn.Module, max_batch_size: int, max_blocks_per_seq: int, device: torch.device):
        self.model = model
        self.sizes = [size for size in BATCH_SIZES if size <= max_batch_size]
        self.max_blocks_per_seq = max_blocks_per_seq
        largest = self.sizes[-1]
        self.input_ids = torch.zeros(largest, dtype=torch.int64, device=device)
        self.positions = torch.zeros(largest, dtype=torch.int64, device=device)
        self.slot_mapping = torch.full((largest,), -1, dtype=torch.int64, device=device)
        self.context_lens = torch.zeros(largest, dtype=torch.int32, device=device)
        self.block_tables = torch.zeros(largest, max_blocks_per_seq, dtype=torch.int32, device=device)
        self.query_start_loc = torch.arange(largest + 1, dtype=torch.int32, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.outputs: dict[int, torch.Tensor] = {}
        self._capture()

    def _metadata(self, size: int) -> AttentionMetadata:
        return AttentionMetadata(
            num_decode_tokens=size,
            slot_mapping=self.slot_mapping[:size],
            block_tables=self.block_tables[:size],
            context_lens=self.context_lens[:size],
            query_start_loc=self.query_start_loc[: size + 1],
            max_query_len=1,
            max_context_len=self.max_blocks_per_seq,
            query_lens_host=[1] * size,
            context_lens_host=[0] * size,  # not read by graph-capable backends on decodes
        )

    @torch.inference_mode()
    def _capture(self) -> None:
        pool = None
        for size in reversed(self.sizes):  # largest first, so the others fit in its memory pool
            metadata = self._metadata(size)
            with forward_context(metadata):
                self.model(self.input_ids[:size], self.positions[:size])  # warm-up: autotuning, allocations
                graph = torch.cuda.CUDAGraph()
                with torch.cuda.graph(graph, pool):
                    self.outputs[size] = self.model(self.input_ids[:size], self.positions[:size])
            pool = graph.pool() if pool is None else pool
            self.graphs[size] = graph
        torch.cuda.synchronize()
        logger.info("captured CUDA graphs for decode batch sizes %s", self.sizes)

    def can_run(self, num_seqs: int, num_decodes: int, block_table_width: int) -> bool:
        return num_decodes == num_seqs <= self.sizes[-1] and block_table_width <= self.max_blocks_per_seq

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, metadata: AttentionMetadata) -> torch.Tensor:
        count = input_ids.shape[0]
        size = next(s for s in self.sizes if s >= count)
        self.input_ids[:count] = input_ids
        self.positions[:count] = positions
        self.slot_mapping[:count] = metadata.slot_mapping
        self.slot_mapping[count:size] = -1
        self.context_lens[:count] = metadata.context_lens
        self.context_lens[count:size] = 0
        width = metadata.block_tables.shape[1]
        self.block_tables[:count, :width] = metadata.block_tables
        self.graphs[size].replay()
        return self.outputs[size][:count]
