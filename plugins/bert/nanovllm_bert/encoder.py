"""BERT as an encoder for embeddings: post-norm layers, absolute position
embeddings, bidirectional attention through the core's ``Attention(causal=False)``.

There is no language-model head, so the engine serves it with task embed. The
checkpoint's pooler (a dense layer over [CLS], used by BERT's pre-training)
is not loaded: sentence-transformers models pool the hidden states themselves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from nanovllm_core.distributed import get_tp_size
from nanovllm_core.layers import (
    Attention,
    ColumnParallelLinear,
    QKVParallelLinear,
    RowParallelLinear,
    VocabParallelEmbedding,
)
from nanovllm_core.loader.weights import load_weights

# checkpoint tensors the encoder does not use
UNUSED_PREFIXES = ("pooler.", "embeddings.position_ids")
# checkpoint name fragment -> this module tree's (levels it does not need)
RENAMES = ((".attention.self.", ".attention."), (".intermediate.dense.", ".intermediate."))


class BertEmbeddings(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.word_embeddings = VocabParallelEmbedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        # one segment: every token has token type 0
        embedded = self.word_embeddings(input_ids) + self.position_embeddings(positions)
        return self.LayerNorm(embedded + self.token_type_embeddings.weight[0])


class BertOutput(nn.Module):
    """A projection back to the hidden size, then the residual and LayerNorm (post-norm)."""

    def __init__(self, input_size: int, config):
        super().__init__()
        self.dense = RowParallelLinear(input_size, config.hidden_size, bias=True)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, hidden_states: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(hidden_states) + residual)


class BertAttention(nn.Module):
    def __init__(self, config):
        super().__init__()
        heads = config.num_attention_heads
        self.head_dim = config.hidden_size // heads
        self.qkv_proj = QKVParallelLinear(config.hidden_size, self.head_dim, heads, heads, bias=True)
        self.num_heads = heads // get_tp_size()
        self.attn = Attention(self.num_heads, self.head_dim, self.head_dim**-0.5, self.num_heads, causal=False)
        self.output = BertOutput(config.hidden_size, config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        size = self.num_heads * self.head_dim
        q, k, v = self.qkv_proj(hidden_states).split([size, size, size], dim=-1)
        return self.output(self.attn(q, k, v), hidden_states)


class BertLayer(nn.Module):
    def __init__(self, config):
        super().__init__()
        if config.hidden_act != "gelu":
            raise ValueError(f"BERT with hidden_act {config.hidden_act!r} is not supported (only gelu)")
        self.attention = BertAttention(config)
        self.intermediate = ColumnParallelLinear(config.hidden_size, config.intermediate_size, bias=True)
        self.output = BertOutput(config.intermediate_size, config)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        attended = self.attention(hidden_states)
        return self.output(F.gelu(self.intermediate(attended)), attended)


class BertEncoder(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            hidden_states = layer(hidden_states)
        return hidden_states


class BertModel(nn.Module):
    default_pooler = "cls"  # BERT's own sentence representation, for checkpoints without sentence-transformers files
    packed_modules_mapping = {"query": ("qkv_proj", "q"), "key": ("qkv_proj", "k"), "value": ("qkv_proj", "v")}

    def __init__(self, config):
        super().__init__()
        if getattr(config, "position_embedding_type", "absolute") != "absolute":
            raise ValueError(f"BERT with {config.position_embedding_type} position embeddings is not supported")
        self.embeddings = BertEmbeddings(config)
        self.encoder = BertEncoder(config)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        return self.encoder(self.embeddings(input_ids, positions))

    def load_weights(self, weights) -> None:
        """The checkpoint's names, without the ``bert.`` prefix of task checkpoints and the
        levels in RENAMES, and without what the encoder does not use."""
        load_weights(self, ((_rename(name), tensor) for name, tensor in weights
                            if not name.removeprefix("bert.").startswith(UNUSED_PREFIXES)), self.packed_modules_mapping)


def _rename(name: str) -> str:
    name = name.removeprefix("bert.")
    for fragment, replacement in RENAMES:
        name = name.replace(fragment, replacement)
    return name
