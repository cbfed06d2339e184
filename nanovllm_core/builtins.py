"""nanovllm's own implementations, registered through the same hooks as any plugin."""

from nanovllm_core.hookspecs import hookimpl

# ChatML, for models whose tokenizer carries no template of its own
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


@hookimpl
def register_attention_backends(register):
    register("torch", "nanovllm_core.attention.torch_backend:TorchAttentionBackend")
    register("cpu", "nanovllm_core.attention.cpu_backend:CpuAttentionBackend")
    register("triton", "nanovllm_core.attention.triton_backend:TritonAttentionBackend")
    register("flash-attn", "nanovllm_core.attention.flash_attn_backend:FlashAttentionBackend")


@hookimpl
def register_chat_templates(register):
    register("chatml", CHATML_TEMPLATE)


@hookimpl
def register_grammar_backends(register):
    register("xgrammar", "nanovllm_core.grammar.xgrammar_backend:XGrammarBackend")


@hookimpl
def register_tool_call_parsers(register):
    register("hermes", "nanovllm_core.tool_calls.hermes:HermesToolCallParser")
    register("smollm2", "nanovllm_core.tool_calls.smollm2:SmolLM2ToolCallParser")


@hookimpl
def register_poolers(register):
    register("mean", "nanovllm_core.pooling:MeanPooler")
    register("cls", "nanovllm_core.pooling:CLSPooler")
    register("last", "nanovllm_core.pooling:LastTokenPooler")
    register("max", "nanovllm_core.pooling:MaxPooler")


@hookimpl
def register_reasoning_parsers(register):
    register("qwen3", "nanovllm_core.reasoning:Qwen3ReasoningParser")
    register("deepseek_r1", "nanovllm_core.reasoning:DeepSeekR1ReasoningParser")
