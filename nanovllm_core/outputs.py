"""What the engine hands back for a request, step by step: a contract shared by
the engine, its clients and the server, so it imports nothing of the engine."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


# JSON has no -inf: a token the grammar masked reports this logprob instead (vLLM's floor too)
LOGPROB_FLOOR = -9999.0


@dataclass
class SampledToken:
    token_id: int
    logprob: float | None = None
    top_logprobs: list[tuple[int, float]] | None = None
    rank: int | None = None  # of token_id among the vocabulary's logprobs (1: the most likely); prompt tokens only


@dataclass
class RequestOutput:
    """What one step produced for one request: the new tokens and text, and on the
    final output only, all of them (a stream of full values would cost O(n^2))."""

    request_id: str
    new_token_ids: list[int]
    new_text: str  # never part of a stop string or of a UTF-8 character
    output_token_ids: list[int]  # every output token, on the final output; empty before
    text: str  # everything emitted, on the final output; empty before
    finished: bool
    finish_reason: str | None  # "stop", "length", "abort" or "error"
    stop_reason: str | int | None  # the stop string or stop token that ended it
    num_prompt_tokens: int
    num_cached_tokens: int
    new_logprobs: list[SampledToken] = field(default_factory=list)
    # with prompt_logprobs, on the first output: one entry per prompt token, None for the first
    prompt_logprobs: list[SampledToken | None] | None = None
    embedding: Any = None  # an embedding request's vector (a float32 CPU tensor), on its only output
    # finish_reason "error": the engine failed on this request alone (what failed is in the log, not here)
    error: str | None = None

    @classmethod
    def failed(cls, request_id: str, num_prompt_tokens: int, message: str) -> RequestOutput:
        return cls(request_id=request_id, new_token_ids=[], new_text="", output_token_ids=[], text="", finished=True,
                   finish_reason="error", stop_reason=None, num_prompt_tokens=num_prompt_tokens, num_cached_tokens=0,
                   error=message)
