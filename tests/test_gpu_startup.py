"""The GPU path's start-up, checked on the CPU: the backend `auto` picks on CUDA (a fake
flash_attn module), the decode graphs' metadata, each rank's GPU under torchrun (a fake
device count), and the KV budget's profile running the sampler."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from nanovllm_core.attention.flash_attn_backend import FlashAttentionBackend
from nanovllm_core.attention.triton_backend import TritonAttentionBackend
from nanovllm_core.engine import tensor_parallel
from nanovllm_core.engine.platform import select_attention_backend

CUDA = torch.device("cuda")  # only its type is read: no GPU is touched


@pytest.fixture
def fake_flash_attn(monkeypatch):
    module = types.ModuleType("flash_attn")
    module.__version__ = "2.6.3"
    monkeypatch.setitem(sys.modules, "flash_attn", module)
    return module


def test_auto_skips_flash_attn_for_a_block_size_or_dtype_it_cannot_run(fake_flash_attn):
    """Regression: auto chose flash-attn (installed) for the default block size 16, and its
    constructor then raised: with flash-attn installed the server did not start."""
    assert select_attention_backend("auto", CUDA, 16, torch.bfloat16) is TritonAttentionBackend
    assert select_attention_backend("auto", CUDA, 256, torch.float32) is TritonAttentionBackend
    assert select_attention_backend("auto", CUDA, 256, torch.bfloat16) is FlashAttentionBackend
    with pytest.raises(RuntimeError, match="--block-size 256"):
        select_attention_backend("flash-attn", CUDA, 16, torch.bfloat16)
    fake_flash_attn.__version__ = "2.3.6"  # before paged K/V
    assert select_attention_backend("auto", CUDA, 256, torch.bfloat16) is TritonAttentionBackend
    with pytest.raises(RuntimeError, match=">= 2.5"):
        select_attention_backend("flash-attn", CUDA, 256, torch.bfloat16)


def test_decode_graph_metadata_counts_context_in_tokens():
    """Regression: max_context_len was given the block count (flash-attn reads it as max_seqlen_k)."""
    from nanovllm_core.engine.decode_graphs import CpuGraphRunner

    runner = CpuGraphRunner(torch.nn.Identity(), max_batch_size=8, max_blocks_per_seq=32, block_size=16,
                            device=torch.device("cpu"))
    assert runner._metadata(4).max_context_len == 32 * 16


def test_each_rank_takes_its_local_gpu(monkeypatch):
    """Regression: set_device(rank % device_count) ignored torchrun's LOCAL_RANK."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(tensor_parallel.dist, "init_process_group", lambda *args, **kwargs: None)
    monkeypatch.setenv("LOCAL_RANK", "2")
    tensor_parallel.init_process_group(13, 16, CUDA)  # rank 13 of 16: on its node, GPU 2 (not 13 % 8)
    monkeypatch.delenv("LOCAL_RANK")
    tensor_parallel.init_process_group(13, 16, CUDA)  # a single-node spawn: rank % GPUs
    assert chosen == [2, 5]


def test_the_kv_budget_profile_runs_the_sampler_at_max_num_seqs_rows(tmp_path, word_tokenizer, monkeypatch):
    """Regression: the profile measured the logits alone, and the sampler's sort over the
    vocabulary for every row came later, on top of a KV cache that had taken the rest."""
    from nanovllm_core import LLM
    from tiny_models import make_tiny_checkpoint

    llm = LLM(str(make_tiny_checkpoint("Qwen3ForCausalLM", tmp_path, word_tokenizer)), dtype="float32",
              max_num_seqs=6, max_num_batched_tokens=64, enforce_eager=True)
    runner = llm.engine.runner
    rows_sampled = []
    real_sampler = runner.sampler

    def spy(logits, batch):
        rows_sampled.append((logits.shape[0], batch.top_k.numel(), max(batch.num_logprobs)))
        return real_sampler(logits, batch)

    for name in ("empty_cache", "reset_peak_memory_stats"):
        monkeypatch.setattr(torch.cuda, name, lambda *args: None)
    for name in ("memory_allocated", "max_memory_allocated"):
        monkeypatch.setattr(torch.cuda, name, lambda *args: 0)
    monkeypatch.setattr(runner, "sampler", spy)
    monkeypatch.setattr(runner.kv_cache, "zeroed", lambda shape: torch.zeros(shape))  # as on a GPU (0 blocks at the end)
    runner._profile_activation_memory()
    assert rows_sampled == [(6, 6, 20)]
