"""What every request and response body shares: the base request model, the ranges of
numbers, the text measures, ids and times, usage."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from nanovllm_core.sampling_params import INT64_MAX, INT64_MIN, MAX_COUNT


# fields of the OpenAI API that this server recognises but does not implement
UNSUPPORTED_FIELDS = {
    "functions",
    "function_call",
    "audio",
    "modalities",
    "prediction",
    "reasoning_effort",
    "web_search_options",
    "suffix",
}

IGNORED_FIELDS = {"user", "store", "metadata", "service_tier"}  # accepted; they do not change the output

# Every number a request may send has its range here, as the engine can hold it
# (nanovllm_core.sampling_params); /openapi.json publishes them (tests/test_bounds.py).
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]

PositiveCount = Annotated[int, Field(ge=1, le=MAX_COUNT)]

TokenId = Annotated[StrictInt, Field(ge=0, le=MAX_COUNT)]  # and below the vocabulary's size: the engine checks

Seed = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]

# a token id as a JSON object key: ASCII digits only (str.isdigit takes '²', which int() refuses)
TokenIdKey = Annotated[str, Field(pattern=r"^[0-9]{1,10}$")]

Probability = Annotated[float, Field(ge=0, le=1)]


class RequestModel(BaseModel):
    # JSON's NaN and Infinity literals are accepted by Python's parser; refuse them here
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        """Lone surrogates (a JSON escape like \\ud800) are valid JSON but not text; tokenizers reject them."""
        if _has_lone_surrogate(data):
            raise ValueError("the request contains a string that is not valid Unicode (a lone surrogate)")
        return data

    def unknown_fields(self) -> list[str]:
        return sorted(self.model_extra or {})


def _has_lone_surrogate(value: Any) -> bool:
    for item in leaves(value):
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


def leaves(value: Any) -> Iterator[Any]:
    """Every string, number and other leaf of a body or a request model, dict keys included;
    iterative, since a body may nest deeper than Python's recursion limit (or pydantic's)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, BaseModel):
            stack.extend(vars(item).values())
            stack.extend((item.model_extra or {}).values())
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        else:
            yield item


def text_size(value: Any) -> int:
    """Characters of every leaf of ``value`` as text: what a template may write of it."""
    return sum(len(item) if isinstance(item, str) else len(str(item)) for item in leaves(value) if item is not None)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False
    continuous_usage_stats: bool = False


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None


class PromptLogprob(BaseModel):
    logprob: float
    rank: int | None = None
    decoded_token: str

# vLLM's shape: per prompt token, None for the first, else {token id: its logprob} for the token and the top ones
PromptLogprobs = list[dict[str, PromptLogprob] | None]
