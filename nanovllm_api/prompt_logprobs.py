"""vLLM's ``prompt_logprobs`` in a response: for each prompt token after the first, its
logprob and rank, and the most likely tokens at that position."""

from __future__ import annotations

from nanovllm_api.errors import BadRequest
from nanovllm_api.protocol.common import PromptLogprob, PromptLogprobs
from nanovllm_api.protocol.sampling import SamplingFields
from nanovllm_core.outputs import SampledToken


def check_not_streamed(request: SamplingFields) -> None:
    if request.prompt_logprobs is not None and request.stream:
        raise BadRequest("prompt_logprobs is not supported with streaming", param="prompt_logprobs")


def prompt_logprobs(tokenizer, scored: list[SampledToken | None] | None) -> PromptLogprobs | None:
    if scored is None:
        return None
    return [None if token is None else _entries(tokenizer, token) for token in scored]


def _entries(tokenizer, token: SampledToken) -> dict[str, PromptLogprob]:
    entries = {str(token.token_id): PromptLogprob(logprob=token.logprob, rank=token.rank,
                                                   decoded_token=tokenizer.decode([token.token_id]))}
    for rank, (token_id, logprob) in enumerate(token.top_logprobs or [], start=1):
        entries.setdefault(str(token_id), PromptLogprob(logprob=logprob, rank=rank,
                                                        decoded_token=tokenizer.decode([token_id])))
    return entries
