"""Example nanovllm model plugin: ``MistralForCausalLM``.

Copy this package to add a model: a ``pyproject.toml`` whose ``nanovllm`` entry point names
this module, a ``register_model_architectures`` hook, the model (for the Llama family, a
``LlamaStyleForCausalLM`` subclass that names its settings), and a parity test against
transformers with ``nanovllm_core.testing.check_model_matches_transformers``.
"""

from nanovllm_core.hookspecs import hookimpl


@hookimpl
def register_model_architectures(register):
    # "module:attribute": the class is imported only when a checkpoint names the architecture
    register("MistralForCausalLM", "nanovllm_mistral.model:MistralForCausalLM")
