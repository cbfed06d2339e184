"""SmolLM2's format: one ``<tool_call>`` tag holding a JSON list of calls.

SmolLM2-Instruct learned tool use from a system prompt that lists the tools
and asks for this list; its chat template renders neither tools nor calls, so
``system_prompt`` and ``format_calls`` carry them into the conversation.
"""

from __future__ import annotations

import json
from typing import Any

from nanovllm_core.tool_calls.parser import ParsedToolCall, Tool, ToolChoice, callable_tools
from nanovllm_core.tool_calls.tagged_json import TaggedJsonToolCallParser, call_schema, function_json, json_format


class SmolLM2ToolCallParser(TaggedJsonToolCallParser):
    def system_prompt(self, tools: list[Tool]) -> str:
        return (
            "You can call the functions described in <tools></tools> below.\n"
            f"<tools>{json.dumps(function_json(tools))}</tools>\n"
            "To call functions, answer only with a JSON list of calls, each with the function's name and "
            "arguments, inside <tool_call></tool_call> tags:\n"
            '<tool_call>[{"name": "function_name", "arguments": {"parameter": "value"}}]</tool_call>\n'
            "If no function fits the request, answer in plain text."
        )

    def format_calls(self, calls: list[ParsedToolCall]) -> str:
        listing = [{"name": call.name, "arguments": json.loads(call.arguments)} for call in calls]
        return f"{self.begin}{json.dumps(listing)}{self.end}"

    def structural_tag(self, tools: list[Tool], choice: ToolChoice, parallel: bool) -> dict[str, Any]:
        one_call = {"anyOf": [call_schema(tool) for tool in callable_tools(tools, choice)]}
        single = not parallel or choice not in ("auto", "required")
        calls = {"type": "array", "items": one_call, "minItems": 1, **({"maxItems": 1} if single else {})}
        tag = {"type": "tag", "begin": self.begin, "content": json_format(calls),
               "end": self.end}
        if choice == "auto":
            return {"type": "structural_tag", "format": {
                "type": "triggered_tags", "triggers": [self.begin], "tags": [tag],
                "at_least_one": False, "stop_after_first": True}}
        return {"type": "structural_tag", "format": tag}
