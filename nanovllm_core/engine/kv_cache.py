"""The paged KV cache: its dtype, how many blocks the memory budget allows, and their allocation."""

from __future__ import annotations

import logging
import math
import mmap
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from nanovllm_core.attention import AttentionBackend, AttentionMetadata, forward_context
from nanovllm_core.config import EngineConfig
from nanovllm_core.engine.sampling_inputs import worst_case_sampling_batch
from nanovllm_core.layers.attention import Attention

logger = logging.getLogger(__name__)

GiB = 1 << 30
CPU_KV_CACHE_GB = 2.0


def kv_cache_dtype(model: nn.Module, device: torch.device, dtype: torch.dtype) -> torch.dtype:
    """The model's dtype, but float16 for a float32 model with quantized weights on a CPU
    (llama.cpp's cache is float16 too): quantizing the weights moves the outputs further
    than a float16 cache does, and the cache then holds half the bytes, which decode
    attention reads at half the cost."""
    quantized = any(getattr(module, "quantized", None) is not None for module in model.modules())
    if device.type == "cpu" and quantized and dtype == torch.float32:
        return torch.float16
    return dtype


class KvCache:
    """The K and V tensors of every attention layer, ``num_blocks`` blocks each."""

    def __init__(self, layers: list[Attention], backend: AttentionBackend, block_size: int, dtype: torch.dtype,
                 device: torch.device):
        self.layers = layers
        self.backend = backend
        self.block_size = block_size
        self.dtype = dtype
        self.device = device
        self.num_blocks = 0

    def bytes_per_block(self) -> int:
        layer = self.layers[0]
        return 2 * self.block_size * layer.num_kv_heads * layer.head_dim * self.dtype.itemsize * len(self.layers)

    def blocks_for(self, num_seqs: int, max_model_len: int) -> int:
        return num_seqs * -(-max_model_len // self.block_size)

    def allocate(self, num_blocks: int) -> None:
        shape = self.backend.kv_cache_shape(num_blocks)
        for layer in self.layers:
            layer.backend = self.backend
            layer.k_cache = self.zeroed(shape)
            layer.v_cache = self.zeroed(shape)
        self.num_blocks = num_blocks

    def attend_without_cache(self, num_blocks: int) -> None:
        """An encoder's layers attend within the step and cache nothing: they get their backend
        only. ``num_blocks`` exist for the scheduler's accounting alone."""
        for layer in self.layers:
            layer.backend = self.backend
        self.num_blocks = num_blocks

    def zeroed(self, shape: tuple[int, ...]) -> torch.Tensor:
        """On a CPU, mapped from anonymous memory: the system's zero pages, which become
        resident only when a block is first written, so a server holds the memory its
        sequences use rather than all that the configuration could (torch.zeros writes
        every page at start)."""
        if self.device.type != "cpu":
            return torch.zeros(shape, dtype=self.dtype, device=self.device)
        count = math.prod(shape)
        pages = mmap.mmap(-1, max(count * self.dtype.itemsize, 1))
        return torch.frombuffer(pages, dtype=self.dtype, count=count).view(shape)

    def agreed_num_blocks(self, budget: int) -> int:
        """The blocks ``budget`` bytes hold, the same on every tensor-parallel rank."""
        num_blocks = budget // self.bytes_per_block()
        if dist.is_initialized():
            agreed = torch.tensor([num_blocks], device=self.device)
            dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
            num_blocks = int(agreed.item())
        if num_blocks < 1:
            raise RuntimeError("the KV-cache memory budget is too small for a single block")
        return num_blocks


def cpu_budget(kv_cache: KvCache, config: EngineConfig, max_model_len: int) -> int:
    """What the configuration can use (max_num_seqs sequences of max_model_len tokens),
    at most kv_cache_memory_gb (2 GiB unset): a one-user server does not hold 2 GiB."""
    cap = int((config.kv_cache_memory_gb or CPU_KV_CACHE_GB) * GiB)
    usable = kv_cache.blocks_for(config.max_num_seqs, max_model_len) * kv_cache.bytes_per_block()
    logger.info("KV cache: %.0f MiB (the configuration can use %.0f MiB, capped at %.0f MiB)",
                min(usable, cap) / (1 << 20), usable / (1 << 20), cap / (1 << 20))
    return min(usable, cap)


def gpu_budget(config: EngineConfig, device: torch.device, activation_peak: Callable[[], int]) -> int:
    """The share of the GPU's memory left for the cache once the weights and the largest
    step's activations (``activation_peak()``, measured) are counted."""
    if config.kv_cache_memory_gb is not None:
        return int(config.kv_cache_memory_gb * GiB)
    peak = activation_peak()
    free, total = torch.cuda.mem_get_info(device)
    budget = int(total * config.gpu_memory_utilization - (total - free) - peak)
    logger.info("GPU: %.1f GiB in use, activation peak %.2f GiB, KV cache %.1f GiB",
                (total - free) / GiB, peak / GiB, budget / GiB)
    return budget


@torch.inference_mode()
def profile_activation_memory(model: nn.Module, sampler, kv_cache: KvCache, config: EngineConfig,
                              hf_config) -> int:
    """Peak GPU memory of the largest step the scheduler can make (one prefill of
    max_num_batched_tokens, logits for max_num_seqs rows and the sampler on them with
    every option on), beyond the weights. ``sampler``: None on ranks that do not sample."""
    device = kv_cache.device
    tokens = min(config.max_num_batched_tokens, hf_config.max_position_embeddings)
    num_blocks = -(-tokens // kv_cache.block_size)
    kv_cache.allocate(num_blocks)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    metadata = AttentionMetadata(
        num_decode_tokens=0,
        slot_mapping=torch.arange(tokens, device=device),
        block_tables=torch.arange(num_blocks, dtype=torch.int32, device=device)[None],
        context_lens=torch.tensor([tokens], dtype=torch.int32, device=device),
        query_start_loc=torch.tensor([0, tokens], dtype=torch.int32, device=device),
        max_query_len=tokens, max_context_len=tokens, query_lens_host=[tokens], context_lens_host=[tokens],
    )
    with forward_context(metadata):
        hidden_states = model(torch.zeros(tokens, dtype=torch.int64, device=device), torch.arange(tokens, device=device))
    rows = min(tokens, config.max_num_seqs)
    logits = model.compute_logits(hidden_states[:rows]).float()
    if sampler is not None:
        sampler(logits, worst_case_sampling_batch(rows, hf_config.vocab_size).to(device))
    peak = torch.cuda.max_memory_allocated(device) - before
    kv_cache.allocate(0)
    torch.cuda.empty_cache()
    return peak
