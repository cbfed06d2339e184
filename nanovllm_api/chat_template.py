"""Rendering chat messages into a prompt with the model's (or a chosen) chat template."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from jinja2 import TemplateError

from nanovllm_api.errors import BadRequest
from nanovllm_api.protocol import ChatMessage
from nanovllm_core import plugins
from nanovllm_core.registry import UnknownImplementationError

logger = logging.getLogger(__name__)
FALLBACK_TEMPLATE = "chatml"


def resolve_chat_template(option: str | None, tokenizer) -> str:
    """``option`` is a registered template name, a file path, or None for the model's own."""
    registry = plugins.chat_templates()
    if option is None:
        if tokenizer.chat_template:
            return tokenizer.chat_template
        logger.warning("the model has no chat template; using %r", FALLBACK_TEMPLATE)
        return registry.get(FALLBACK_TEMPLATE)
    if option in registry:
        return registry.get(option)
    path = Path(option).expanduser()
    if path.is_file():
        return path.read_text()
    raise UnknownImplementationError(registry.describe_missing(option) + " It is not a file either.")


class ChatRenderer:
    def __init__(self, tokenizer, template: str):
        self.tokenizer = tokenizer
        self.template = template

    def render(self, messages: list[ChatMessage], add_generation_prompt: bool, extra: dict[str, Any] | None) -> str:
        conversation = [self._message(m) for m in messages]
        try:
            return self.tokenizer.apply_chat_template(
                conversation,
                chat_template=self.template,
                add_generation_prompt=add_generation_prompt,
                tokenize=False,
                **(extra or {}),
            )
        except (TemplateError, ValueError, TypeError) as error:  # what a template or transformers raise for bad messages
            raise BadRequest(f"The chat template rejected the messages: {error}", param="messages") from error

    @staticmethod
    def _message(message: ChatMessage) -> dict[str, Any]:
        rendered: dict[str, Any] = {"role": message.role, "content": message.text()}
        if message.name:
            rendered["name"] = message.name
        if message.tool_call_id:
            rendered["tool_call_id"] = message.tool_call_id
        return rendered

    def encode(self, prompt: str) -> list[int]:
        # the template already wrote any special tokens the model wants
        return self.tokenizer.encode(prompt, add_special_tokens=False)
