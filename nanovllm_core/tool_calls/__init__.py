"""Tool calling: finding a model's tool calls in its text, and the grammar that forces them."""

from nanovllm_core.tool_calls.parser import Tool, ToolCall, ToolCallDelta, ToolCallParser, ToolCallStream
from nanovllm_core.tool_calls.tagged_json import TaggedJsonToolCallParser

__all__ = ["TaggedJsonToolCallParser", "Tool", "ToolCall", "ToolCallDelta", "ToolCallParser", "ToolCallStream"]
