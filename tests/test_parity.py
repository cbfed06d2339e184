"""Our logits equal transformers' for the same random weights, through prefill,
chunked prefill, paged decode steps and batching (float32)."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from nanovllm_core import LLM, SamplingParams
from nanovllm_core.testing import CPU_PARITY_SETTINGS, check_logits_match_transformers
from tiny_models import make_tiny_checkpoint

ARCHITECTURES = ["LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"]
# float32 on both sides; the difference is summation order only
ATOL = 2e-4


@pytest.fixture(scope="module", params=ARCHITECTURES)
def checkpoint(request, tmp_path_factory, word_tokenizer):
    return make_tiny_checkpoint(request.param, tmp_path_factory.mktemp(request.param), word_tokenizer)


@pytest.mark.parametrize("attention_backend,block_size,max_num_batched_tokens", CPU_PARITY_SETTINGS)
def test_logits_match_transformers(checkpoint, attention_backend, block_size, max_num_batched_tokens):
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, 40000, (n,), generator=generator).tolist() for n in (7, 33, 58)]
    check_logits_match_transformers(checkpoint, prompts, attention_backend, block_size, max_num_batched_tokens)


def test_prompt_logprobs_match_transformers(checkpoint):
    """Every prompt token's logprob and rank, across prefill chunks and block boundaries, and
    again for a repeated prompt (which must not be served from the prefix cache unscored)."""
    generator = torch.Generator().manual_seed(2)
    prompts = [torch.randint(0, 40000, (n,), generator=generator).tolist() for n in (7, 58)]
    llm = LLM(str(checkpoint), dtype="float32", block_size=4, max_num_batched_tokens=24)
    params = SamplingParams(max_tokens=1, temperature=0, prompt_logprobs=3)
    first = llm.generate(prompts, params, use_tqdm=False)
    again = llm.generate(prompts[1], params, use_tqdm=False)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    for prompt, result in zip([*prompts, prompts[1]], [*first, *again]):
        with torch.no_grad():
            expected = model(torch.tensor([prompt])).logits[0, :-1].log_softmax(dim=-1)
        scored = result["prompt_logprobs"]
        assert scored[0] is None and len(scored) == len(prompt)
        ours = torch.tensor([token.logprob for token in scored[1:]])
        truth = expected[torch.arange(len(prompt) - 1), prompt[1:]]
        torch.testing.assert_close(ours, truth, atol=ATOL, rtol=0)
        # near-ties of a random model's logits may order either way within the tolerance
        ranks = torch.tensor([token.rank for token in scored[1:]])
        assert ((expected > truth[:, None] + ATOL).sum(dim=-1) + 1 <= ranks).all()
        assert (ranks <= (expected > truth[:, None] - ATOL).sum(dim=-1) + 1).all()
        top_values = torch.tensor([[value for _, value in token.top_logprobs] for token in scored[1:]])
        torch.testing.assert_close(top_values, expected.topk(3, dim=-1).values, atol=ATOL, rtol=0)
        top_ids = torch.tensor([[token_id for token_id, _ in token.top_logprobs] for token in scored[1:]])
        torch.testing.assert_close(expected.gather(1, top_ids), top_values, atol=ATOL, rtol=0)


# On a GPU: each engine gets a small KV budget, so that several fit one GPU in a test run
GPU_SETTINGS = {"device": "cuda", "kv_cache_memory_gb": 1}


@pytest.mark.gpu
@pytest.mark.parametrize("attention_backend", ["torch", "triton"])
def test_logits_match_transformers_on_cuda(checkpoint, attention_backend):
    """float32 on the GPU against transformers' float32 on the CPU: summation order, and the
    GPU's own matmul kernels, apart."""
    generator = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 40000, (n,), generator=generator).tolist() for n in (7, 33, 58)]
    check_logits_match_transformers(checkpoint, prompts, attention_backend, 16, 64, atol=1e-3, **GPU_SETTINGS)


@pytest.mark.gpu
def test_cuda_graphs_give_the_eager_tokens(checkpoint):
    generator = torch.Generator().manual_seed(4)
    prompts = [torch.randint(0, 40000, (n,), generator=generator).tolist() for n in (5, 20, 41, 9)]
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    outputs = []
    for eager in (True, False):
        llm = LLM(str(checkpoint), dtype="float32", attention_backend="triton", enforce_eager=eager, **GPU_SETTINGS)
        outputs.append([out["token_ids"] for out in llm.generate(prompts, params, use_tqdm=False)])
        llm.shutdown()
    assert outputs[0] == outputs[1]
