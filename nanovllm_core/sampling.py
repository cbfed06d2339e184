"""The data a sampler plugin receives and returns, one row per sequence.

The model runner builds a ``SamplingBatch`` from the sequences it samples for
(``engine/sampling_inputs.py``); samplers consume the tensors and never touch
sequences, so they stay vectorised and testable on their own.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


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


@dataclass
class SamplerOutput:
    token_ids: torch.Tensor  # [B] int64
    logprobs: torch.Tensor | None = None  # [B] float32: of the chosen tokens
    top_logprobs: torch.Tensor | None = None  # [B, k] float32
    top_token_ids: torch.Tensor | None = None  # [B, k] int64
