"""Top-n-sigma sampling (Tang et al., 2024): before drawing, keep only the tokens
whose logit is within ``n`` standard deviations of the largest. The kept set does
not depend on the temperature (scaling the logits scales their deviation too), so
high temperatures diversify among plausible tokens instead of reaching the noise.

It reuses the default sampler (penalties, logit bias, top-k/p, min-p, seeds,
logprobs) and adds this one truncation, as a plugin would that depends on another.
"""

from __future__ import annotations

import torch

from nanovllm_core.sampling import SamplingBatch
from nanovllm_sampling.sampler import Sampler

N_SIGMA = 1.0  # the paper's default


def top_n_sigma(logits: torch.Tensor, n: float = N_SIGMA) -> torch.Tensor:
    """Mask (to -inf) every logit below ``max - n * std`` of its row; masked entries
    (-inf, from a grammar or a bias) do not count towards the deviation."""
    finite = torch.isfinite(logits)
    values = torch.where(finite, logits, 0.0)
    count = finite.sum(dim=-1, keepdim=True).clamp(min=1)
    mean = values.sum(dim=-1, keepdim=True) / count
    std = (torch.where(finite, (values - mean) ** 2, 0.0).sum(dim=-1, keepdim=True) / count).sqrt()
    threshold = logits.max(dim=-1, keepdim=True).values - n * std
    return logits.masked_fill(logits < threshold, float("-inf"))


class TopNSigmaSampler(Sampler):
    """The ``top-n-sigma`` sampler: the default one, truncated to n sigma first."""

    def _sample(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        return super()._sample(top_n_sigma(logits), batch)
