"""Request and response bodies of the OpenAI API, as pydantic models.

Requests accept every field the server implements; a field it does not
implement yet is refused by name (see ``unsupported_fields``) rather than
silently ignored, and an unknown field is refused as OpenAI does.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from nanovllm_core.errors import InvalidRequestError
from nanovllm_core.grammar import GuidedDecoding
from nanovllm_core.model_info import ModelInfo
from nanovllm_core.pooling import PoolingParams
from nanovllm_core.sampling_params import INT64_MAX, INT64_MIN, MAX_COUNT, SamplingParams

# fields of the OpenAI API that this server recognises but does not implement
UNSUPPORTED_FIELDS = {
    "functions",
    "function_call",
    "audio",
    "modalities",
    "prediction",
    "reasoning_effort",
    "web_search_options",
    "suffix",
}
IGNORED_FIELDS = {"user", "store", "metadata", "service_tier"}  # accepted; they do not change the output

# each stop string is checked against every new token's text on the engine's thread,
# so their number bounds the work one request can add to every step of the batch
MAX_STOP_STRINGS = 64
MAX_STOP_STRING_CHARS = 4096
MAX_STOP_TOKEN_IDS = 1024
MAX_LOGIT_BIAS_ENTRIES = 300  # OpenAI's limit

# every tool's schema is compiled into the request's grammar
MAX_TOOLS = 128
# guided_choice becomes a grammar of this many alternatives at most
MAX_GUIDED_CHOICES = 1024
MAX_GUIDED_CHOICE_CHARS = 4096
MAX_GUIDED_SPEC_CHARS = 65536  # a regular expression or grammar
GUIDED_FIELDS = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")  # vLLM's older fields

# Every number a request may send has its range here, as the engine can hold it
# (nanovllm_core.sampling_params); /openapi.json publishes them (tests/test_bounds.py).
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
PositiveCount = Annotated[int, Field(ge=1, le=MAX_COUNT)]
TokenId = Annotated[StrictInt, Field(ge=0, le=MAX_COUNT)]  # and below the vocabulary's size: the engine checks
Seed = Annotated[int, Field(ge=INT64_MIN, le=INT64_MAX)]
# a token id as a JSON object key: ASCII digits only (str.isdigit takes '²', which int() refuses)
TokenIdKey = Annotated[str, Field(pattern=r"^[0-9]{1,10}$")]
GuidedSpec = Annotated[str, Field(max_length=MAX_GUIDED_SPEC_CHARS)]
GuidedChoices = Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_GUIDED_CHOICE_CHARS)]],
                          Field(min_length=1, max_length=MAX_GUIDED_CHOICES)]
StopString = Annotated[str, Field(max_length=MAX_STOP_STRING_CHARS)]
Probability = Annotated[float, Field(ge=0, le=1)]


class RequestModel(BaseModel):
    # JSON's NaN and Infinity literals are accepted by Python's parser; refuse them here
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        """Lone surrogates (a JSON escape like \\ud800) are valid JSON but not text; tokenizers reject them."""
        if _has_lone_surrogate(data):
            raise ValueError("the request contains a string that is not valid Unicode (a lone surrogate)")
        return data

    def unknown_fields(self) -> list[str]:
        return sorted(self.model_extra or {})


def _has_lone_surrogate(value: Any) -> bool:
    for item in leaves(value):
        if isinstance(item, str):
            try:
                item.encode("utf-8")
            except UnicodeEncodeError:
                return True
    return False


def leaves(value: Any) -> Iterator[Any]:
    """Every string, number and other leaf of a body or a request model, dict keys included;
    iterative, since a body may nest deeper than Python's recursion limit (or pydantic's)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, BaseModel):
            stack.extend(vars(item).values())
            stack.extend((item.model_extra or {}).values())
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        else:
            yield item


def text_size(value: Any) -> int:
    """Characters of every leaf of ``value`` as text: what a template may write of it."""
    return sum(len(item) if isinstance(item, str) else len(str(item)) for item in leaves(value) if item is not None)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    include_usage: bool = False
    continuous_usage_stats: bool = False


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    json_schema: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None  # the output always follows the schema, strict or not


