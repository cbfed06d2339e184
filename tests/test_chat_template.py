"""Choosing the chat template: the model's own, a registered name, or a file."""

import pytest

from nanovllm_api.chat_template import ChatRenderer, resolve_chat_template
from nanovllm_api.errors import BadRequest
from nanovllm_api.protocol.chat import ChatMessage
from nanovllm_core.registry import UnknownImplementationError
from nanovllm_core.tool_calls.smollm2 import SmolLM2ToolCallParser

MESSAGES = [ChatMessage(role="user", content="Hi"), ChatMessage(role="assistant", content="Hello"),
            ChatMessage(role="tool", content="42", tool_call_id="call-1")]


def test_default_is_the_models_own(smollm2_tokenizer):
    renderer = ChatRenderer(smollm2_tokenizer, resolve_chat_template(None, smollm2_tokenizer), SmolLM2ToolCallParser())
    rendered = renderer.render(MESSAGES, True, None)
    assert rendered.startswith("<|im_start|>system\nYou are a helpful AI assistant named SmolLM")
    assert rendered.endswith("<|im_start|>assistant\n")


def test_registered_name_and_file(smollm2_tokenizer, tmp_path):
    chatml = resolve_chat_template("chatml", smollm2_tokenizer)
    renderer = ChatRenderer(smollm2_tokenizer, chatml, SmolLM2ToolCallParser())
    assert renderer.render(MESSAGES[:1], False, None) == "<|im_start|>user\nHi<|im_end|>\n"
    template_file = tmp_path / "plain.jinja"
    template_file.write_text("{% for m in messages %}{{ m.role }}: {{ m.content }}\n{% endfor %}")
    plain = ChatRenderer(smollm2_tokenizer, resolve_chat_template(str(template_file), smollm2_tokenizer), SmolLM2ToolCallParser())
    assert plain.render(MESSAGES, False, None) == "user: Hi\nassistant: Hello\ntool: 42\n"


def test_unknown_template_and_template_errors(smollm2_tokenizer, tmp_path):
    with pytest.raises(UnknownImplementationError, match="Unknown chat template 'nope'.*chatml"):
        resolve_chat_template("nope", smollm2_tokenizer)
    strict = tmp_path / "strict.jinja"
    strict.write_text("{% if messages[0].role != 'system' %}{{ raise_exception('a system message must come first') }}{% endif %}")
    renderer = ChatRenderer(smollm2_tokenizer, resolve_chat_template(str(strict), smollm2_tokenizer), SmolLM2ToolCallParser())
    with pytest.raises(BadRequest, match="system message must come first"):
        renderer.render(MESSAGES, True, None)


# Qwen3's template renders the roles it knows and silently drops the rest
ROLES_IT_KNOWS = ("{% for m in messages %}{% if m.role in ['system', 'user', 'assistant'] %}"
                  "<{{ m.role }}>{{ m.content }}{% endif %}{% endfor %}")


def test_a_developer_message_is_a_system_message_for_templates_that_do_not_know_the_role(smollm2_tokenizer):
    messages = [ChatMessage(role="developer", content="Answer in French."), ChatMessage(role="user", content="Hi")]
    renderer = ChatRenderer(smollm2_tokenizer, ROLES_IT_KNOWS, SmolLM2ToolCallParser())
    assert renderer.render(messages, False, None) == "<system>Answer in French.<user>Hi"
    knows = ROLES_IT_KNOWS.replace("'assistant']", "'assistant', 'developer']")
    assert ChatRenderer(smollm2_tokenizer, knows, SmolLM2ToolCallParser()).render(messages, False, None) \
        == "<developer>Answer in French.<user>Hi"
