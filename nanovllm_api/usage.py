"""Token counts of a response, as OpenAI's ``usage`` reports them."""

from __future__ import annotations

from nanovllm_api.protocol.common import Usage
from nanovllm_api.protocol.sampling import SamplingFields
from nanovllm_core.outputs import RequestOutput


def usage(prompts: list[list[int]], finals: list[RequestOutput | None]) -> Usage:
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(len(f.output_token_ids) for f in finals)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details={"cached_tokens": max(f.num_cached_tokens for f in finals)},
    )


class StreamUsage:
    """Token counts of a streamed generation as it goes: with stream_options'
    continuous_usage_stats (and include_usage), every chunk carries them."""

    def __init__(self, request: SamplingFields, prompts: list[list[int]]):
        options = request.stream_options
        self.continuous = bool(options and options.include_usage and options.continuous_usage_stats)
        self.prompt_tokens = sum(len(p) for p in prompts)
        self.completion_tokens = 0

    def count(self, output: RequestOutput) -> None:
        self.completion_tokens += len(output.new_token_ids)

    def per_chunk(self) -> Usage | None:
        if not self.continuous:
            return None
        total = self.prompt_tokens + self.completion_tokens
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens, total_tokens=total)
