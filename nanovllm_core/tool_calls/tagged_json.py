"""Tool calls written as JSON inside begin/end tags, as in Hermes, Qwen and SmolLM2:
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, or a JSON list of
such objects inside one tag.

While streaming, a call's name goes out as soon as it is complete and its
arguments as the raw text of the ``arguments`` value grows, so the fragments a
client concatenates are exactly the text the model wrote.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from nanovllm_core.tool_calls.parser import ParsedToolCallDelta, ToolCallParser, ToolCallStream


@dataclass
class PartialCall:
    """A call object seen so far in a tag's payload."""

    name: str | None = None
    arguments_start: int | None = None  # offset of the ``arguments`` value in the payload
    arguments_end: int | None = None  # set once that value is complete

    def arguments(self, payload: str) -> str:
        if self.arguments_start is None:
            return ""
        if self.arguments_end is None:
            # trailing whitespace may yet turn out to follow the value rather than belong to it
            return payload[self.arguments_start:].rstrip()
        return payload[self.arguments_start:self.arguments_end].rstrip()


def scan_calls(payload: str) -> list[PartialCall]:
    """The call objects of a possibly unfinished payload: one object, or a list of objects.

    A scan of the raw text rather than a partial-JSON parser, because streaming
    needs where the ``arguments`` value starts and ends, not just its value.
    """
    call_depth = 1 if payload.lstrip().startswith("[") else 0
    member_depth = call_depth + 1  # where a call's keys and values sit
    calls: list[PartialCall] = []
    depth = 0
    in_string = escaped = False
    string_start = 0
    expecting_key = False
    key: str | None = None
    for i, char in enumerate(payload):
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
                if calls and depth == member_depth:
                    value = json.loads(payload[string_start:i + 1])
                    if expecting_key:
                        key, expecting_key = value, False
                    elif key == "name" and isinstance(value, str):
                        calls[-1].name = value
                    elif key == "arguments" and calls[-1].arguments_start == string_start:
                        calls[-1].arguments_end = i + 1
            continue
        if char.isspace():
            continue
        current = calls[-1] if calls else None
        at_member = current is not None and depth == member_depth
        if at_member and key == "arguments" and not expecting_key and char != ":" and current.arguments_start is None:
            current.arguments_start = i
        if char == '"':
            in_string, string_start = True, i
        elif char in "{[":
            if char == "{" and depth == call_depth:
                calls.append(PartialCall())
                expecting_key, key = True, None
            depth += 1
        elif char in "}]":
            if at_member and key == "arguments" and current.arguments_end is None:
                current.arguments_end = i  # a number or literal ended by the call's closing brace
            depth -= 1
            if current is not None and depth == member_depth and key == "arguments" and current.arguments_end is None:
                current.arguments_end = i + 1  # the arguments object or list closed
        elif char == "," and at_member:
            if key == "arguments" and current.arguments_end is None:
                current.arguments_end = i
            expecting_key, key = True, None
    return calls


def held_back(text: str, tag: str) -> int:
    """How many characters at the end of ``text`` could be the start of ``tag``."""
    for size in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:size]):
            return size
    return 0


class TaggedJsonStream(ToolCallStream):
    def __init__(self, begin: str, end: str):
        self.begin, self.end = begin, end
        self._pending = ""  # text not yet known to be content or call
        self._payload: str | None = None  # inside a tag: its text so far
        self._sent: list[int] = []  # per call of the open tag: argument characters sent, -1 before its name
        self._calls_before = 0  # calls in earlier tags

    def feed(self, text: str) -> tuple[str, list[ParsedToolCallDelta]]:
        self._pending += text
        content: list[str] = []
        deltas: list[ParsedToolCallDelta] = []
        while True:
            tag = self.begin if self._payload is None else self.end
            at = self._pending.find(tag)
            if at < 0:
                cut = len(self._pending) - held_back(self._pending, tag)
                self._take(self._pending[:cut], content)
                self._pending = self._pending[cut:]
                if self._payload is not None:
                    deltas += self._call_deltas()
                return self._content(content), deltas
            self._take(self._pending[:at], content)
            self._pending = self._pending[at + len(tag):]
            if self._payload is None:
                self._payload, self._sent = "", []
            else:
                deltas += self._call_deltas()
                self._close_tag(content, closed=True)

    def finish(self) -> tuple[str, list[ParsedToolCallDelta]]:
        content: list[str] = []
        self._take(self._pending, content)
        self._pending = ""
        deltas: list[ParsedToolCallDelta] = []
        if self._payload is not None:  # generation stopped inside a tag
            deltas = self._call_deltas()
            self._close_tag(content, closed=False)
        return self._content(content), deltas

    def _take(self, text: str, content: list[str]) -> None:
        if self._payload is None:
            content.append(text)
        else:
            self._payload += text

    def _close_tag(self, content: list[str], closed: bool) -> None:
        if not any(sent >= 0 for sent in self._sent):  # no call in it after all: it was text
            content.append(self.begin + self._payload + (self.end if closed else ""))
        self._calls_before += len(self._sent)
        self._payload = None

    def _content(self, parts: list[str]) -> str:
        text = "".join(parts)
        # the whitespace between and around calls is layout, not an answer
        return "" if (self._calls_before or self._payload is not None) and not text.strip() else text

    def _call_deltas(self) -> list[ParsedToolCallDelta]:
        deltas = []
        for i, call in enumerate(scan_calls(self._payload)):
            if i == len(self._sent):
                self._sent.append(-1)
            if call.name is None:
                continue
            index = self._calls_before + i
            if self._sent[i] < 0:
                deltas.append(ParsedToolCallDelta(index, name=call.name))
                self._sent[i] = 0
            arguments = call.arguments(self._payload)
            if len(arguments) > self._sent[i]:
                deltas.append(ParsedToolCallDelta(index, arguments=arguments[self._sent[i]:]))
                self._sent[i] = len(arguments)
        return deltas


class TaggedJsonToolCallParser(ToolCallParser):
    """Parsing for any tagged-JSON format; subclasses say how to prompt and constrain."""

    begin = "<tool_call>"
    end = "</tool_call>"

    def stream(self) -> TaggedJsonStream:
        return TaggedJsonStream(self.begin, self.end)


def function_json(tools) -> list[dict]:
    """Tools in OpenAI's JSON form, the way models trained on tool use have seen them."""
    return [
        {"type": "function", "function": {"name": t.name, "description": t.description or "", "parameters": t.parameters}}
        for t in tools
    ]


def json_format(schema: dict) -> dict:
    """A structural tag's JSON content; whitespace is bounded because a small model
    sampling freely can wander into endless spaces and newlines between tokens."""
    return {"type": "json_schema", "json_schema": schema, "max_whitespace_cnt": 1}


def call_schema(tool) -> dict:
    """A JSON schema for one call of ``tool``: its name, then arguments matching its parameters."""
    return {
        "type": "object",
        "properties": {"name": {"const": tool.name}, "arguments": tool.parameters},
        "required": ["name", "arguments"],
        "additionalProperties": False,
    }
