"""Gemma 3's text decoder (``Gemma3ForCausalLM``) on nanovllm's layers.

What Gemma 3 adds to a Llama-style decoder, and where each piece lives here:

- local and global layers (``config.layer_types``): local layers attend through a
  sliding window (``Attention(sliding_window=...)``) and use their own RoPE base;
- RMSNorm scaling by ``1 + weight``: stored as ``1 + weight`` on load, so the core's
  RMSNorm (and its CPU kernel) runs it unchanged;
- RMSNorm on each head of q and k, and norms after attention and around the MLP;
- a GELU-tanh gated MLP, embeddings scaled by sqrt(hidden_size), attention scaled by
  ``query_pre_attn_scalar``, and optionally a soft cap on the final logits.
"""

from __future__ import annotations

import torch
from torch import nn

from nanovllm_core.distributed import get_tp_size
from nanovllm_core.layers import (
    FUSED_QKV_GATE_UP,
    Attention,
    GeluAndMul,
    MergedColumnParallelLinear,
    ParallelLMHead,
    QKVParallelLinear,
    RMSNorm,
    RowParallelLinear,
    VocabParallelEmbedding,
    get_rope,
)

SLIDING = "sliding_attention"


class GemmaRMSNorm(RMSNorm):
    """RMSNorm times ``1 + weight``; the parameter holds ``1 + weight`` once loaded."""

    def __init__(self, hidden_size: int, eps: float):
        super().__init__(hidden_size, eps)
        self.weight.weight_loader = self.load_offset_weight

    @staticmethod
    def load_offset_weight(param: nn.Parameter, loaded: torch.Tensor) -> None:
        param.data.copy_(loaded.float() + 1)


def layer_types(config) -> list[str]:
    """Which layers are local: ``layer_types`` (transformers >= 4.53), else every
    ``sliding_window_pattern``-th layer is global."""
    if getattr(config, "layer_types", None):
        return list(config.layer_types)
    pattern = config.sliding_window_pattern
    return [SLIDING if (i + 1) % pattern else "full_attention" for i in range(config.num_hidden_layers)]


def rope_settings(config, layer_type: str) -> tuple[float, dict | None]:
    """(base, scaling) of a layer kind: ``rope_parameters`` per kind in transformers 5,
    ``rope_local_base_freq`` / ``rope_theta`` + ``rope_scaling`` before."""
    parameters = getattr(config, "rope_parameters", None) or {}
    if layer_type in parameters:
        settings = parameters[layer_type]
    elif layer_type == SLIDING:
        settings = {"rope_theta": config.rope_local_base_freq}
    else:
        settings = {**(getattr(config, "rope_scaling", None) or {}), "rope_theta": config.rope_theta}
    scaled = settings.get("rope_type", settings.get("type", "default")) != "default"
    return settings["rope_theta"], settings if scaled else None


class Gemma3Attention(nn.Module):
    def __init__(self, config, layer_type: str):
        super().__init__()
        if getattr(config, "attn_logit_softcapping", None):
            raise NotImplementedError("attention logit soft-capping (Gemma 2) is not supported")
        tp_size = get_tp_size()
        self.head_dim = config.head_dim
        self.num_heads = config.num_attention_heads // tp_size
        self.num_kv_heads = config.num_key_value_heads // tp_size
        self.q_size, self.kv_size = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, config.num_attention_heads,
                                          config.num_key_value_heads, config.attention_bias)
        self.o_proj = RowParallelLinear(config.num_attention_heads * self.head_dim, config.hidden_size,
                                        config.attention_bias)
        self.q_norm = GemmaRMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = GemmaRMSNorm(self.head_dim, config.rms_norm_eps)
        base, scaling = rope_settings(config, layer_type)
        self.rotary_emb = get_rope(self.head_dim, config.max_position_embeddings, base, scaling)
        window = config.sliding_window if layer_type == SLIDING else None
        self.attn = Attention(self.num_heads, self.head_dim, config.query_pre_attn_scalar**-0.5, self.num_kv_heads,
                              sliding_window=window)

    def forward(self, positions: torch.Tensor, hidden_states: torch.Tensor) -> torch.Tensor:
        tokens = hidden_states.shape[0]
        q, k, v = self.qkv_proj(hidden_states).split([self.q_size, self.kv_size, self.kv_size], dim=-1)
        q = self.q_norm(q.reshape(tokens, self.num_heads, self.head_dim))
        k = self.k_norm(k.reshape(tokens, self.num_kv_heads, self.head_dim))
        q, k = self.rotary_emb(positions, q, k)
        return self.o_proj(self.attn(q, k, v))


