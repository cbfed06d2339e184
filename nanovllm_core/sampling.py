"""The data a sampler plugin receives and returns, one row per sequence.

The model runner builds a ``SamplingBatch`` from the sequences it samples for;
samplers consume the tensors and never touch sequences, so they stay
vectorised and testable on their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # a contract plugins import: it must not import the engine
    from nanovllm_core.engine.sequence import Sequence
    from nanovllm_core.sampling_params import SamplingParams


@dataclass
class SamplingBatch:
    temperature: torch.Tensor  # [B] float32, 0 for greedy rows
    top_k: torch.Tensor  # [B] int64, 0 = off
    top_p: torch.Tensor  # [B] float32, 1 = off
    min_p: torch.Tensor  # [B] float32, 0 = off
    presence_penalty: torch.Tensor  # [B] float32
    frequency_penalty: torch.Tensor  # [B] float32
    repetition_penalty: torch.Tensor  # [B] float32
    seeds: torch.Tensor  # [B] int64: with ``steps``, decides the random draw
    steps: torch.Tensor  # [B] int64: the number of tokens generated so far
    # (row, token, value) triples, for sparse per-row additions to the logits
    bias_rows: torch.Tensor
    bias_tokens: torch.Tensor
    bias_values: torch.Tensor
    # previous tokens, padded with ``vocab_size``; only built when a row needs penalties
    prompt_tokens: torch.Tensor | None
    output_tokens: torch.Tensor | None
    num_logprobs: list[int | None]  # per row: None, 0 (chosen token) or k alternatives
    all_greedy: bool
    vocab_size: int

    def to(self, device: torch.device) -> SamplingBatch:
        moved = {
            name: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
            for name, value in vars(self).items()
        }
        return SamplingBatch(**moved)

    @property
    def max_logprobs(self) -> int | None:
        wanted = [k for k in self.num_logprobs if k is not None]
        return max(wanted) if wanted else None

    @classmethod
    def from_sequences(
        cls, seqs: list[Sequence], vocab_size: int, eos_token_ids: set[int], may_end: set[int] = frozenset()
    ) -> SamplingBatch:
        """``may_end``: rows allowed to end before ``min_tokens`` (their grammar allows nothing else)."""
        params = [seq.params for seq in seqs]

        def column(values, dtype):
            return torch.tensor(values, dtype=dtype)

        rows, tokens, values = [], [], []
        for row, seq in enumerate(seqs):
            for token, bias in _logit_additions(seq, eos_token_ids, row in may_end).items():
                if 0 <= token < vocab_size:
                    rows.append(row), tokens.append(token), values.append(bias)
        needs_history = any(p.uses_penalties for p in params)
        return cls(
            temperature=column([p.temperature for p in params], torch.float32),
            top_k=column([p.top_k for p in params], torch.int64),
            top_p=column([p.top_p for p in params], torch.float32),
            min_p=column([p.min_p for p in params], torch.float32),
            presence_penalty=column([p.presence_penalty for p in params], torch.float32),
            frequency_penalty=column([p.frequency_penalty for p in params], torch.float32),
            repetition_penalty=column([p.repetition_penalty for p in params], torch.float32),
            seeds=column([seq.seed for seq in seqs], torch.int64),
            steps=column([seq.num_output_tokens for seq in seqs], torch.int64),
            bias_rows=column(rows, torch.int64),
            bias_tokens=column(tokens, torch.int64),
            bias_values=column(values, torch.float32),
            prompt_tokens=_padded([s.prompt_token_ids for s in seqs], vocab_size) if needs_history else None,
            output_tokens=_padded([s.output_token_ids for s in seqs], vocab_size) if needs_history else None,
            num_logprobs=[p.logprobs for p in params],
            all_greedy=all(p.greedy for p in params),
            vocab_size=vocab_size,
        )


def ending_token_ids(params: SamplingParams, eos_token_ids: set[int]) -> set[int]:
    """The tokens that end a sequence of this request."""
    return set(params.stop_token_ids) | (set() if params.ignore_eos else eos_token_ids)


def _logit_additions(seq: Sequence, eos_token_ids: set[int], may_end: bool) -> dict[int, float]:
    """The request's logit_bias, plus a ban on ending before ``min_tokens``."""
    params = seq.params
    additions = dict(params.logit_bias or {})
    if seq.num_output_tokens < params.min_tokens and not may_end:
        additions.update(dict.fromkeys(ending_token_ids(params, eos_token_ids), float("-inf")))
    return additions


def _padded(token_lists: list[list[int]], pad: int) -> torch.Tensor:
    width = max((len(t) for t in token_lists), default=0)
    return torch.tensor([t + [pad] * (width - len(t)) for t in token_lists], dtype=torch.int64)


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor  # [B] int64
    logprobs: torch.Tensor | None = None  # [B] float32: of the chosen tokens
    top_logprobs: torch.Tensor | None = None  # [B, k] float32
    top_token_ids: torch.Tensor | None = None  # [B, k] int64
