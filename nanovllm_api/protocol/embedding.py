"""/v1/embeddings: the request and the response."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from nanovllm_api.protocol.common import PositiveCount, RequestModel, TokenId
from nanovllm_core.pooling import PoolingParams


MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit


class EmbeddingRequest(RequestModel):
    model: str | None = None
    input: str | Annotated[list[str], Field(max_length=MAX_EMBEDDING_INPUTS)] | list[TokenId] | Annotated[
        list[list[TokenId]], Field(max_length=MAX_EMBEDDING_INPUTS)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: PositiveCount | None = None

    def to_pooling_params(self) -> PoolingParams:
        return PoolingParams(dimensions=self.dimensions)


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
