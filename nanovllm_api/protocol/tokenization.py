"""/tokenize and /detokenize."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from nanovllm_api.protocol.chat import ChatMessage
from nanovllm_api.protocol.common import RequestModel, TokenId


class TokenizeRequest(RequestModel):
    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(RequestModel):
    model: str | None = None
    tokens: list[TokenId]


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str