class TagStructure(BaseModel):
    """vLLM's older structural tag: text between ``begin`` and ``end`` follows ``schema``."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    begin: Annotated[str, Field(min_length=1, max_length=MAX_GUIDED_CHOICE_CHARS)]
    json_schema: dict[str, Any] = Field(alias="schema")
    end: Annotated[str, Field(max_length=MAX_GUIDED_CHOICE_CHARS)]


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text", "json_object", "json_schema", "structural_tag"]
    json_schema: JsonSchemaFormat | None = None
    # structural_tag: xgrammar's format object (vLLM's newer form), or structures and triggers (its older one)
    format: dict[str, Any] | None = None
    structures: Annotated[list[TagStructure], Field(min_length=1, max_length=MAX_TOOLS)] | None = None
    triggers: Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_GUIDED_CHOICE_CHARS)]],
                        Field(min_length=1, max_length=MAX_TOOLS)] | None = None

    def to_guided_decoding(self) -> GuidedDecoding | None:
        """The grammar this format asks for; a schema that is not one is a 400."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return GuidedDecoding("json_object", param="response_format")
        if self.type == "structural_tag":
            return self._structural_tag()
        if self.json_schema is None:
            raise InvalidRequestError("response_format of type 'json_schema' needs a 'json_schema' object",
                                      param="response_format")
        return GuidedDecoding.from_json("json_schema", self.json_schema.json_schema, "response_format")

    def _structural_tag(self) -> GuidedDecoding:
        """Either form as xgrammar's structural tag: the older one is tags that may
        start wherever the text reaches a trigger, as vLLM reads it."""
        if (self.format is None) == (self.structures is None):
            raise InvalidRequestError("a structural_tag response_format needs either 'format' or 'structures' "
                                      "and 'triggers'", param="response_format")
        if self.format is not None:
            tag = {"type": "structural_tag", "format": self.format}
            return GuidedDecoding.from_json("structural_tag", tag, "response_format")
        if self.triggers is None:
            raise InvalidRequestError("'structures' needs 'triggers'", param="response_format")
        tags = [{"type": "tag", "begin": structure.begin, "end": structure.end,
                 "content": {"type": "json_schema", "json_schema": structure.json_schema}}
                for structure in self.structures]
        tag_format = {"type": "triggered_tags", "triggers": self.triggers, "tags": tags}
        tag = {"type": "structural_tag", "format": tag_format}
        return GuidedDecoding.from_json("structural_tag", tag, "response_format")


class StructuredOutputs(BaseModel):
    """vLLM's ``structured_outputs`` object: one constraint, named by its kind."""

    model_config = ConfigDict(extra="forbid")
    json_: dict[str, Any] | str | None = Field(None, alias="json")
    regex: GuidedSpec | None = None
    choice: GuidedChoices | None = None
    grammar: GuidedSpec | None = None

    def to_guided_decoding(self, param: str = "structured_outputs") -> GuidedDecoding:
        given = {name: value for name, value in (("json", self.json_), ("regex", self.regex), ("choice", self.choice),
                                                 ("grammar", self.grammar)) if value is not None}
        if len(given) != 1:
            raise InvalidRequestError(f"give exactly one constraint of json, regex, choice and grammar; got "
                                      f"{', '.join(given) or 'none'}", param=param)
        kind, value = given.popitem()
        if kind == "json":  # JSON text as it came (schema_check parses it where it compiles), or an object
            if isinstance(value, str):
                return GuidedDecoding("json_schema", value, param=param)
            return GuidedDecoding.from_json("json_schema", value, param)
        if kind == "choice":  # one alternative per choice, each a literal string
            choices = " | ".join(json.dumps(c, ensure_ascii=False) for c in value)
            return GuidedDecoding("ebnf", "root ::= " + choices, param=param)
        return GuidedDecoding("regex" if kind == "regex" else "ebnf", value, param=param)



class FunctionDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")]
    description: str | None = None
    parameters: dict[str, Any] = Field(default_factory=lambda: {"type": "object", "properties": {}})
    strict: bool | None = None  # calls always follow the parameters' schema, strict or not


class ToolDefinition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionDefinition


class FunctionName(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["function"]
    function: FunctionName


class FunctionCall(BaseModel):
    name: str
    arguments: str  # JSON text


class ToolCall(BaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SamplingFields(RequestModel):
    """Sampling parameters shared by chat and completions (OpenAI's and vLLM's names)."""

    model: str | None = None
    max_tokens: PositiveCount | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    top_k: Annotated[int, Field(ge=-1, le=MAX_COUNT)] | None = None
    min_p: Probability | None = None
    n: Annotated[int, Field(ge=1, le=16)] = 1
    stop: StopString | Annotated[list[StopString], Field(max_length=MAX_STOP_STRINGS)] | None = None
    stop_token_ids: Annotated[list[TokenId], Field(max_length=MAX_STOP_TOKEN_IDS)] | None = None
    include_stop_str_in_output: bool = False
    seed: Seed | None = None
    presence_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    frequency_penalty: Annotated[float, Field(ge=-2, le=2)] | None = None
    repetition_penalty: Annotated[float, Field(gt=0, le=10)] | None = None
    logit_bias: Annotated[
        dict[TokenIdKey, Annotated[float, Field(ge=-100, le=100)]], Field(max_length=MAX_LOGIT_BIAS_ENTRIES)
    ] | None = None
    ignore_eos: bool = False
    prompt_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None  # vLLM's: each prompt token's logprob
    min_tokens: Count = 0
    skip_special_tokens: bool = True
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    # vLLM's guided decoding: the newer object, or the older fields
    structured_outputs: StructuredOutputs | None = None
    guided_json: dict[str, Any] | str | None = None
    guided_regex: GuidedSpec | None = None
    guided_choice: GuidedChoices | None = None
    guided_grammar: GuidedSpec | None = None
    user: str | None = None

    def max_output_tokens(self) -> int | None:
        return self.max_tokens

    def num_logprobs(self) -> int | None:
        """None: no logprobs; 0: the chosen token's; k: and k alternatives."""
        return None

    def to_sampling_params(
        self, model: ModelInfo, guided: GuidedDecoding | None = None, guided_starts_after: tuple[int, ...] = ()
    ) -> list[SamplingParams]:
        """One SamplingParams per choice; with a seed, choice i uses seed + i so the n choices differ.
        A sampling field the request leaves out takes the model's default (generation_config.json),
        else OpenAI's. ``guided``: a constraint other than response_format's (the tools');
        ``guided_starts_after``: the tokens that end the model's thinking, where constraints start."""
        defaults = model.sampling_defaults

        def value(name: str, fallback: float) -> float:
            given = getattr(self, name)
            return given if given is not None else defaults.get(name, fallback)

        stop = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        base = dict(
            temperature=value("temperature", 1.0),
            top_p=value("top_p", 1.0),
            top_k=value("top_k", 0),
            min_p=value("min_p", 0.0),
            max_tokens=self.max_output_tokens(),
            min_tokens=self.min_tokens,
            presence_penalty=self.presence_penalty or 0.0,
            frequency_penalty=self.frequency_penalty or 0.0,
            repetition_penalty=value("repetition_penalty", 1.0),
            # keys are ASCII digits (TokenIdKey); ModelInfo.check_request refuses ids past the vocabulary
            logit_bias={int(key): value for key, value in self.logit_bias.items()} if self.logit_bias else None,
            stop=stop,
            stop_token_ids=list(self.stop_token_ids or []),
            include_stop_str_in_output=self.include_stop_str_in_output,
            ignore_eos=self.ignore_eos,
            logprobs=self.num_logprobs(),
            prompt_logprobs=self.prompt_logprobs,
            skip_special_tokens=self.skip_special_tokens,
            guided=self._guided_decoding(also=guided),
        )
        if base["guided"] is not None:
            base["guided_starts_after"] = guided_starts_after
        # an out-of-range value raises InvalidRequestError, which the app answers with a 400
        return [SamplingParams(**base, seed=None if self.seed is None else self.seed + i) for i in range(self.n)]

    def _guided_decoding(self, also: GuidedDecoding | None) -> GuidedDecoding | None:
        """The one constraint the request asks for: ``also`` (its tools'), response_format,
        structured_outputs or a guided_* field; more than one is a 400."""
        asked = [name for name, given in (
            ("tools", also is not None),
            ("response_format", self.response_format is not None and self.response_format.type != "text"),
            ("structured_outputs", self.structured_outputs is not None),
            *((name, getattr(self, name) is not None) for name in GUIDED_FIELDS),
        ) if given]
        if len(asked) > 1:
            raise InvalidRequestError(f"give one constraint, not {' and '.join(asked)}", param=asked[1])
        if not asked:
            return None
        kind = asked[0]
        if kind == "tools":
            return also
        if kind == "response_format":
            return self.response_format.to_guided_decoding()
        if kind == "structured_outputs":
            return self.structured_outputs.to_guided_decoding()
        return StructuredOutputs(**{kind.removeprefix("guided_"): getattr(self, kind)}).to_guided_decoding(param=kind)


class TextPart(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_call_id: str | None = None
    tool_calls: list[ToolCall] | None = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    max_completion_tokens: PositiveCount | None = None
    logprobs: bool = False
    top_logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    add_generation_prompt: bool = True
    chat_template_kwargs: dict[str, Any] | None = None
    tools: Annotated[list[ToolDefinition], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True

    def max_output_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def num_logprobs(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


DEFAULT_COMPLETION_MAX_TOKENS = 16  # as OpenAI's completions endpoint
PromptInput = str | list[str] | list[TokenId] | list[list[TokenId]]


class CompletionRequest(SamplingFields):
    prompt: PromptInput
    echo: bool = False
    logprobs: Annotated[int, Field(ge=0, le=20)] | None = None
    best_of: Annotated[int, Field(ge=1, le=16)] | None = None  # n's range: only best_of == n is served

    def max_output_tokens(self) -> int | None:
        return self.max_tokens or DEFAULT_COMPLETION_MAX_TOKENS

    def num_logprobs(self) -> int | None:
        return self.logprobs


MAX_EMBEDDING_INPUTS = 2048  # OpenAI's limit


class EmbeddingRequest(RequestModel):
    model: str | None = None
    input: str | Annotated[list[str], Field(max_length=MAX_EMBEDDING_INPUTS)] | list[TokenId] | Annotated[
        list[list[TokenId]], Field(max_length=MAX_EMBEDDING_INPUTS)]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: PositiveCount | None = None

    def to_pooling_params(self) -> PoolingParams:
        return PoolingParams(dimensions=self.dimensions)


class TokenizeRequest(RequestModel):
    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1)] | None = None
    add_special_tokens: bool = True
    add_generation_prompt: bool = True


class DetokenizeRequest(RequestModel):
    model: str | None = None
    tokens: list[TokenId]


# responses


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def now() -> int:
    return int(time.time())


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: dict[str, int] | None = None


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class Embedding(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # str: base64 of little-endian float32


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int]


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob]


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    # the model's thinking, with --reasoning-parser: vLLM's name, and the one Ollama and newer vLLM use
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None
    stop_reason: str | int | None = None


class PromptLogprob(BaseModel):
    logprob: float
    rank: int | None = None
    decoded_token: str


# vLLM's shape: per prompt token, None for the first, else {token id: its logprob} for the token and the top ones
PromptLogprobs = list[dict[str, PromptLogprob] | None]


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    prompt_logprobs: PromptLogprobs | None = None


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    """A call's first delta has its id, type and name; later ones add argument text."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class CompletionLogprobs(BaseModel):
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    prompt_logprobs: PromptLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: str | int | None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "nanovllm"
    root: str | None = None
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


# the Responses API (stateless): requests become chat requests; outputs become typed items

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
