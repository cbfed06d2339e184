"""/v1/responses (stateless): requests become chat requests; outputs become typed items."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from nanovllm_api.protocol.chat import ChatCompletionRequest
from nanovllm_api.protocol.common import PositiveCount, RequestModel, Seed
from nanovllm_api.protocol.structured_outputs import MAX_TOOLS
from nanovllm_core.errors import InvalidRequestError


MAX_RESPONSE_INPUT_ITEMS = 2048


class InputTextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["input_text", "output_text"]
    text: str


class InputItem(BaseModel):
    """What every input item may carry from an earlier response's output (and is not needed)."""

    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    status: str | None = None


class InputMessageItem(InputItem):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[InputTextPart]

    def text(self) -> str:
        return self.content if isinstance(self.content, str) else "".join(part.text for part in self.content)


class FunctionCallItem(InputItem):
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str


class FunctionCallOutputItem(InputItem):
    type: Literal["function_call_output"]
    call_id: str
    output: str


class FunctionTool(BaseModel):
    """A Responses tool: the chat API's function, not nested."""

    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None


class FunctionToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    name: str


class TextFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["text", "json_object", "json_schema"]
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")] | None = None
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    format: TextFormat | None = None


class ResponsesRequest(RequestModel):
    model: str | None = None
    input: str | Annotated[list[InputMessageItem | FunctionCallItem | FunctionCallOutputItem],
                           Field(min_length=1, max_length=MAX_RESPONSE_INPUT_ITEMS)]
    instructions: str | None = None
    max_output_tokens: PositiveCount | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    seed: Seed | None = None  # an extension, as vLLM's
    tools: Annotated[list[FunctionTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | FunctionToolChoice | None = None
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    stream: bool = False
    store: bool | None = None
    previous_response_id: str | None = None

    def to_chat_request(self) -> ChatCompletionRequest:
        """The same request as chat; store and previous_response_id are refused (nothing is stored)."""
        if self.previous_response_id is not None:
            raise InvalidRequestError("previous_response_id needs stored responses, and this server stores none: "
                                      "send the whole conversation in input", param="previous_response_id")
        if self.store:
            raise InvalidRequestError("store is not supported: this server keeps no responses (leave it out or "
                                      "set it to false)", param="store")
        messages = [{"role": "system", "content": self.instructions}] if self.instructions is not None else []
        messages += [{"role": "user", "content": self.input}] if isinstance(self.input, str) else _chat_messages(self.input)
        choice = self.tool_choice
        fmt = self.text.format if self.text else None
        return ChatCompletionRequest(
            model=self.model, messages=messages, max_completion_tokens=self.max_output_tokens,
            temperature=self.temperature, top_p=self.top_p, seed=self.seed, stream=self.stream,
            parallel_tool_calls=self.parallel_tool_calls,
            tools=[{"type": "function", "function": tool.model_dump(exclude={"type"})} for tool in self.tools or []]
            or None,
            tool_choice={"type": "function", "function": {"name": choice.name}} if isinstance(choice, FunctionToolChoice)
            else choice,
            response_format=None if fmt is None else {"type": fmt.type, **({"json_schema": {
                "name": fmt.name or "response", "schema": fmt.json_schema or {}, "strict": fmt.strict}}
                if fmt.type == "json_schema" else {})},
        )


def _chat_messages(items: list) -> list[dict[str, Any]]:
    """Input items as chat messages: a function call joins the assistant turn before it."""
    messages: list[dict[str, Any]] = []
    for item in items:
        if isinstance(item, InputMessageItem):
            messages.append({"role": item.role, "content": item.text()})
        elif isinstance(item, FunctionCallItem):
            call = {"id": item.call_id, "type": "function", "function": {"name": item.name, "arguments": item.arguments}}
            if messages and messages[-1]["role"] == "assistant":
                messages[-1].setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        else:
            messages.append({"role": "tool", "tool_call_id": item.call_id, "content": item.output})
    return messages


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = []


class OutputMessage(BaseModel):
    type: Literal["message"] = "message"
    id: str
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputText]


class ReasoningText(BaseModel):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class OutputReasoning(BaseModel):
    type: Literal["reasoning"] = "reasoning"
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    summary: list[Any] = []
    content: list[ReasoningText]


class OutputFunctionCall(BaseModel):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: dict[str, int]
    output_tokens: int
    output_tokens_details: dict[str, int]
    total_tokens: int


class ResponseObject(BaseModel):
    id: str
    object: Literal["response"] = "response"
    created_at: int
    model: str
    status: Literal["in_progress", "completed", "incomplete"]
    output: list[OutputMessage | OutputReasoning | OutputFunctionCall]
    error: None = None
    incomplete_details: dict[str, str] | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    parallel_tool_calls: bool
    temperature: float | None = None
    top_p: float | None = None
    tool_choice: Any = "auto"
    tools: list[FunctionTool] = []
    text: TextConfig | None = None
    store: bool = False
    usage: ResponseUsage | None = None
