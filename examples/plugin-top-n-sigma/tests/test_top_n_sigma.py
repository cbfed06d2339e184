"""The example plugin's own tests: the filter alone, then the sampler inside the
real engine on real weights (the embedded SmolLM2)."""

from __future__ import annotations

import torch

from nanovllm_core import LLM, SamplingParams
from nanovllm_core.hookspecs import hookimpl
from nanovllm_core.loader.source import default_model_path
from nanovllm_core.testing import registered_plugin
from nanovllm_top_n_sigma.sampler import TopNSigmaSampler, top_n_sigma


def kept(logits: torch.Tensor, n: float = 1.0) -> torch.Tensor:
    """The tokens top-n-sigma keeps, computed the slow, obvious way."""
    finite = logits[torch.isfinite(logits)]
    return logits >= finite.max() - n * finite.std(unbiased=False)


def test_keeps_exactly_the_tokens_within_n_sigma_of_the_top():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 1000, generator=generator) * 3
    logits[3, :500] = float("-inf")  # a grammar's mask: not part of the deviation
    for n in (0.5, 1.0, 2.0):
        filtered = top_n_sigma(logits, n)
        for row in range(logits.shape[0]):
            assert torch.equal(torch.isfinite(filtered[row]), kept(logits[row], n))
            assert torch.equal(filtered[row][kept(logits[row], n)], logits[row][kept(logits[row], n)])


def test_the_kept_set_does_not_depend_on_the_temperature():
    logits = torch.randn(4, 500, generator=torch.Generator().manual_seed(1))
    for temperature in (0.3, 1.0, 2.0):
        assert torch.equal(torch.isfinite(top_n_sigma(logits / temperature)), torch.isfinite(top_n_sigma(logits)))


class RecordingSampler(TopNSigmaSampler):
    """The plugin's sampler, keeping each row it saw with the token it chose."""

    seen: list[tuple[torch.Tensor, int]] = []

    def __call__(self, logits, batch):
        output = super().__call__(logits, batch)
        for row, token in enumerate(output.token_ids.tolist()):
            self.seen.append((logits[row].float().clone(), token))
        return output


class RecordingPlugin:
    @hookimpl
    def register_samplers(self, register):
        register("recording-top-n-sigma", RecordingSampler)


def test_every_token_the_engine_samples_is_within_one_sigma_of_the_top():
    with registered_plugin(RecordingPlugin()):
        llm = LLM(str(default_model_path()), dtype="float32", sampler="recording-top-n-sigma", max_num_seqs=4)
        params = [SamplingParams(temperature=2.0, max_tokens=24, ignore_eos=True, seed=seed) for seed in range(3)]
        outputs = llm.generate(["Once upon a time", "The capital of France is", "def fibonacci(n):"], params,
                               use_tqdm=False)
    assert all(len(output["token_ids"]) == 24 for output in outputs)
    assert len(RecordingSampler.seen) == 3 * 24
    for logits, token in RecordingSampler.seen:
        assert kept(logits)[token], "sampled a token outside max - 1 sigma"
    # and that set is a small part of the vocabulary: the truncation, not the model, kept the tokens there
    assert sum(int(kept(logits).sum()) for logits, _ in RecordingSampler.seen) < 0.01 * 3 * 24 * logits.numel()
