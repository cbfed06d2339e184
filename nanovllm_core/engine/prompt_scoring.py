"""prompt_logprobs: each prompt token's logprob, rank and top alternatives, from the step that computes it."""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import nn

from nanovllm_core.engine.scheduler import ScheduledBatch
from nanovllm_core.outputs import LOGPROB_FLOOR, SampledToken

# prompt tokens scored at once: their logits span the vocabulary
PROMPT_LOGITS_ROWS = 256


def prompt_logits(model: nn.Module, hidden_states: torch.Tensor, indices: torch.Tensor) -> Iterator[torch.Tensor]:
    """The logits at ``indices``, PROMPT_LOGITS_ROWS at a time; every tensor-parallel rank runs this."""
    for start in range(0, indices.numel(), PROMPT_LOGITS_ROWS):
        yield model.compute_logits(hidden_states[indices[start : start + PROMPT_LOGITS_ROWS]]).float()


def score_prompts(model: nn.Module, batch: ScheduledBatch, hidden_states: torch.Tensor, indices: torch.Tensor,
                  scored: list[tuple[int, list[int]]]) -> None:
    """Append each scored prompt token's logprob, rank and top alternatives to its sequence."""
    targets = torch.tensor([t for _, ids in scored for t in ids], device=hidden_states.device)
    k = max(batch.seqs[row].params.prompt_logprobs for row, _ in scored)
    entries = []
    for logits, chunk in zip(prompt_logits(model, hidden_states, indices), targets.split(PROMPT_LOGITS_ROWS)):
        logprobs = logits.log_softmax(dim=-1)
        chosen = logprobs.gather(1, chunk[:, None])[:, 0]
        ranks = (logprobs > chosen[:, None]).sum(dim=-1) + 1
        top_values, top_ids = logprobs.topk(k, dim=-1)
        entries.extend(zip(chosen.clamp(min=LOGPROB_FLOOR).tolist(), ranks.tolist(), top_ids.tolist(),
                           top_values.clamp(min=LOGPROB_FLOOR).tolist()))
    entries = iter(entries)
    for row, token_ids in scored:
        seq = batch.seqs[row]
        keep = seq.params.prompt_logprobs
        for token_id in token_ids:
            logprob, rank, top_ids, top_values = next(entries)
            seq.prompt_logprobs.append(SampledToken(token_id, logprob, list(zip(top_ids[:keep], top_values[:keep])), rank))
