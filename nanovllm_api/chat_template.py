"""Rendering chat messages into a prompt with the model's (or a chosen) chat template."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from jinja2 import TemplateError

from nanovllm_api.errors import BadRequest
from nanovllm_api.protocol.chat import ChatMessage
from nanovllm_api.protocol.chat import ToolCall
from nanovllm_core import plugins
from nanovllm_core.registry import UnknownImplementationError
from nanovllm_core.tool_calls import ParsedToolCall, Tool, ToolCallParser
from nanovllm_core.tool_calls.tagged_json import function_json

logger = logging.getLogger(__name__)
FALLBACK_TEMPLATE = "chatml"


def resolve_chat_template(option: str | None, tokenizer, model_default: str | None = None) -> str:
    """``option`` is a registered template name, a file path, or None for the model's own:
    the checkpoint's, else the one its model class names (``model_default``), else ChatML."""
    registry = plugins.chat_templates()
    if option is None:
        if tokenizer.chat_template:
            return tokenizer.chat_template
        fallback = model_default or FALLBACK_TEMPLATE
        logger.warning("the checkpoint has no chat template; using %r", fallback)
        return registry.get(fallback)
    if option in registry:
        return registry.get(option)
    path = Path(option).expanduser()
    if path.is_file():
        return path.read_text()
    raise UnknownImplementationError(registry.describe_missing(option) + " It is not a file either.")


class ChatRenderer:
    """Renders with the template; tools and earlier tool calls that the template
    does not render itself are written into the messages by the tool-call parser."""

    def __init__(self, tokenizer, template: str, tool_parser: ToolCallParser):
        self.tokenizer = tokenizer
        self.template = template
        self.tool_parser = tool_parser
        # templates name these variables when they render them (as vLLM also checks)
        self.renders_tools = "tools" in template
        self.renders_tool_calls = "tool_calls" in template
        # OpenAI's newer name for system; templates that do not know it (Qwen3's) would drop it silently
        self.knows_developer = "developer" in template

    def render(
        self,
        messages: list[ChatMessage],
        add_generation_prompt: bool,
        extra: dict[str, Any] | None,
        tools: list[Tool] | None = None,
    ) -> str:
        conversation = [self._message(i, m) for i, m in enumerate(messages)]
        options = dict(extra or {})
        if tools and self.renders_tools:
            options["tools"] = function_json(tools)
        elif tools:
            conversation = _with_system_text(conversation, self.tool_parser.system_prompt(tools))
        try:
            return self.tokenizer.apply_chat_template(
                conversation,
                chat_template=self.template,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
                **options,
            )
        except (TemplateError, ValueError, TypeError) as error:  # what a template or transformers raise for bad messages
            raise BadRequest(f"The chat template rejected the messages: {error}", param="messages") from error

    def _message(self, index: int, message: ChatMessage) -> dict[str, Any]:
        role = "system" if message.role == "developer" and not self.knows_developer else message.role
        rendered: dict[str, Any] = {"role": role, "content": message.text()}
        if message.name:
            rendered["name"] = message.name
        if message.tool_call_id:
            rendered["tool_call_id"] = message.tool_call_id
        if message.tool_calls:
            arguments = [_arguments(index, call) for call in message.tool_calls]
            if self.renders_tool_calls:
                rendered["tool_calls"] = [  # Hugging Face templates take arguments as a mapping
                    {"id": call.id, "type": "function", "function": {"name": call.function.name, "arguments": args}}
                    for call, args in zip(message.tool_calls, arguments)
                ]
            else:
                calls = [ParsedToolCall(call.function.name, call.function.arguments) for call in message.tool_calls]
                written = self.tool_parser.format_calls(calls)
                rendered["content"] = "\n".join(part for part in (rendered["content"], written) if part)
        return rendered

    def encode(self, prompt: str) -> list[int]:
        # the template already wrote any special tokens the model wants
        return self.tokenizer.encode(prompt, add_special_tokens=False)


def _arguments(index: int, call: ToolCall) -> Any:
    try:
        return json.loads(call.function.arguments)
    except ValueError as error:
        raise BadRequest(f"messages[{index}]: the arguments of tool call {call.id} are not JSON", param="messages") from error


def _with_system_text(conversation: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    """``text`` appended to the system message, or as one if there is none."""
    if conversation and conversation[0]["role"] in ("system", "developer"):
        first = dict(conversation[0], content=f"{conversation[0]['content']}\n\n{text}".lstrip())
        return [first, *conversation[1:]]
    return [{"role": "system", "content": text}, *conversation]
