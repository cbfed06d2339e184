"""nanovllm plugin: Llama, Qwen2 and Qwen3 decoders on the core's layers."""

from nanovllm_core.hookspecs import hookimpl

ARCHITECTURES = ("LlamaForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM")


@hookimpl
def register_model_architectures(register):
    for name in ARCHITECTURES:
        register(name, f"nanovllm_qwen3.decoder:{name}")
