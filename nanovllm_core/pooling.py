"""Embeddings: what a request asks of pooling, and the poolers that turn a
sequence's hidden states into one vector (a contract: it imports nothing of the engine).

A pooler is registered through the ``register_poolers`` hook and called once
per sequence, on the hidden states of all its tokens, after its whole prompt
ran in one step. Normalising and Matryoshka truncation come after, in ``embed``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from nanovllm_core.errors import InvalidRequestError


@dataclass(frozen=True)
class PoolingParams:
    """An embedding request's options: ``dimensions`` keeps the first that many values
    (only for models trained for it, Matryoshka-style; normalised again after)."""

    dimensions: int | None = None

    def validate(self) -> None:
        if self.dimensions is not None and self.dimensions < 1:
            raise InvalidRequestError(f"dimensions must be at least 1, got {self.dimensions}", param="dimensions")


@dataclass(frozen=True)
class PoolerConfig:
    """How a model pools: a registered pooler's name, and whether the vector is L2-normalised."""

    pooler: str
    normalize: bool


class Pooler:
    """Base class of poolers: ``pool(hidden_states [num_tokens, hidden]) -> [hidden]``."""

    def pool(self, hidden_states: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class MeanPooler(Pooler):
    """The mean over every token (sentence-transformers' ``pooling_mode_mean_tokens``)."""

    def pool(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states.float().mean(dim=0)


class CLSPooler(Pooler):
    """The first token's state (BERT's [CLS])."""

    def pool(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states[0].float()


class LastTokenPooler(Pooler):
    """The last token's state: the one that has seen the whole input in a causal decoder."""

    def pool(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states[-1].float()


class MaxPooler(Pooler):
    """The maximum of each dimension over the tokens."""

    def pool(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return hidden_states.float().amax(dim=0)


def embed(pooler: Pooler, hidden_states: torch.Tensor, normalize: bool, params: PoolingParams) -> torch.Tensor:
    """One sequence's embedding, float32 on the CPU."""
    vector = pooler.pool(hidden_states)
    if params.dimensions is not None:
        vector = vector[: params.dimensions]
    if normalize:
        vector = F.normalize(vector, dim=-1)
    return vector.cpu()
