"""Mistral: Llama with every layer attending to the last ``config.sliding_window`` tokens."""

from nanovllm_core.layers import DecoderSettings, LlamaStyleForCausalLM


class MistralForCausalLM(LlamaStyleForCausalLM):
    settings = DecoderSettings(sliding_window=True)
