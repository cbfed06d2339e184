"""`nanovllm-api` whose sampler follows a script: the request's seed picks a list of
token ids (SCRIPTS_FILE, JSON {seed: [ids]}) that the output is made of; past its
end, the most likely token the grammar allows. A scripted token the grammar
masked fails the step, so a test sees a constraint applied where it must not be."""

import json
import os

import torch

from nanovllm_api.cli import main
from nanovllm_core.hookspecs import hookimpl
from nanovllm_core.plugins import get_plugin_manager
from nanovllm_core.sampling import SamplerOutput, SamplingBatch


class ScriptedSampler:
    def __init__(self):
        with open(os.environ["SCRIPTS_FILE"]) as file:
            self.scripts = {int(seed): ids for seed, ids in json.load(file).items()}

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        tokens = logits.argmax(dim=-1)
        for row, (seed, step) in enumerate(zip(batch.seeds.tolist(), batch.steps.tolist())):
            script = self.scripts.get(seed, [])
            if step < len(script):
                if not torch.isfinite(logits[row, script[step]]):
                    raise AssertionError(f"the grammar masked scripted token {script[step]} at step {step}")
                tokens[row] = script[step]
        return SamplerOutput(tokens)


class ScriptedSamplerPlugin:
    @hookimpl
    def register_samplers(self, register):
        register("scripted", ScriptedSampler)


if __name__ == "__main__":
    get_plugin_manager().register(ScriptedSamplerPlugin())
    main()
