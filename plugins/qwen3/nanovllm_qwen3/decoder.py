"""Llama, Qwen2 and Qwen3: the core's Llama-style decoder, each with its settings.

- Llama: bias on q, k and v as the config's ``attention_bias`` says (none for SmolLM2).
- Qwen2: bias on the q, k and v projections.
- Qwen3: RMSNorm on each head of q and k before rotary, and a
  ``head_dim`` that need not be ``hidden_size / num_heads`` (the decoder reads it).
"""

from nanovllm_core.layers import DecoderSettings, LlamaStyleForCausalLM


class LlamaForCausalLM(LlamaStyleForCausalLM):
    settings = DecoderSettings()


class Qwen2ForCausalLM(LlamaStyleForCausalLM):
    settings = DecoderSettings(qkv_bias=True)


class Qwen3ForCausalLM(LlamaStyleForCausalLM):
    settings = DecoderSettings(qk_norm=True)
