"""Tool calling on the chat endpoint: a request's tools checked, the grammar
that constrains its calls, and generated text turned into OpenAI's tool calls.

With ``tool_choice`` ``required`` or a named function, decoding must produce
calls; with ``auto`` (the default when tools are given) it may. Either way
every call is constrained to its function's parameter schema, so arguments
always parse and validate. ``none`` leaves the tools out of the prompt.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from nanovllm_api.errors import BadRequest
from nanovllm_api.protocol.chat import ChatCompletionRequest, FunctionCall, FunctionCallDelta, ToolCall, ToolCallDelta
from nanovllm_core import plugins
from nanovllm_core.grammar import GuidedDecoding
from nanovllm_core.tool_calls import ParsedToolCall, ParsedToolCallDelta, Tool, ToolCallParser, ToolCallStream
from nanovllm_core.tool_calls.parser import ToolChoice


def default_parser_name(chat_template: str) -> str:
    """Templates that render ``tool_calls`` themselves are Qwen's and its kin, which
    write Hermes-style calls; for others, SmolLM2's format (the default model's)."""
    return "hermes" if "tool_calls" in chat_template else "smollm2"


def resolve_parser(name: str | None, chat_template: str) -> ToolCallParser:
    return plugins.tool_call_parsers().get(name or default_parser_name(chat_template))()


@dataclass
class ToolUse:
    """The tools one request may call, and how."""

    parser: ToolCallParser
    tools: list[Tool]
    choice: ToolChoice
    parallel: bool

    def guided(self) -> GuidedDecoding:
        """Calls constrained to the tools; their parameters' schemas are checked where this compiles."""
        tag = self.parser.structural_tag(self.tools, self.choice, self.parallel)
        return GuidedDecoding.from_json("structural_tag", tag, param="tools")


def tool_use(request: ChatCompletionRequest, parser: ToolCallParser) -> ToolUse | None:
    """The request's tool use, checked; None when it gives no tools or asks for none."""
    choice = request.tool_choice
    named = None if choice is None or isinstance(choice, str) else choice.function.name
    if not request.tools:
        if choice == "required" or named:
            raise BadRequest("tool_choice asks for a tool call, but the request gives no tools", param="tool_choice")
        return None
    if choice == "none":
        return None
    tools = [Tool(t.function.name, t.function.parameters, t.function.description) for t in request.tools]
    names = [t.name for t in tools]
    if len(set(names)) < len(names):
        raise BadRequest("tools has two functions with the same name", param="tools")
    if named is not None and named not in names:
        raise BadRequest(f"tool_choice names the function '{named}', which is not in tools ({', '.join(names)})",
                         param="tool_choice")
    if request.response_format is not None and request.response_format.type != "text":
        raise BadRequest("response_format cannot be combined with tools; set tool_choice to 'none' or drop one",
                         param="response_format")
    return ToolUse(parser, tools, named or choice or "auto", request.parallel_tool_calls)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def message_tool_calls(calls: list[ParsedToolCall]) -> list[ToolCall] | None:
    return [ToolCall(id=new_call_id(), function=FunctionCall(name=c.name, arguments=c.arguments)) for c in calls] or None


def finish_reason(reason: str | None, called: bool) -> str | None:
    return "tool_calls" if called and reason == "stop" else reason


class PlainText(ToolCallStream):
    """The stream of a request without tools: everything is content."""

    def feed(self, text: str) -> tuple[str, list[ParsedToolCallDelta]]:
        return text, []

    def finish(self) -> tuple[str, list[ParsedToolCallDelta]]:
        return "", []


class StreamedToolCalls:
    """One choice's text as OpenAI's streamed deltas: content, and tool calls
    with an id, type and name first and argument fragments after."""

    def __init__(self, use: ToolUse | None):
        self._stream = use.parser.stream() if use else PlainText()
        self._ids: dict[int, str] = {}

    @property
    def called(self) -> bool:
        return bool(self._ids)

    def feed(self, text: str) -> tuple[str, list[ToolCallDelta]]:
        return self._convert(*self._stream.feed(text))

    def finish(self, text: str = "") -> tuple[str, list[ToolCallDelta]]:
        """The last piece of text, then whatever the stream held back."""
        content, calls = self.feed(text)
        more_content, more_calls = self._convert(*self._stream.finish())
        return content + more_content, calls + more_calls

    def _convert(self, content: str, deltas: list[ParsedToolCallDelta]) -> tuple[str, list[ToolCallDelta]]:
        converted = []
        for delta in deltas:
            if delta.name is not None:
                self._ids[delta.index] = new_call_id()
                converted.append(ToolCallDelta(index=delta.index, id=self._ids[delta.index], type="function",
                                               function=FunctionCallDelta(name=delta.name, arguments=delta.arguments)))
            else:
                converted.append(ToolCallDelta(index=delta.index, function=FunctionCallDelta(arguments=delta.arguments)))
        return content, converted
