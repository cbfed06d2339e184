"""`nanovllm-api` with two fault-injecting plugins, registered through the same hooks
as any plugin, for tests: a sampler that raises for a request with POISON_SEED, and
a Llama that raises while prefilling a prompt holding POISON_TOKEN_ID. Run with
``--sampler poisoned``; everything else is the real server."""

import sys

import torch

from nanovllm_api.cli import main
from nanovllm_core.hookspecs import hookimpl
from nanovllm_core.plugins import get_plugin_manager
from nanovllm_qwen3.decoder import LlamaForCausalLM
from nanovllm_sampling.sampler import Sampler

POISON_SEED = 666_666
POISON_TOKEN_ID = 49_000  # a rare token of SmolLM2's vocabulary: prompts send it as an id,
POISON_REPEATS = 3  # this many times (a decode batch will not sample it as often)


class PoisonedSampler(Sampler):
    def __call__(self, logits, batch):
        if bool((batch.seeds == POISON_SEED).any()):
            raise RuntimeError("injected sampler fault")
        return super().__call__(logits, batch)


class PoisonedLlama(LlamaForCausalLM):
    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if int((input_ids == POISON_TOKEN_ID).sum()) >= POISON_REPEATS:  # a poisoned prompt's prefill
            raise RuntimeError("injected model fault")
        return super().forward(input_ids, positions)


@hookimpl
def register_samplers(register):
    register("poisoned", PoisonedSampler)


@hookimpl
def register_model_architectures(register):
    register("LlamaForCausalLM", PoisonedLlama)  # registered last, so it wins over the qwen3 plugin's


if __name__ == "__main__":
    get_plugin_manager().register(sys.modules[__name__], name="poisoned")
    main()
