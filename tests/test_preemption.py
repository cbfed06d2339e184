"""Preemption by recompute when KV blocks run out, and chunked prefill."""

import pytest

from nanovllm_core import LLM, SamplingParams
from tiny_models import make_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, smollm2_tokenizer):
    return make_tiny_checkpoint("Qwen3ForCausalLM", tmp_path_factory.mktemp("qwen3"), smollm2_tokenizer)


def prompts(n: int) -> list[list[int]]:
    return [[(7 * i + 13 * j) % 40000 + 5 for j in range(20 + 3 * i)] for i in range(n)]


def run(checkpoint, **settings):
    llm = LLM(str(checkpoint), dtype="float32", block_size=4, **settings)
    params = SamplingParams(temperature=0, max_tokens=40, ignore_eos=True)
    return llm, llm.generate(prompts(12), params, use_tqdm=False)


def test_every_request_finishes_identically_under_memory_pressure(checkpoint):
    _, roomy = run(checkpoint)
    # 12 sequences of up to 93 tokens need ~200 blocks; give the cache 40
    llm, tight = run(checkpoint, kv_cache_memory_gb=40 * _block_bytes(checkpoint) / 2**30)
    assert llm.engine.block_manager.num_blocks == 40
    assert llm.engine.scheduler.num_preemptions > 0
    assert [r["token_ids"] for r in tight] == [r["token_ids"] for r in roomy]
    assert all(len(r["token_ids"]) == 40 for r in tight)
    assert llm.engine.block_manager.num_free_blocks == 40  # everything was given back


def test_chunked_prefill_keeps_outputs(checkpoint):
    _, whole = run(checkpoint)
    llm, chunked = run(checkpoint, max_num_batched_tokens=16)
    assert [r["token_ids"] for r in chunked] == [r["token_ids"] for r in whole]


def _block_bytes(checkpoint) -> int:
    # 2 layers x (K + V) x block of 4 tokens x 2 KV heads x head_dim 32 x float32
    return 2 * 2 * 4 * 2 * 32 * 4
