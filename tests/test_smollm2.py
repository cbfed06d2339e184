"""The real embedded model: SmolLM2-135M-Instruct from its Q4_1 GGUF."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from conftest import CHAT_MESSAGES, chat_prompt
from nanovllm_core import SamplingParams

MAX_TOKENS = 32


@pytest.fixture(scope="module")
def reference_model(smollm2_path):
    return AutoModelForCausalLM.from_pretrained(smollm2_path.parent, gguf_file=smollm2_path.name, dtype=torch.float32)


def test_greedy_output_equals_transformers(smollm2_llm, smollm2_tokenizer, reference_model):
    prompts = [chat_prompt(smollm2_tokenizer, m) for m in CHAT_MESSAGES]
    ours = smollm2_llm.generate(prompts, SamplingParams(temperature=0, max_tokens=MAX_TOKENS), use_tqdm=False)
    for prompt, result in zip(prompts, ours):
        ids = smollm2_tokenizer(prompt, return_tensors="pt").input_ids
        expected = reference_model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False)[0, ids.shape[1] :]
        assert result["token_ids"] == expected.tolist()
        assert result["text"] == smollm2_tokenizer.decode(expected, skip_special_tokens=True)
    assert ours[0]["text"] == "The capital of France is Paris."
    assert ours[0]["finish_reason"] == "stop"


def test_outputs_do_not_depend_on_batch(smollm2_llm, smollm2_tokenizer):
    words = "one two three four five six seven eight nine ten".split()
    prompts = [chat_prompt(smollm2_tokenizer, "Continue counting: " + " ".join(words[: 1 + i % 10]) * (1 + i // 4)) for i in range(16)]
    params = SamplingParams(temperature=0, max_tokens=20, ignore_eos=True)
    together = smollm2_llm.generate(prompts, params, use_tqdm=False)
    alone = [smollm2_llm.generate(p, params, use_tqdm=False)[0] for p in prompts]
    assert len({len(smollm2_tokenizer(p).input_ids) for p in prompts}) > 8  # really different lengths
    assert [r["token_ids"] for r in together] == [r["token_ids"] for r in alone]


def test_prefix_cache_reuses_blocks_and_keeps_output(smollm2_llm, smollm2_tokenizer):
    engine = smollm2_llm.engine
    shared = "Here is a long story about a lighthouse keeper who lived alone. " * 12
    first_prompt = chat_prompt(smollm2_tokenizer, shared + "Summarise it.")
    second_prompt = chat_prompt(smollm2_tokenizer, shared + "Who is the hero?")
    params = SamplingParams(temperature=0, max_tokens=16)

    first = smollm2_llm.generate(first_prompt, params, use_tqdm=False)[0]
    hits_before = engine.block_manager.prefix_cache_hits
    second = smollm2_llm.generate(second_prompt, params, use_tqdm=False)[0]
    reused = engine.block_manager.prefix_cache_hits - hits_before
    assert reused >= 128  # most of the ~150-token shared prefix, in whole blocks

    engine.block_manager.enable_prefix_caching = False
    try:
        uncached = smollm2_llm.generate(second_prompt, params, use_tqdm=False)[0]
    finally:
        engine.block_manager.enable_prefix_caching = True
    assert second["token_ids"] == uncached["token_ids"]
    assert first["token_ids"] != second["token_ids"]


def test_twin_prompts_do_not_poison_the_prefix_cache(smollm2_llm, smollm2_tokenizer):
    """Regression: two sequences with the same whole-block prompt (n>1, a retry) registered
    the twin's first generated block as if it began a prompt; a prompt made of those
    tokens then got K/V computed at other positions, after other tokens."""
    engine = smollm2_llm.engine
    block_size = engine.config.block_size
    prompt = smollm2_tokenizer.encode("The old lighthouse keeper climbed the winding stairs every single night to light the lamp for passing ships")
    prompt = prompt[:block_size]
    assert len(prompt) == block_size
    # one token more than a block, so that the generated block is computed (and published)
    params = SamplingParams(temperature=0, max_tokens=block_size + 1, ignore_eos=True)
    twins = smollm2_llm.generate([prompt, prompt], params, use_tqdm=False)
    follow_up = twins[1]["token_ids"][:block_size] + smollm2_tokenizer.encode(" Then", add_special_tokens=False)
    check = SamplingParams(temperature=0, max_tokens=16)
    cached = smollm2_llm.generate([follow_up], check, use_tqdm=False)[0]
    engine.block_manager.enable_prefix_caching = False
    try:
        uncached = smollm2_llm.generate([follow_up], check, use_tqdm=False)[0]
    finally:
        engine.block_manager.enable_prefix_caching = True
    assert cached["token_ids"] == uncached["token_ids"]


@pytest.mark.gpu
@pytest.mark.parametrize("backend", ["torch", "triton", "flash-attn"])
def test_greedy_parity_on_cuda(backend, smollm2_path, smollm2_tokenizer, reference_model):
    """On a GPU: float32 backends give transformers' greedy tokens; flash-attn
    (half precision only) agrees with the torch backend in bfloat16."""
    from nanovllm_core import LLM
    from nanovllm_core.plugins import attention_backends

    try:
        attention_backends().get(backend).check_available(torch.device("cuda"))
    except RuntimeError as error:
        pytest.skip(str(error))
    prompts = [chat_prompt(smollm2_tokenizer, m) for m in CHAT_MESSAGES]
    params = SamplingParams(temperature=0, max_tokens=MAX_TOKENS)
    if backend == "flash-attn":
        ours = LLM(str(smollm2_path), device="cuda", dtype="bfloat16", attention_backend=backend, block_size=256,
                   kv_cache_memory_gb=2)
        peer = LLM(str(smollm2_path), device="cuda", dtype="bfloat16", attention_backend="torch", enforce_eager=True,
                   kv_cache_memory_gb=2)
        for a, b in zip(ours.generate(prompts, params, use_tqdm=False), peer.generate(prompts, params, use_tqdm=False)):
            assert a["token_ids"][:8] == b["token_ids"][:8]
        return
    ours = LLM(str(smollm2_path), device="cuda", dtype="float32", attention_backend=backend, kv_cache_memory_gb=2)
    for prompt, result in zip(prompts, ours.generate(prompts, params, use_tqdm=False)):
        ids = smollm2_tokenizer(prompt, return_tensors="pt").input_ids
        expected = reference_model.generate(ids, max_new_tokens=MAX_TOKENS, do_sample=False)[0, ids.shape[1] :]
        assert result["token_ids"] == expected.tolist()
