"""/v1/completions: the request and the response."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, Field

from nanovllm_api.protocol.common import PromptLogprobs, TokenId, Usage
from nanovllm_api.protocol.sampling import SamplingFields


DEFAULT_COMPLETION_MAX_TOKENS = 16  # as OpenAI's completions endpoint

PromptInput = str | list[str] | list[TokenId] | list[list[TokenId]]


class CompletionRequest(SamplingFields):
    prompt: PromptInput
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    best_of: Annotated[int, Field(ge=1, le=16)] | None = None  # n's range: only best_of == n is served

    default_max_tokens: ClassVar[int | None] = DEFAULT_COMPLETION_MAX_TOKENS

    def num_logprobs(self) -> int | None:
        return self.logprobs


class CompletionLogprobs(BaseModel):
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    prompt_logprobs: PromptLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
