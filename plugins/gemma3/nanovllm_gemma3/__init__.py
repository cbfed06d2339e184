"""nanovllm plugin: Gemma 3 text decoders, and the chat format they were trained on."""

from nanovllm_core.hookspecs import hookimpl
from nanovllm_gemma3.chat_template import GEMMA_CHAT_TEMPLATE


@hookimpl
def register_model_architectures(register):
    register("Gemma3ForCausalLM", "nanovllm_gemma3.model:Gemma3ForCausalLM")


@hookimpl
def register_chat_templates(register):
    register("gemma", GEMMA_CHAT_TEMPLATE)
