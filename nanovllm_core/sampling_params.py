"""What a request asks of decoding, as vLLM and the OpenAI API name it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from nanovllm_core.errors import InvalidRequestError
from nanovllm_core.grammar.backend import GuidedDecoding

# What the engine's sampling tensors hold, and so the range of every integer a request
# may set (the API's request models take their bounds from here): counts and token ids
# fit a 32-bit index; a seed is any integer (the engine keeps its low 63 bits), and the
# API takes one within int64, as clients send it.
MAX_COUNT = (1 << 31) - 1  # max_tokens, min_tokens, top_k, a token id
INT64_MIN, INT64_MAX = -(1 << 63), (1 << 63) - 1
# Below this, dividing float32 logits by the temperature overflows to inf and the softmax
# to NaN (1e-40 sampled garbage); such a request is greedy, as vLLM treats it.
GREEDY_BELOW_TEMPERATURE = 1e-5


@dataclass
class SamplingParams:
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0 (or -1) keeps the whole vocabulary
    min_p: float = 0.0
    max_tokens: int | None = 16  # None: up to the model's context length
    min_tokens: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    include_stop_str_in_output: bool = False
    ignore_eos: bool = False
    seed: int | None = None
    logprobs: int | None = None  # None: none; 0: the chosen token's; k: also the top k
    prompt_logprobs: int | None = None  # the same for each prompt token (vLLM's extension)
    skip_special_tokens: bool = True
    guided: GuidedDecoding | None = None  # constrain the output to a grammar
    # the constraint applies after the output has these tokens (the end of the model's thinking); empty: at once
    guided_starts_after: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            self.stop = [self.stop]
        if self.top_k == -1:
            self.top_k = 0
        if 0 < self.temperature < GREEDY_BELOW_TEMPERATURE:
            self.temperature = 0.0
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first field that is out of range."""
        checks = [
            ("temperature", math.isfinite(self.temperature) and self.temperature >= 0, "must be >= 0"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("top_k", 0 <= self.top_k <= MAX_COUNT, f"must be -1, 0 or positive up to {MAX_COUNT}"),
            ("min_p", 0 <= self.min_p <= 1, "must be in [0, 1]"),
            ("max_tokens", self.max_tokens is None or 1 <= self.max_tokens <= MAX_COUNT,
             f"must be in [1, {MAX_COUNT}]"),
            ("min_tokens", 0 <= self.min_tokens <= MAX_COUNT, f"must be in [0, {MAX_COUNT}]"),
            (
                "min_tokens",
                self.max_tokens is None or self.min_tokens <= self.max_tokens,
                "must not exceed max_tokens",
            ),
            ("presence_penalty", -2 <= self.presence_penalty <= 2, "must be in [-2, 2]"),
            ("frequency_penalty", -2 <= self.frequency_penalty <= 2, "must be in [-2, 2]"),
            ("repetition_penalty", 0 < self.repetition_penalty <= 10, "must be in (0, 10]"),
            ("logprobs", self.logprobs is None or 0 <= self.logprobs <= 20, "must be in [0, 20]"),
            ("prompt_logprobs", self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= 20, "must be in [0, 20]"),
            ("stop", all(isinstance(s, str) and s for s in self.stop), "must be non-empty strings"),
            ("stop_token_ids", all(0 <= t <= MAX_COUNT for t in self.stop_token_ids), "must be token ids"),
        ]
        for name, ok, message in checks:
            if not ok:
                raise InvalidRequestError(f"{name} {message}, got {getattr(self, name)!r}", param=name)
        for token_id, bias in (self.logit_bias or {}).items():
            if not -100 <= bias <= 100:
                raise InvalidRequestError(
                    f"logit_bias for token {token_id} must be in [-100, 100], got {bias}", param="logit_bias"
                )

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    @property
    def uses_penalties(self) -> bool:
        return bool(self.presence_penalty or self.frequency_penalty or self.repetition_penalty != 1.0)
