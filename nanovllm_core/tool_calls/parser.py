"""What a tool-call parser plugin implements.

A parser knows one model family's way of writing tool calls in text. The
server uses it four ways: to tell a model whose chat template ignores tools
how to call them (``system_prompt``), to write earlier calls back into the
conversation for such a template (``format_calls``), to constrain decoding so
that calls always parse and validate (``structural_tag``), and to turn the
generated text into calls, whole or delta by delta (``stream``).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

ToolChoice = Literal["auto", "required"] | str  # any other string names the one function to call


@dataclass(frozen=True)
class Tool:
    name: str
    parameters: dict[str, Any] = field(default_factory=lambda: {"type": "object", "properties": {}})
    description: str | None = None


def callable_tools(tools: list[Tool], choice: ToolChoice) -> list[Tool]:
    """The tools a call may name: all of them, or the one ``choice`` names."""
    return tools if choice in ("auto", "required") else [tool for tool in tools if tool.name == choice]


@dataclass
class ParsedToolCall:
    name: str
    arguments: str  # JSON text, as OpenAI returns it


@dataclass
class ParsedToolCallDelta:
    """A piece of the ``index``-th call: its first piece carries the name."""

    index: int
    name: str | None = None
    arguments: str = ""


class ToolCallStream(ABC):
    """Splits generated text, delta by delta, into content and tool-call deltas."""

    @abstractmethod
    def feed(self, text: str) -> tuple[str, list[ParsedToolCallDelta]]:
        """The content and call deltas that ``text`` completes; text that may
        still turn out to be part of a call is held back."""

    @abstractmethod
    def finish(self) -> tuple[str, list[ParsedToolCallDelta]]:
        """Release whatever was held back, at the end of generation."""


class ToolCallParser(ABC):
    """Registered by name through ``register_tool_call_parsers``; built with no arguments."""

    @abstractmethod
    def system_prompt(self, tools: list[Tool]) -> str:
        """Instructions listing ``tools`` and the call format, for templates that do not render tools."""

    @abstractmethod
    def format_calls(self, calls: list[ParsedToolCall]) -> str:
        """Earlier calls as the model writes them, for templates that do not render ``tool_calls``."""

    @abstractmethod
    def structural_tag(self, tools: list[Tool], choice: ToolChoice, parallel: bool) -> dict[str, Any]:
        """The structural tag (xgrammar's format, also vLLM's ``structural_tag``
        response format) that decoding follows: with ``required`` or a named
        function it must call, with ``auto`` it may; either way every call's
        arguments match the function's parameter schema."""

    @abstractmethod
    def stream(self) -> ToolCallStream:
        """A fresh stream for one generated text."""

    def parse(self, text: str) -> tuple[str | None, list[ParsedToolCall]]:
        """The content and calls of a whole text. A call whose arguments are
        not JSON (generation cut short) leaves the whole text as content."""
        stream = self.stream()
        content, deltas = stream.feed(text)
        tail, more = stream.finish()
        calls: dict[int, ParsedToolCall] = {}
        for delta in deltas + more:
            if delta.name is not None:
                calls[delta.index] = ParsedToolCall(delta.name, "")
            calls[delta.index].arguments += delta.arguments
        if not all(_is_json(call.arguments) for call in calls.values()):
            return text, []
        return (content + tail).strip() or None, list(calls.values())


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True
