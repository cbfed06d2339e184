"""nanovllm plugin: the default sampler (greedy, temperature, top-k/p, min-p,
penalties, logit bias, min tokens, seeds, log-probabilities)."""

from nanovllm_core.hookspecs import hookimpl


@hookimpl
def register_samplers(register):
    register("default", "nanovllm_sampling.sampler:Sampler")
