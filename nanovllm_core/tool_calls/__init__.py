"""Tool calling: finding a model's tool calls in its text, and the grammar that forces them."""

from nanovllm_core.tool_calls.parser import Tool, ParsedToolCall, ParsedToolCallDelta, ToolCallParser, ToolCallStream
from nanovllm_core.tool_calls.tagged_json import TaggedJsonToolCallParser

__all__ = ["TaggedJsonToolCallParser", "Tool", "ParsedToolCall", "ParsedToolCallDelta", "ToolCallParser", "ToolCallStream"]
