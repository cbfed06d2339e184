"""The sampling fields chat and completions share (OpenAI's and vLLM's names), and their
translation to the engine's ``SamplingParams``."""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

from pydantic import Field

from nanovllm_api.protocol.common import (
    Count,
    PositiveCount,
    Probability,
    RequestModel,
    Seed,
    StreamOptions,
    TokenId,
    TokenIdKey,
)
from nanovllm_api.protocol.structured_outputs import (
    GuidedChoices,
    GuidedSpec,
    ResponseFormat,
    StructuredOutputs,
    request_constraint,
)
from nanovllm_core.grammar import GuidedDecoding
from nanovllm_core.model_info import ModelInfo
from nanovllm_core.sampling_params import MAX_COUNT, SamplingParams


# each stop string is checked against every new token's text on the engine's thread,
# so their number bounds the work one request can add to every step of the batch
MAX_STOP_STRINGS = 64

MAX_STOP_STRING_CHARS = 4096

MAX_STOP_TOKEN_IDS = 1024

MAX_LOGIT_BIAS_ENTRIES = 300  # OpenAI's limit

StopString = Annotated[str, Field(max_length=MAX_STOP_STRING_CHARS)]


class SamplingFields(RequestModel):
    """Sampling parameters shared by chat and completions (OpenAI's and vLLM's names)."""

    model: str | None = None
    max_tokens: PositiveCount | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1, le=MAX_COUNT)] | None = None
    min_p: Probability | None = None
    n: Annotated[int, Field(ge=1, le=16)] = 1
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = None
    stop_token_ids: Annotated[list[TokenId], Field(max_length=MAX_STOP_TOKEN_IDS)] | None = None
    include_stop_str_in_output: bool = False
    seed: Seed | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] | None = None
    logit_bias: Annotated[
        dict[TokenIdKey, Annotated[float, Field(ge=-100, le=100)]], Field(max_length=MAX_LOGIT_BIAS_ENTRIES)
    ] | None = None
    ignore_eos: bool = False
    prompt_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None  # vLLM's: each prompt token's logprob
    min_tokens: Count = 0
    skip_special_tokens: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    # vLLM's guided decoding: the newer object, or the older fields
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: GuidedSpec | None = None
    guided_choice: GuidedChoices | None = None
    guided_grammar: GuidedSpec | None = None
    user: str | None = None

    # the endpoint's max_tokens when neither the request nor the model sets one (None: the context)
    default_max_tokens: ClassVar[int | None] = None

    def max_output_tokens(self) -> int | None:
        """The request's own limit on new tokens, if it sets one."""
        return self.max_tokens

    def num_logprobs(self) -> int | None:
        """None: no logprobs; 0: the chosen token's; k: and k alternatives."""
        return None

    def to_sampling_params(
        self, model: ModelInfo, guided: GuidedDecoding | None = None, guided_starts_after: tuple[int, ...] = ()
    ) -> list[SamplingParams]:
        """One SamplingParams per choice; with a seed, choice i uses seed + i so the n choices differ.
        A sampling field the request leaves out takes the model's default (``ModelInfo.sampling_defaults``:
        generation_config.json, its card's), else OpenAI's. ``guided``: a constraint other than response_format's (the tools');
        ``guided_starts_after``: the tokens that end the model's thinking, where constraints start."""
        defaults = model.sampling_defaults

        def value(name: str, fallback: float) -> float:
            given = getattr(self, name)
            return given if given is not None else defaults.get(name, fallback)

        given_stop = self.stop if self.stop is not None else defaults.get("stop")
        stop = [given_stop] if isinstance(given_stop, str) else list(given_stop or [])
        base = dict(
            temperature=value("temperature", 1.0),
            top_p=value("top_p", 1.0),
            top_k=value("top_k", 0),
            min_p=value("min_p", 0.0),
            max_tokens=self.max_output_tokens() or defaults.get("max_tokens") or self.default_max_tokens,
            min_tokens=self.min_tokens,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=value("repetition_penalty", 1.0),
            # keys are ASCII digits (TokenIdKey); ModelInfo.check_request refuses ids past the vocabulary
            logit_bias={int(key): value for key, value in self.logit_bias.items()} if self.logit_bias else None,
            stop=stop,
            stop_token_ids=list(self.stop_token_ids or []),
            include_stop_str_in_output=self.include_stop_str_in_output,
            ignore_eos=self.ignore_eos,
            logprobs=self.num_logprobs(),
            prompt_logprobs=self.prompt_logprobs,
            skip_special_tokens=self.skip_special_tokens,
            guided=request_constraint(self, tools=guided),
        )
        if base["guided"] is not None:
            base["guided_starts_after"] = guided_starts_after
        # an out-of-range value raises InvalidRequestError, which the app answers with a 400
        return [SamplingParams(**base, seed=None if self.seed is None else self.seed + i) for i in range(self.n)]
