"""Tool calling: finding a model's tool calls in its text, and the grammar that forces them."""

from nanovllm_core.tool_calls.parser import (
    ParsedToolCall,
    ParsedToolCallDelta,
    Tool,
    ToolCallParser,
    ToolCallStream,
)
from nanovllm_core.tool_calls.tagged_json import TaggedJsonToolCallParser

__all__ = [
    "ParsedToolCall",
    "ParsedToolCallDelta",
    "TaggedJsonToolCallParser",
    "Tool",
    "ToolCallParser",
    "ToolCallStream",
]
