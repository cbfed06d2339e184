"""The Hermes/Qwen format: one JSON object per ``<tool_call>`` tag, a tag per call.

Qwen2.5 and Qwen3 are trained on it, and their chat templates render tools and
earlier calls themselves; ``system_prompt`` and ``format_calls`` serve other
templates.
"""

from __future__ import annotations

import json
from typing import Any

from nanovllm_core.tool_calls.parser import ParsedToolCall, Tool, ToolChoice, callable_tools
from nanovllm_core.tool_calls.tagged_json import TaggedJsonToolCallParser, function_json, json_format


class HermesToolCallParser(TaggedJsonToolCallParser):
    def system_prompt(self, tools: list[Tool]) -> str:
        listing = "\n".join(json.dumps(tool) for tool in function_json(tools))
        return (
            "You can call the functions described in <tools></tools> below.\n"
            f"<tools>\n{listing}\n</tools>\n"
            "To call one, write its name and arguments as a JSON object in <tool_call></tool_call> tags, "
            "one tag per call:\n"
            '<tool_call>\n{"name": "function_name", "arguments": {"parameter": "value"}}\n</tool_call>'
        )

    def format_calls(self, calls: list[ParsedToolCall]) -> str:
        return "\n".join(
            f"{self.begin}\n{json.dumps({'name': call.name, 'arguments': json.loads(call.arguments)})}\n{self.end}"
            for call in calls
        )

    def structural_tag(self, tools: list[Tool], choice: ToolChoice, parallel: bool) -> dict[str, Any]:
        tags = [
            {
                "type": "tag",
                "begin": f'{self.begin}\n{{"name": {json.dumps(tool.name)}, "arguments": ',
                "content": json_format(tool.parameters),
                "end": f"}}\n{self.end}",
            }
            for tool in callable_tools(tools, choice)
        ]
        if choice == "auto":
            calls = {"type": "triggered_tags", "triggers": [self.begin], "tags": tags,
                     "at_least_one": False, "stop_after_first": not parallel}
        else:
            calls = {"type": "tags_with_separator", "tags": tags, "separator": "\n",
                     "at_least_one": True, "stop_after_first": not parallel or choice != "required"}
        return {"type": "structural_tag", "format": calls}