class Gemma3MLP(nn.Module):
    def __init__(self, config):
        super().__init__()
        if config.hidden_activation != "gelu_pytorch_tanh":
            raise NotImplementedError(f"hidden_activation {config.hidden_activation!r} is not supported")
        self.gate_up_proj = MergedColumnParallelLinear(config.hidden_size, [config.intermediate_size] * 2)
        self.down_proj = RowParallelLinear(config.intermediate_size, config.hidden_size)
        self.act_fn = GeluAndMul(approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act_fn(self.gate_up_proj(x)))


class Gemma3DecoderLayer(nn.Module):
    def __init__(self, config, layer_type: str):
        super().__init__()
        self.self_attn = Gemma3Attention(config, layer_type)
        self.mlp = Gemma3MLP(config)
        eps = config.rms_norm_eps
        self.input_layernorm = GemmaRMSNorm(config.hidden_size, eps)
        self.post_attention_layernorm = GemmaRMSNorm(config.hidden_size, eps)
        self.pre_feedforward_layernorm = GemmaRMSNorm(config.hidden_size, eps)
        self.post_feedforward_layernorm = GemmaRMSNorm(config.hidden_size, eps)

    def forward(self, positions, hidden_states, residual):
        """``hidden_states`` is the previous layer's MLP output, not yet added to ``residual``."""
        if residual is None:
            hidden_states, residual = self.input_layernorm(hidden_states), hidden_states
        else:
            hidden_states, residual = self.input_layernorm(hidden_states, residual)
        hidden_states = self.post_attention_layernorm(self.self_attn(positions, hidden_states))
        hidden_states, residual = self.pre_feedforward_layernorm(hidden_states, residual)
        return self.post_feedforward_layernorm(self.mlp(hidden_states)), residual


class Gemma3Model(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        # in the model's dtype, as transformers rounds it
        self.register_buffer("embed_scale", torch.tensor(config.hidden_size**0.5), persistent=False)
        self.layers = nn.ModuleList(Gemma3DecoderLayer(config, kind) for kind in layer_types(config))
        self.norm = GemmaRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden_states, residual = self.embed_tokens(input_ids) * self.embed_scale, None
        for layer in self.layers:
            hidden_states, residual = layer(positions, hidden_states, residual)
        hidden_states, _ = self.norm(hidden_states, residual)
        return hidden_states


class Gemma3ForCausalLM(nn.Module):
    packed_modules_mapping = FUSED_QKV_GATE_UP
    # llama.cpp's names for the norms a Llama layer does not have (its ffn_norm is Gemma's pre-MLP norm)
    gguf_tensor_names = {
        "blk.N.post_attention_norm.weight": "model.layers.N.post_attention_layernorm.weight",
        "blk.N.ffn_norm.weight": "model.layers.N.pre_feedforward_layernorm.weight",
        "blk.N.post_ffw_norm.weight": "model.layers.N.post_feedforward_layernorm.weight",
    }
    # base-model GGUFs carry no chat template; Gemma's turns end with <end_of_turn>, not <eos>
    default_chat_template = "gemma"
    stop_tokens = ("<end_of_turn>",)

    def __init__(self, config):
        super().__init__()
        self.model = Gemma3Model(config)
        self.lm_head = ParallelLMHead(config.vocab_size, config.hidden_size)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        self.final_logit_softcapping = getattr(config, "final_logit_softcapping", None)

    @staticmethod
    def from_gguf(name: str, tensor: torch.Tensor) -> torch.Tensor:
        """llama.cpp's converter stores every Gemma norm weight as 1 + w; transformers' holds w."""
        return tensor - 1 if name.endswith("norm.weight") else tensor

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids, positions)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor:
        logits = self.lm_head(hidden_states)
        if self.final_logit_softcapping:
            cap = self.final_logit_softcapping
            logits = torch.tanh(logits / cap) * cap
        return logits
