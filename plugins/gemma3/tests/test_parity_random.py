"""Our logits equal transformers' Gemma3ForCausalLM on small random configs with a
window of 8 tokens, so that prompts, prefill chunks and decodes all cross it: through each
attention backend that runs on a CPU (triton in its interpreter), in float32."""

import pytest
import torch
from transformers import AutoModelForCausalLM, Gemma3TextConfig

from nanovllm_core.testing import CPU_PARITY_SETTINGS, check_logits_match_transformers

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


@pytest.mark.parametrize("attention_backend,block_size,max_num_batched_tokens", CPU_PARITY_SETTINGS)
def test_logits_match_transformers(checkpoint, attention_backend, block_size, max_num_batched_tokens):
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 512, (n,), generator=generator).tolist() for n in (7, 33, 58)]
    check_logits_match_transformers(checkpoint, prompts, attention_backend, block_size, max_num_batched_tokens,
                                    skip_tokenizer_init=True)
