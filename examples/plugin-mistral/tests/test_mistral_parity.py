"""The plugin's own test: its model, with random weights, gives transformers' logits at every
step, on every CPU attention setting, prompts longer than the window included."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import MistralConfig

from nanovllm_core.hookspecs import hookimpl
from nanovllm_core.layers import LlamaStyleForCausalLM
from nanovllm_core.testing import CPU_PARITY_SETTINGS, check_model_matches_transformers, registered_plugin

if not torch.cuda.is_available():
    # the triton parity setting runs triton's interpreter on a CPU; set before triton is imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

WINDOW = 8  # shorter than the prompts, so that the window decides what each token sees
TINY_MISTRAL = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                    sliding_window=WINDOW, tie_word_embeddings=False)


@pytest.mark.parametrize("setting", CPU_PARITY_SETTINGS, ids=lambda setting: "-".join(map(str, setting)))
def test_mistral_matches_transformers(tmp_path, setting):
    check_model_matches_transformers(MistralConfig(**TINY_MISTRAL), tmp_path, settings=[setting])


class WindowlessMistral(LlamaStyleForCausalLM):
    """The mistake a parity test exists for: Mistral without its sliding window."""


class WindowlessPlugin:
    @hookimpl
    def register_model_architectures(self, register):
        register("MistralForCausalLM", WindowlessMistral)  # registered last: it wins


def test_a_parity_failure_names_the_setting_prompt_and_step(tmp_path):
    with registered_plugin(WindowlessPlugin()), pytest.raises(AssertionError) as failure:
        check_model_matches_transformers(MistralConfig(**TINY_MISTRAL), tmp_path, settings=[CPU_PARITY_SETTINGS[0]])
    message = str(failure.value)
    # the 5-token prompt and its first 3 decodes fit in the 8-token window; the 4th decode's
    # token is the 9th, the first whose attention the window changes
    assert "attention_backend=torch, block_size=16" in message and "prompt 0 (5 tokens" in message
    assert "at step 4 (decode 4)" in message
