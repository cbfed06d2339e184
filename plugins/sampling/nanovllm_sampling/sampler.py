"""The default sampler: every OpenAI / vLLM sampling parameter, vectorised over the batch.

Randomness comes from a counter-based hash of (request seed, output position),
not from a shared generator, so a seeded request draws the same numbers
whatever else is in the batch, and each row needs only one uniform number:
the token is found by inverting the cumulative distribution.
"""

from __future__ import annotations

import torch

from nanovllm_core.sampling import SamplerOutput, SamplingBatch

MASK32 = 0xFFFFFFFF


def _mix32(x: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (xor-shift-multiply). Values stay below 2**32 and the
    multipliers below 2**31, so int64 arithmetic never overflows."""
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x1B873593) & MASK32
    return x ^ (x >> 16)


def uniform_from_counter(seeds: torch.Tensor, steps: torch.Tensor) -> torch.Tensor:
    """One float64 in [0, 1) per row, a pure function of (seed, step)."""
    high = _mix32((seeds >> 32) & MASK32)
    low = _mix32((seeds & MASK32) ^ high)
    first = _mix32(low ^ (steps & MASK32))
    second = _mix32(first ^ 0x5BD1E995)
    return ((first << 21) ^ second).double() / float(1 << 53)


def apply_penalties(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    rows, vocab = logits.shape
    output_counts = torch.zeros(rows, vocab + 1, dtype=logits.dtype, device=logits.device)
    output_counts.scatter_add_(1, batch.output_tokens, torch.ones_like(batch.output_tokens, dtype=logits.dtype))
    output_counts = output_counts[:, :vocab]
    seen = output_counts > 0
    prompt_seen = torch.zeros(rows, vocab + 1, dtype=torch.bool, device=logits.device)
    prompt_seen.scatter_(1, batch.prompt_tokens, True)
    seen_anywhere = seen | prompt_seen[:, :vocab]

    repetition = batch.repetition_penalty.unsqueeze(1)
    penalised = torch.where(logits > 0, logits / repetition, logits * repetition)
    logits = torch.where(seen_anywhere, penalised, logits)
    logits = logits - batch.frequency_penalty.unsqueeze(1) * output_counts
    return logits - batch.presence_penalty.unsqueeze(1) * seen


def apply_truncation(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """Mask tokens outside top-k, top-p (nucleus) and min-p; at least one always survives."""
    vocab = logits.shape[1]
    if bool((batch.min_p > 0).any()):
        probs = torch.softmax(logits, dim=-1)
        threshold = batch.min_p.unsqueeze(1) * probs.max(dim=-1, keepdim=True).values
        logits = logits.masked_fill(probs < threshold, float("-inf"))
    top_k_on = (batch.top_k > 0) & (batch.top_k < vocab)
    top_p_on = batch.top_p < 1.0
    if not bool(top_k_on.any() or top_p_on.any()):
        return logits
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=logits.device).unsqueeze(0)
    k = torch.where(top_k_on, batch.top_k, vocab).unsqueeze(1)
    drop = ranks >= k
    sorted_probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
    mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
    drop |= mass_before > batch.top_p.unsqueeze(1)
    drop[:, 0] = False
    return logits.scatter(1, order, sorted_logits.masked_fill(drop, float("-inf")))


def sample_from(probs: torch.Tensor, uniforms: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """Invert each row's cumulative distribution at its uniform number.

    Two levels, so the float64 prefix sums cover chunk totals and one chunk per
    row rather than the whole vocabulary (a full float64 cumsum was a visible part
    of a CPU step at batch 64: docs/benchmarks.md).
    """
    rows, vocab = probs.shape
    padded = torch.nn.functional.pad(probs, (0, -vocab % chunk)).view(rows, -1, chunk)
    chunk_cumulative = padded.sum(dim=-1, dtype=torch.float64).cumsum(dim=-1)
    targets = (uniforms * chunk_cumulative[:, -1]).unsqueeze(1)
    chosen = torch.searchsorted(chunk_cumulative, targets, right=True).clamp_(max=padded.shape[1] - 1)
    before = torch.where(chosen > 0, chunk_cumulative.gather(1, (chosen - 1).clamp(min=0)), 0.0)
    within = padded[torch.arange(rows, device=probs.device), chosen.squeeze(1)].double().cumsum(dim=-1) + before
    offset = torch.searchsorted(within, targets, right=True).clamp_(max=chunk - 1)
    return (chosen * chunk + offset).squeeze(1).clamp_(max=vocab - 1)


class Sampler:
    """The ``default`` sampler."""

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        logits = logits.float()
        raw_logprobs = torch.log_softmax(logits, dim=-1) if batch.max_logprobs is not None else None
        if batch.bias_rows.numel():
            logits = logits.index_put((batch.bias_rows, batch.bias_tokens), batch.bias_values, accumulate=True)
        if batch.prompt_tokens is not None:
            logits = apply_penalties(logits, batch)
        tokens = logits.argmax(dim=-1)
        if not batch.all_greedy:
            sampled = self._sample(logits, batch)
            tokens = torch.where(batch.temperature > 0, sampled, tokens)
        return self._with_logprobs(tokens, raw_logprobs, batch)

    def _sample(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        temperature = torch.where(batch.temperature > 0, batch.temperature, 1.0).unsqueeze(1)
        logits = apply_truncation(logits / temperature, batch)
        return sample_from(torch.softmax(logits, dim=-1), uniform_from_counter(batch.seeds, batch.steps))

    @staticmethod
    def _with_logprobs(tokens, raw_logprobs, batch: SamplingBatch) -> SamplerOutput:
        if raw_logprobs is None:
            return SamplerOutput(tokens)
        chosen = raw_logprobs.gather(1, tokens.unsqueeze(1)).squeeze(1)
        top_values, top_ids = raw_logprobs.topk(max(batch.max_logprobs, 1), dim=-1)
        return SamplerOutput(tokens, chosen, top_values, top_ids)
