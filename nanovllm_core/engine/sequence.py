"""One request's tokens and its place in the KV cache."""

from __future__ import annotations

import time
from enum import Enum, auto

from nanovllm_core.grammar import GrammarMatcher
from nanovllm_core.pooling import PoolingParams
from nanovllm_core.sampling_params import SamplingParams


class SequenceStatus(Enum):
    WAITING = auto()
    RUNNING = auto()
    FINISHED = auto()


class Sequence:
    def __init__(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams | PoolingParams,
                 seed: int):
        self.request_id = request_id
        self.token_ids = list(prompt_token_ids)
        self.num_prompt_tokens = len(prompt_token_ids)
        self.params = params
        self.seed = seed  # the request's own, or one drawn by the engine
        self.status = SequenceStatus.WAITING
        self.num_computed_tokens = 0  # tokens whose K/V are in the cache
        self.num_cached_tokens = 0  # prompt tokens found by prefix caching at first admission
        self.block_table: list[int] = []
        self.block_hashes: list[bytes] = []  # chained keys of the full blocks' tokens, kept across preemption
        self.finish_reason: str | None = None
        self.stop_reason: str | int | None = None
        self.arrival_time = time.monotonic()
        self.num_preemptions = 0
        self.grammar: GrammarMatcher | None = None  # set for structured outputs
        # True while the output is still in the model's thinking, which the grammar does not constrain
        self.grammar_waits = False
        # the sampler's tensors for this sequence (a sampling_inputs.RowCache), built on first use
        self.sampling_cache: object | None = None
        # with prompt_logprobs: the runner's scores of the prompt tokens so far (the first has none)
        self.prompt_logprobs: list = [None]

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def prompt_token_ids(self) -> list[int]:
        return self.token_ids[: self.num_prompt_tokens]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def constrained(self) -> bool:
        """Whether the grammar constrains the next token."""
        return self.grammar is not None and not self.grammar_waits

    @property
    def scores_prompt(self) -> bool:
        """Whether prompt tokens still need their logprobs (prompt_logprobs): the model must
        run on them, so the prefix cache is not used."""
        return (not self.is_pooling and self.params.prompt_logprobs is not None
                and len(self.prompt_logprobs) < self.num_prompt_tokens)

    @property
    def is_pooling(self) -> bool:
        """An embedding request: its prompt runs once, whole, and it ends with a vector."""
        return isinstance(self.params, PoolingParams)

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED

    def append_token(self, token_id: int) -> None:
        self.token_ids.append(token_id)

    def finish(self, reason: str, stop_reason: str | int | None = None) -> None:
        self.status = SequenceStatus.FINISHED
        self.finish_reason = reason
        self.stop_reason = stop_reason
