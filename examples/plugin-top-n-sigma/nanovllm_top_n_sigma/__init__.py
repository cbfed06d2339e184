"""Example nanovllm plugin: the ``top-n-sigma`` sampler.

Copy this package to start your own plugin: a ``pyproject.toml`` whose
``nanovllm`` entry point names this module, one ``@hookimpl`` per hook you
implement (see ``nanovllm_core.hookspecs``), and tests that run your plugin
through the real engine with ``nanovllm_core.testing``.
"""

from nanovllm_core.hookspecs import hookimpl


@hookimpl
def register_samplers(register):
    # "module:attribute": the class is imported only when a user selects it (--sampler top-n-sigma)
    register("top-n-sigma", "nanovllm_top_n_sigma.sampler:TopNSigmaSampler")
