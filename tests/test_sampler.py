"""The default sampler, on hand-made logits."""

import math

import pytest
import torch

from nanovllm_core.engine.sampling_inputs import build_sampling_batch
from nanovllm_core.engine.sequence import Sequence
from nanovllm_core.sampling import SamplingBatch
from nanovllm_core.sampling_params import SamplingParams
from nanovllm_sampling.sampler import Sampler, uniform_from_counter

VOCAB = 8
EOS = 7


def batch_for(*params: SamplingParams, outputs=None, seeds=None) -> SamplingBatch:
    seqs = []
    for i, p in enumerate(params):
        seq = Sequence(str(i), [1, 2, 3], p, seed=(seeds or [i] * len(params))[i])
        for token in (outputs or {}).get(i, []):
            seq.append_token(token)
        seqs.append(seq)
    return build_sampling_batch(seqs, VOCAB, {EOS})


def sample_many(logits_row, params, draws=400):
    """Token counts over many seeds for one row of logits."""
    sampler = Sampler()
    counts = torch.zeros(VOCAB)
    batch = batch_for(*[params] * draws, seeds=list(range(draws)))
    tokens = sampler(logits_row.repeat(draws, 1), batch).token_ids
    counts.scatter_add_(0, tokens, torch.ones(draws))
    return counts


LOGITS = torch.tensor([4.0, 3.0, 2.0, 1.0, 0.0, -1.0, -2.0, -3.0])


def test_greedy_takes_the_argmax():
    out = Sampler()(LOGITS.repeat(2, 1), batch_for(SamplingParams(temperature=0), SamplingParams(temperature=0)))
    assert out.token_ids.tolist() == [0, 0]


def test_top_k_keeps_only_the_k_best():
    counts = sample_many(LOGITS, SamplingParams(temperature=5.0, top_k=2))
    assert counts[2:].sum() == 0 and counts[0] > 0 and counts[1] > 0


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = torch.softmax(LOGITS, dim=0)  # 0.64, 0.24, 0.09, ...
    assert probs[0] < 0.8 < probs[:2].sum()
    counts = sample_many(LOGITS, SamplingParams(temperature=1.0, top_p=0.8))
    assert counts[2:].sum() == 0 and counts[1] > 0


def test_min_p_drops_tokens_below_a_share_of_the_best():
    # p(token) / p(best) = e^-1, e^-2, ...: min_p 0.2 keeps tokens 0 and 1
    counts = sample_many(LOGITS, SamplingParams(temperature=1.0, min_p=0.2))
    assert counts[2:].sum() == 0 and counts[1] > 0


def test_sampling_follows_the_distribution():
    counts = sample_many(torch.log(torch.tensor([0.5, 0.3, 0.2, 0, 0, 0, 0, 0]) + 1e-30), SamplingParams(), draws=4000)
    assert torch.allclose(counts[:3] / 4000, torch.tensor([0.5, 0.3, 0.2]), atol=0.03)


def test_seed_reproduces_whatever_the_batch():
    sampler = Sampler()
    logits = torch.randn(6, VOCAB, generator=torch.Generator().manual_seed(0))
    params = [SamplingParams(temperature=1.0, seed=s) for s in (11, 12, 13, 14, 15, 16)]
    together = sampler(logits, batch_for(*params, seeds=[11, 12, 13, 14, 15, 16])).token_ids
    alone = [sampler(logits[i : i + 1], batch_for(params[i], seeds=[11 + i])).token_ids.item() for i in range(6)]
    assert together.tolist() == alone


def test_counter_uniforms_are_uniform_and_depend_on_seed_and_step():
    seeds = torch.arange(20000, dtype=torch.int64)
    u = uniform_from_counter(seeds, torch.zeros_like(seeds))
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean().item() - 0.5) < 0.01
    assert not torch.equal(u, uniform_from_counter(seeds, torch.ones_like(seeds)))


def test_penalties_lower_repeated_tokens():
    flat = torch.zeros(1, VOCAB)
    outputs = {0: [4, 4, 5]}
    base = Sampler()(flat, batch_for(SamplingParams(temperature=0), outputs=outputs)).token_ids.item()
    assert base == 0
    for params in (
        SamplingParams(temperature=0, presence_penalty=1.0),
        SamplingParams(temperature=0, frequency_penalty=1.0),
    ):
        boosted = torch.zeros(1, VOCAB)
        boosted[0, 4] = boosted[0, 5] = 0.9  # repeated tokens would win without the penalty
        assert Sampler()(boosted, batch_for(params, outputs=outputs)).token_ids.item() == 0
    repetition = torch.zeros(1, VOCAB)
    repetition[0, 2] = 1.0  # token 2 is in the prompt [1, 2, 3]
    repetition[0, 6] = 0.9
    out = Sampler()(repetition, batch_for(SamplingParams(temperature=0, repetition_penalty=2.0)))
    assert out.token_ids.item() == 6


def test_logit_bias_and_min_tokens():
    out = Sampler()(LOGITS.repeat(1, 1), batch_for(SamplingParams(temperature=0, logit_bias={5: 10.0})))
    assert out.token_ids.item() == 5
    eos_first = LOGITS.clone()
    eos_first[EOS] = 10.0
    banned = Sampler()(eos_first.repeat(1, 1), batch_for(SamplingParams(temperature=0, min_tokens=2)))
    assert banned.token_ids.item() == 0
    allowed = Sampler()(eos_first.repeat(1, 1), batch_for(SamplingParams(temperature=0, min_tokens=2), outputs={0: [1, 1]}))
    assert allowed.token_ids.item() == EOS


def test_logprobs_are_normalised_and_shaped():
    out = Sampler()(LOGITS.repeat(2, 1), batch_for(SamplingParams(temperature=0, logprobs=3), SamplingParams(temperature=0)))
    expected = torch.log_softmax(LOGITS, dim=0)
    assert out.top_logprobs.shape == (2, 3) and out.top_token_ids[0].tolist() == [0, 1, 2]
    assert math.isclose(out.logprobs[0].item(), expected[0].item(), rel_tol=1e-6)
    assert math.isclose(torch.logsumexp(expected, 0).item(), 0.0, abs_tol=1e-6)
    assert torch.allclose(out.top_logprobs[0], expected[:3])


@pytest.mark.parametrize(
    "field,value",
    [("temperature", -1), ("top_p", 0), ("top_k", -5), ("min_p", 2), ("max_tokens", 0), ("logprobs", 99)],
)
def test_invalid_parameters_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})
