"""Building blocks for model plugins: reuse these and the engine's KV cache,
attention backends and tensor parallelism work with your model unchanged."""

from nanovllm_core.layers.activation import GeluAndMul, SiluAndMul
from nanovllm_core.layers.attention import Attention
from nanovllm_core.layers.decoder import DecoderSettings, LlamaStyleForCausalLM
from nanovllm_core.layers.embed_head import ParallelLMHead, VocabParallelEmbedding
from nanovllm_core.layers.layernorm import RMSNorm
from nanovllm_core.layers.linear import (
    FUSED_QKV_GATE_UP,
    ColumnParallelLinear,
    MergedColumnParallelLinear,
    QKVParallelLinear,
    ReplicatedLinear,
    RowParallelLinear,
)
from nanovllm_core.layers.rotary import RotaryEmbedding, get_rope

__all__ = [
    "FUSED_QKV_GATE_UP",
    "Attention",
    "ColumnParallelLinear",
    "DecoderSettings",
    "GeluAndMul",
    "LlamaStyleForCausalLM",
    "MergedColumnParallelLinear",
    "ParallelLMHead",
    "QKVParallelLinear",
    "RMSNorm",
    "ReplicatedLinear",
    "RotaryEmbedding",
    "RowParallelLinear",
    "SiluAndMul",
    "VocabParallelEmbedding",
    "get_rope",
]
