"""The served model's limits, and the check every request passes against them
before it reaches the engine (once: by the engine's client, or by ``LLMEngine.add_request``)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from nanovllm_core.errors import ContextLengthError, InvalidRequestError

if TYPE_CHECKING:
    from nanovllm_core.pooling import PoolingParams
    from nanovllm_core.sampling_params import SamplingParams

ENDPOINT_OF_TASK = {"generate": "/v1/completions and /v1/chat/completions", "embed": "/v1/embeddings"}


@dataclass(frozen=True)
class ModelInfo:
    max_model_len: int  # the setting, capped to the model's context and to the KV cache
    vocab_size: int
    tokenizer: Any = None  # the Hugging Face tokenizer; None with skip_tokenizer_init
    # the model's own defaults for sampling fields a request leaves out (generation_config.json, its card)
    sampling_defaults: dict[str, Any] = field(default_factory=dict)
    task: str = "generate"  # or "embed": which requests the model serves
    embedding_size: int | None = None  # for embed: the full length of its vectors
    matryoshka: bool = False  # for embed: whether `dimensions` may shorten them
    # the registered chat template the model class names for checkpoints without one
    default_chat_template: str | None = None

    def check_task(self, task: str) -> None:
        """InvalidRequestError unless the model serves requests of ``task``."""
        if task != self.task:
            raise InvalidRequestError(
                f"This model serves {self.task} requests only ({ENDPOINT_OF_TASK[self.task]}), not {task} "
                f"requests; start the server with --task {task} and a model that supports it.",
                code="unsupported_task")

    def check_embedding_request(self, prompt_token_ids: list[int], params: PoolingParams) -> PoolingParams:
        """The params if the embedding request can run; else InvalidRequestError."""
        self.check_task("embed")
        params.validate()
        _check_not_empty(prompt_token_ids, "input")
        if len(prompt_token_ids) > self.max_model_len:
            raise ContextLengthError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, the input has "
                f"{len(prompt_token_ids)} tokens. Please shorten it.", param="input")
        self._check_token_ids(prompt_token_ids, "input")
        dimensions = params.dimensions
        if dimensions is not None and dimensions != self.embedding_size:
            if not self.matryoshka:
                raise InvalidRequestError(
                    f"This model's embeddings have {self.embedding_size} dimensions and it was not trained to be "
                    f"cut short (Matryoshka); leave out dimensions.", param="dimensions")
            if dimensions > self.embedding_size:
                raise InvalidRequestError(f"dimensions must be at most {self.embedding_size}, got {dimensions}",
                                          param="dimensions")
        return params

    def check_request(self, prompt_token_ids: list[int], params: SamplingParams) -> SamplingParams:
        """The params with max_tokens resolved, if the request can run; else InvalidRequestError."""
        self.check_task("generate")
        params.validate()
        num_prompt = len(prompt_token_ids)
        _check_not_empty(prompt_token_ids, "prompt")
        max_tokens = params.max_tokens if params.max_tokens is not None else self.max_model_len - num_prompt
        if num_prompt + max_tokens > self.max_model_len or max_tokens < 1:
            raise ContextLengthError(
                f"This model's maximum context length is {self.max_model_len} tokens. However, you requested "
                f"{num_prompt + max(max_tokens, 1)} tokens ({num_prompt} in the prompt, "
                f"{max(max_tokens, 1)} for the completion). Please reduce the prompt or the completion length."
            )
        self._check_token_ids(prompt_token_ids, "prompt")  # after the length check bounds the cost
        self._check_token_ids(params.stop_token_ids, "stop_token_ids")
        self._check_token_ids(list(params.logit_bias or ()), "logit_bias")
        return params if params.max_tokens == max_tokens else replace(params, max_tokens=max_tokens)

    def _check_token_ids(self, token_ids: list[int], param: str) -> None:
        bad = [t for t in token_ids if not 0 <= t < self.vocab_size]
        if bad:
            raise InvalidRequestError(f"token ids out of range [0, {self.vocab_size}): {bad[:5]}", param=param)


def _check_not_empty(prompt_token_ids: list[int], param: str) -> None:
    if not prompt_token_ids:
        raise InvalidRequestError(f"the {param} is empty", param=param)
