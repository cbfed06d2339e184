"""A pre-norm Llama-style decoder for model plugins, its common variations as settings.

Llama, Qwen2, Qwen3 and Mistral are this decoder with different ``DecoderSettings``; a
plugin for another member of the family is a subclass that names its settings:

    class MistralForCausalLM(LlamaStyleForCausalLM):
        settings = DecoderSettings(sliding_window=True)

Checkpoints load through ``packed_modules_mapping`` (Hugging Face's q/k/v_proj and
gate/up_proj names), GGUF files through the core's Llama tensor names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from nanovllm_core.distributed import get_tp_size
from nanovllm_core.layers.activation import SiluAndMul
from nanovllm_core.layers.attention import Attention
from nanovllm_core.layers.embed_head import ParallelLMHead, VocabParallelEmbedding
from nanovllm_core.layers.layernorm import RMSNorm
from nanovllm_core.layers.linear import FUSED_QKV_GATE_UP, MergedColumnParallelLinear, QKVParallelLinear, RowParallelLinear
from nanovllm_core.layers.rotary import get_rope


@dataclass(frozen=True)
class DecoderSettings:
    """``qkv_bias``: bias on the q, k and v projections (None: the config's ``attention_bias``);
    ``qk_norm``: RMSNorm on each head of q and k before rotary (Qwen3); ``sliding_window``:
    every layer attends to its token and the ``config.sliding_window - 1`` before it, when the
    config sets one (Mistral); ``tie_word_embeddings``: the LM head is the embedding (None:
    the config's)."""

    qkv_bias: bool | None = None
    qk_norm: bool = False
    sliding_window: bool = False
    tie_word_embeddings: bool | None = None


class DecoderAttention(nn.Module):
    def __init__(self, config, settings: DecoderSettings):
        super().__init__()
        tp_size = get_tp_size()
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        qkv_bias = settings.qkv_bias if settings.qkv_bias is not None else bool(getattr(config, "attention_bias", False))
        self.qkv_proj = QKVParallelLinear(
            config.hidden_size, self.head_dim, config.num_attention_heads, config.num_key_value_heads, qkv_bias
        )
        self.num_heads = config.num_attention_heads // tp_size
        self.num_kv_heads = config.num_key_value_heads // tp_size
        self.q_size, self.kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.o_proj = RowParallelLinear(config.num_attention_heads * self.head_dim, config.hidden_size)
        self.rotary_emb = get_rope(
            self.head_dim,
            config.max_position_embeddings,
            getattr(config, "rope_theta", None) or _rope_parameter(config, "rope_theta", 10000.0),
            _rope_scaling(config),
            getattr(config, "rope_freq_factors", None),
        )
        window = getattr(config, "sliding_window", None) if settings.sliding_window else None
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim**-0.5, self.num_kv_heads,
                              sliding_window=window)
        if settings.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
            self.k_norm = RMSNorm(self.head_dim, eps=config.rms_norm_eps)
        self.qk_norm = settings.qk_norm

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        tokens = hidden_states.shape[0]
        q, k, v = self.qkv_proj(hidden_states).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = q.view(tokens, self.num_heads, self.head_dim)
        k = k.view(tokens, self.num_kv_heads, self.head_dim)
        if self.qk_norm:
            q, k = self.q_norm(q), self.k_norm(k)
        q, k = self.rotary_emb(positions, q, k)
        return self.o_proj(self.attn(q, k, v))


def _rope_parameter(config, name: str, default: float) -> float:
    # transformers 5 moved rope settings into config.rope_parameters
    parameters = getattr(config, "rope_parameters", None) or {}
    return parameters.get(name, default)


def _rope_scaling(config) -> dict | None:
    scaling = getattr(config, "rope_scaling", None) or getattr(config, "rope_parameters", None)
    if not scaling or scaling.get("rope_type", scaling.get("type", "default")) == "default":
        return None
    return scaling


class DecoderMLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [config.intermediate_size] * 2)
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size)
        self.act_fn = SiluAndMul()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class DecoderLayer(nn.Module):
    def __init__(self, config, settings: DecoderSettings):
        super().__init__()
        self.self_attn = DecoderAttention(config, settings)
        self.mlp = DecoderMLP(config)
        self.input_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, positions, hidden_states, residual):
        if residual is None:
            hidden_states, residual = self.input_layernorm(hidden_states), hidden_states
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.self_attn(positions, hidden_states)
        hidden_states, residual = self.post_attention_layernorm(hidden_states, residual)
        return self.mlp(hidden_states), residual


class DecoderModel(nn.Module):
    def __init__(self, config, settings: DecoderSettings):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(config, settings) for _ in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, eps=config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden_states, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            hidden_states, residual = layer(positions, hidden_states, residual)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class LlamaStyleForCausalLM(nn.Module):
    """Subclass it and set ``settings``; register the subclass under its architecture name."""

    settings = DecoderSettings()
    packed_modules_mapping = FUSED_QKV_GATE_UP

    def __init__(self, config):
        super().__init__()
        self.model = DecoderModel(config, self.settings)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size)
        tied = self.settings.tie_word_embeddings
        if tied if tied is not None else config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden_states)
