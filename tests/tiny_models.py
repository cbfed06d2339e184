"""Small random Llama / Qwen2 / Qwen3 checkpoints for fast, exact tests."""

from __future__ import annotations

from pathlib import Path

from transformers import LlamaConfig, Qwen2Config, Qwen3Config

from nanovllm_core.testing import save_random_checkpoint

COMMON = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=512,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
)


def tiny_config(architecture: str, vocab_size: int):
    if architecture == "Qwen3ForCausalLM":
        # head_dim deliberately differs from hidden_size / num_heads, as in real Qwen3
        return Qwen3Config(**COMMON, head_dim=32, vocab_size=vocab_size, rope_theta=1e6)
    if architecture == "Qwen2ForCausalLM":
        return Qwen2Config(**COMMON, vocab_size=vocab_size)
    return LlamaConfig(**{**COMMON, "tie_word_embeddings": True}, vocab_size=vocab_size, rope_theta=1e5)


def make_tiny_checkpoint(architecture: str, directory: Path, tokenizer) -> Path:
    return save_random_checkpoint(tiny_config(architecture, len(tokenizer)), directory, tokenizer)
