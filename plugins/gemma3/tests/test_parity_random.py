"""Our logits equal transformers' Gemma3ForCausalLM on small random configs with a
window of 8 tokens, so that prompts, prefill chunks and decodes all cross it:
through each attention backend that runs on a CPU (triton in its interpreter)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig

from nanovllm_core import LLM, SamplingParams
from nanovllm_core.testing import LogitsRecorder, LogitsRecorderPlugin, registered_plugin

DECODE_STEPS = 10
ATOL = 2e-4  # float32 on both sides; the difference is summation order only
WINDOW = 8


def tiny_gemma3_config(**overrides) -> Gemma3TextConfig:
    settings = dict(
        vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, head_dim=32, max_position_embeddings=256, sliding_window=WINDOW,
        # local, global, local, global: both kinds, each after the other
        layer_types=["sliding_attention", "full_attention"] * 2, query_pre_attn_scalar=32,
        rope_parameters={"sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                         "full_attention": {"rope_type": "default", "rope_theta": 1_000_000.0}},
        bos_token_id=1, eos_token_id=2, pad_token_id=0, tie_word_embeddings=True,
    )
    return Gemma3TextConfig(**{**settings, **overrides})


def save_checkpoint(config, directory):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    with torch.no_grad():  # Gemma initialises its norms to 0 (a scale of 1): make the 1 + w convention matter
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(0, 0.5)
    model.save_pretrained(directory)
    return directory


@pytest.fixture(scope="module", params=["tied", "softcapped"])
def checkpoint(request, tmp_path_factory):
    overrides = {} if request.param == "tied" else {"final_logit_softcapping": 3.0, "tie_word_embeddings": False}
    return save_checkpoint(tiny_gemma3_config(**overrides), tmp_path_factory.mktemp(request.param))


def reference_logits(checkpoint, prompt_ids: list[int]) -> torch.Tensor:
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=DECODE_STEPS, do_sample=False,
                         output_logits=True, return_dict_in_generate=True, eos_token_id=None, pad_token_id=0)
    return torch.stack([step[0] for step in out.logits])


@pytest.mark.parametrize(
    "attention_backend,block_size,max_num_batched_tokens",
    [
        ("torch", 16, 2048),
        ("torch", 4, 24),  # windows across block boundaries, prompts prefilled in chunks beside decodes
        ("cpu", 4, 24),  # the C++ decode kernel, which skips blocks before the window
        ("triton", 4, 24),  # the triton kernels, interpreted on a CPU
    ],
)
def test_logits_match_transformers(checkpoint, attention_backend, block_size, max_num_batched_tokens):
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 512, (n,), generator=generator).tolist() for n in (7, 33, 58)]
    LogitsRecorder.records.clear()
    with registered_plugin(LogitsRecorderPlugin()):
        llm = LLM(str(checkpoint), dtype="float32", sampler="record-logits", attention_backend=attention_backend,
                  block_size=block_size, max_num_batched_tokens=max_num_batched_tokens, skip_tokenizer_init=True)
        params = [SamplingParams(max_tokens=DECODE_STEPS, ignore_eos=True, seed=i) for i in range(len(prompts))]
        llm.generate(prompts, params, use_tqdm=False)
    for seed, prompt in enumerate(prompts):
        ours = torch.stack(LogitsRecorder.records[seed])
        expected = reference_logits(checkpoint, prompt)
        assert ours.shape == expected.shape
        torch.testing.assert_close(ours, expected, atol=ATOL, rtol=0)
