"""The served model's limits, and the check every request passes against them
before it reaches the engine (once: by the engine's client, or by ``LLMEngine.add_request``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from nanovllm_core.errors import ContextLengthError, InvalidRequestError

if TYPE_CHECKING:
    from nanovllm_core.sampling_params import SamplingParams


@dataclass(frozen=True)
class ModelInfo:
    max_model_len: int  # the setting, capped to the model's context and to the KV cache
    vocab_size: int
    tokenizer: Any = None  # the Hugging Face tokenizer; None with skip_tokenizer_init
    # the model's own defaults for sampling fields a request leaves out (generation_config.json)
    sampling_defaults: dict[str, float] = field(default_factory=dict)

    def check_request(self, prompt_token_ids: list[int], params: SamplingParams) -> SamplingParams:
        """The params with max_tokens resolved, if the request can run; else InvalidRequestError."""
        params.validate()
        num_prompt = len(prompt_token_ids)
        if num_prompt == 0:
            raise InvalidRequestError("the prompt is empty", param="prompt")
        max_tokens = params.max_tokens if params.max_tokens is not None else self.max_model_len - num_prompt
        if num_prompt + max_tokens > self.max_model_len or max_tokens < 1:
            raise ContextLengthError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{num_prompt + max(max_tokens, 1)} tokens ({num_prompt} in the prompt, "
                f"{max(max_tokens, 1)} for the completion). Please reduce the prompt or the completion length."
            )
        bad = [t for t in prompt_token_ids if not 0 <= t < self.vocab_size]  # after the length check bounds it
        if bad:
            raise InvalidRequestError(f"token ids out of range [0, {self.vocab_size}): {bad[:5]}", param="prompt")
        return params if params.max_tokens == max_tokens else replace(params, max_tokens=max_tokens)
