"""Building a ``SamplingBatch`` from the sequences of a step: each sequence keeps
its sampling tensors (bias, bans, history) and extends them as it generates."""

from __future__ import annotations

import torch

from nanovllm_core.engine.sequence import Sequence
from nanovllm_core.sampling import SamplingBatch
from nanovllm_core.sampling_params import SamplingParams


def build_sampling_batch(
    seqs: list[Sequence], vocab_size: int, eos_token_ids: set[int], may_end: set[int] = frozenset()
) -> SamplingBatch:
    """The sampler's input for these sequences. ``may_end``: rows allowed to end before
    ``min_tokens`` (their grammar allows nothing else)."""
    params = [seq.params for seq in seqs]
    caches = [_row_cache(seq, vocab_size, eos_token_ids) for seq in seqs]

    def column(values, dtype):
        return torch.tensor(values, dtype=dtype)

    additions = [cache.additions(seq, row in may_end) for row, (seq, cache) in enumerate(zip(seqs, caches))]
    counts = column([tokens.numel() for tokens, _ in additions], torch.int64)
    needs_history = any(p.uses_penalties for p in params)
    return SamplingBatch(
        temperature=column([p.temperature for p in params], torch.float32),
        top_k=column([p.top_k for p in params], torch.int64),
        top_p=column([p.top_p for p in params], torch.float32),
        min_p=column([p.min_p for p in params], torch.float32),
        presence_penalty=column([p.presence_penalty for p in params], torch.float32),
        frequency_penalty=column([p.frequency_penalty for p in params], torch.float32),
        repetition_penalty=column([p.repetition_penalty for p in params], torch.float32),
        seeds=column([seq.seed for seq in seqs], torch.int64),
        steps=column([seq.num_output_tokens for seq in seqs], torch.int64),
        bias_rows=torch.repeat_interleave(torch.arange(len(seqs)), counts),
        bias_tokens=torch.cat([tokens for tokens, _ in additions]),
        bias_values=torch.cat([values for _, values in additions]),
        prompt_tokens=_padded([c.prompt for c in caches], vocab_size) if needs_history else None,
        output_tokens=_padded([c.outputs(s) for c, s in zip(caches, seqs)], vocab_size) if needs_history else None,
        num_logprobs=[p.logprobs for p in params],
        all_greedy=all(p.greedy for p in params),
        vocab_size=vocab_size,
    )


def worst_case_sampling_batch(rows: int, vocab_size: int) -> SamplingBatch:
    """``rows`` rows with every option on (top-k and top-p sort the vocabulary, min-p, penalties,
    20 logprobs): what the sampler's memory peaks at, for the KV cache's budget."""
    def full(value, dtype):
        return torch.full((rows,), value, dtype=dtype)

    history = torch.zeros(rows, 1, dtype=torch.int64)
    return SamplingBatch(
        temperature=full(1.0, torch.float32), top_k=full(50, torch.int64), top_p=full(0.9, torch.float32),
        min_p=full(0.05, torch.float32), presence_penalty=full(0.5, torch.float32),
        frequency_penalty=full(0.5, torch.float32), repetition_penalty=full(1.1, torch.float32),
        seeds=torch.arange(rows, dtype=torch.int64), steps=full(0, torch.int64),
        bias_rows=torch.zeros(0, dtype=torch.int64), bias_tokens=torch.zeros(0, dtype=torch.int64),
        bias_values=torch.zeros(0, dtype=torch.float32), prompt_tokens=history, output_tokens=history,
        num_logprobs=[20] * rows, all_greedy=False, vocab_size=vocab_size,
    )


def ending_token_ids(params: SamplingParams, eos_token_ids: set[int]) -> set[int]:
    """The tokens that end a sequence of this request."""
    return set(params.stop_token_ids) | (set() if params.ignore_eos else eos_token_ids)


class RowCache:
    """One sequence's sampling tensors, built on its first step and extended as it
    generates, so that no step re-reads a request's logit_bias or history."""

    def __init__(self, seq: Sequence, vocab_size: int, eos_token_ids: set[int]):
        params = seq.params
        bias = {token: value for token, value in (params.logit_bias or {}).items() if 0 <= token < vocab_size}
        self.bias_tokens = torch.tensor(list(bias), dtype=torch.int64)
        self.bias_values = torch.tensor(list(bias.values()), dtype=torch.float32)
        ending = [t for t in ending_token_ids(params, eos_token_ids) if 0 <= t < vocab_size]
        # with the bias, the ban on ending before min_tokens (accumulated: -inf wins)
        self.banned_tokens = torch.cat([self.bias_tokens, torch.tensor(ending, dtype=torch.int64)])
        self.banned_values = torch.cat([self.bias_values, torch.full((len(ending),), float("-inf"))])
        self.prompt = torch.tensor(seq.prompt_token_ids, dtype=torch.int64)
        self._outputs = torch.empty(16, dtype=torch.int64)
        self._num_outputs = 0

    def additions(self, seq: Sequence, may_end: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(tokens, values) to add to the row's logits: the request's logit_bias, plus a ban
        on ending before ``min_tokens`` unless ``may_end``."""
        if seq.num_output_tokens < seq.params.min_tokens and not may_end:
            return self.banned_tokens, self.banned_values
        return self.bias_tokens, self.bias_values

    def outputs(self, seq: Sequence) -> torch.Tensor:
        """The output tokens so far; only the new ones are copied."""
        count = seq.num_output_tokens
        if count > self._num_outputs:
            if count > self._outputs.numel():  # grow by doubling: amortised constant per token
                grown = torch.empty(max(count, 2 * self._outputs.numel()), dtype=torch.int64)
                grown[: self._num_outputs] = self._outputs[: self._num_outputs]
                self._outputs = grown
            new = seq.token_ids[seq.num_prompt_tokens + self._num_outputs :]
            self._outputs[self._num_outputs : count] = torch.tensor(new, dtype=torch.int64)
            self._num_outputs = count
        return self._outputs[:count]


def _row_cache(seq: Sequence, vocab_size: int, eos_token_ids: set[int]) -> RowCache:
    if seq.sampling_cache is None:
        seq.sampling_cache = RowCache(seq, vocab_size, eos_token_ids)
    return seq.sampling_cache


def _padded(rows: list[torch.Tensor], pad: int) -> torch.Tensor:
    width = max((row.numel() for row in rows), default=0)
    padded = torch.full((len(rows), width), pad, dtype=torch.int64)
    for index, row in enumerate(rows):
        padded[index, : row.numel()] = row
    return padded
