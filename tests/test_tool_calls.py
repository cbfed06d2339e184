"""Tool calling: the built-in parsers, the grammar that constrains calls, what
the chat template is given, and the whole exchange through a real server with
the openai client and SmolLM2."""

import json

import jsonschema
import openai
import pytest

from nanovllm_api.chat_template import ChatRenderer, resolve_chat_template
from nanovllm_api.protocol.chat import ChatMessage
from nanovllm_api.chat_tools import default_parser_name
from nanovllm_core.grammar import GuidedDecoding
from nanovllm_core.grammar.xgrammar_backend import XGrammarBackend
from nanovllm_core.testing import check_tool_call_parser
from nanovllm_core.tool_calls import ParsedToolCall, Tool
from nanovllm_core.tool_calls.hermes import HermesToolCallParser
from nanovllm_core.tool_calls.smollm2 import SmolLM2ToolCallParser

MODEL = "SmolLM2-135M-Instruct"
WEATHER = Tool(
    "get_weather",
    {"type": "object", "properties": {"city": {"type": "string", "maxLength": 30},
                                      "unit": {"enum": ["celsius", "fahrenheit"]}},
     "required": ["city", "unit"], "additionalProperties": False},
    "The current weather in a city",
)
ADD = Tool(
    "add",
    {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
     "required": ["a", "b"], "additionalProperties": False},
    "Add two integers",
)
TOOLS = {tool.name: tool for tool in (WEATHER, ADD)}
CALLS = [ParsedToolCall("get_weather", '{"city": "Paris", "unit": "celsius"}'), ParsedToolCall("add", '{"a": 2, "b": 3}')]
PARSERS = [pytest.param(HermesToolCallParser(), id="hermes"), pytest.param(SmolLM2ToolCallParser(), id="smollm2")]


# parsing


@pytest.mark.parametrize("parser", PARSERS)
def test_builtin_parsers_pass_the_plugin_check(parser, smollm2_tokenizer):
    check_tool_call_parser(parser, list(TOOLS.values()), CALLS, smollm2_tokenizer)
    check_tool_call_parser(parser, list(TOOLS.values()), CALLS[:1])


def test_the_plugin_check_catches_a_broken_parser(smollm2_tokenizer):
    class ForgetsArguments(HermesToolCallParser):
        def format_calls(self, calls):
            return super().format_calls([ParsedToolCall(call.name, "{}") for call in calls])

    with pytest.raises(AssertionError, match="parsed"):
        check_tool_call_parser(ForgetsArguments(), list(TOOLS.values()), CALLS)


def test_hermes_finds_calls_whatever_their_strings_hold():
    text = ('Checking.\n<tool_call>\n{"name": "search", "arguments": {"q": "a \\"}\\" <tool_call> {[", '
            '"n": [1, {"x": "]"}]}}\n</tool_call>\n<tool_call>\n{"arguments": {"a": 1}, "name": "add"}\n</tool_call>')
    content, calls = HermesToolCallParser().parse(text)
    assert content == "Checking."
    assert [(call.name, json.loads(call.arguments)) for call in calls] == [("search", {"q": 'a "}" <tool_call> {[', "n": [1, {"x": "]"}]}), ("add", {"a": 1})]


@pytest.mark.parametrize("text", [
    "No call here, only < and > signs.",
    "<tool_call>\nnot JSON at all\n</tool_call>",
    '<tool_call>\n{"name": "add", "arguments": {"a": 1',  # cut short by max_tokens
])
def test_text_that_is_not_a_whole_call_stays_content(text):
    assert HermesToolCallParser().parse(text) == (text, [])


# the grammar that constrains decoding


@pytest.fixture(scope="module")
def admits(smollm2_tokenizer):
    """admits(tag, text): whether the structural tag's grammar lets the model write ``text`` and stop."""
    backend = XGrammarBackend(smollm2_tokenizer, len(smollm2_tokenizer))

    def check(tag: dict, text: str) -> bool:
        matcher = backend.matcher(backend.compile(GuidedDecoding("structural_tag", json.dumps(tag))))
        token_ids = smollm2_tokenizer.encode(text, add_special_tokens=False) + [smollm2_tokenizer.eos_token_id]
        return all(matcher.accept(token_id) for token_id in token_ids)

    return check


@pytest.mark.parametrize("parser", PARSERS)
def test_required_admits_only_valid_calls(admits, parser):
    tag = parser.structural_tag(list(TOOLS.values()), "required", parallel=True)
    assert admits(tag, parser.format_calls(CALLS))
    assert not admits(tag, "I would rather answer in words.")
    assert not admits(tag, parser.format_calls([ParsedToolCall("add", '{"a": "two", "b": 3}')]))
    assert not admits(tag, parser.format_calls([ParsedToolCall("add", '{"a": 2}')]))
    assert not admits(tag, parser.format_calls([ParsedToolCall("subtract", '{"a": 2, "b": 3}')]))
    single = parser.structural_tag(list(TOOLS.values()), "required", parallel=False)
    assert admits(single, parser.format_calls(CALLS[:1]))
    assert not admits(single, parser.format_calls(CALLS))


@pytest.mark.parametrize("parser", PARSERS)
def test_a_named_function_is_the_only_call(admits, parser):
    tag = parser.structural_tag(list(TOOLS.values()), "add", parallel=True)
    assert admits(tag, parser.format_calls(CALLS[1:]))
    assert not admits(tag, parser.format_calls(CALLS[:1]))
    assert not admits(tag, parser.format_calls([CALLS[1], CALLS[1]]))


@pytest.mark.parametrize("parser", PARSERS)
def test_auto_admits_words_or_valid_calls(admits, parser):
    tag = parser.structural_tag(list(TOOLS.values()), "auto", parallel=False)
    assert admits(tag, "Paris is sunny today.")
    assert admits(tag, "Let me check. " + parser.format_calls(CALLS[:1]))
    assert not admits(tag, parser.format_calls([ParsedToolCall("add", '{"a": 1.5, "b": 3}')]))


# what the chat template gets

CONVERSATION = [
    ChatMessage(role="user", content="What is 2 plus 3?"),
    ChatMessage(role="assistant", tool_calls=[{"id": "call_1", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]),
    ChatMessage(role="tool", tool_call_id="call_1", content="5"),
]


def test_a_template_without_tools_gets_them_from_the_parser(smollm2_tokenizer):
    template = resolve_chat_template(None, smollm2_tokenizer)
    assert default_parser_name(template) == "smollm2"
    parser = SmolLM2ToolCallParser()
    prompt = ChatRenderer(smollm2_tokenizer, template, parser).render(CONVERSATION, True, None, [ADD])
    system, rest = prompt.split("<|im_start|>user\n")
    assert system.startswith("<|im_start|>system\n") and parser.system_prompt([ADD]) in system
    assert f"<|im_start|>assistant\n{parser.format_calls(CALLS[1:])}<|im_end|>" in rest
    assert rest.endswith("<|im_start|>tool\n5<|im_end|>\n<|im_start|>assistant\n")


def test_a_template_that_renders_tools_gets_them_as_data(smollm2_tokenizer):
    template = (
        "{% for tool in tools %}TOOL {{ tool.function.name }};{% endfor %}"
        "{% for m in messages %}{{ m.role }}: {{ m.content }}"
        "{% for call in m.tool_calls or [] %}CALL {{ call.function.name }}(a={{ call.function.arguments.a }}){% endfor %};"
        "{% endfor %}"
    )
    assert default_parser_name(template) == "hermes"
    prompt = ChatRenderer(smollm2_tokenizer, template, HermesToolCallParser()).render(CONVERSATION, False, None, [WEATHER, ADD])
    assert prompt == "TOOL get_weather;TOOL add;user: What is 2 plus 3?;assistant: CALL add(a=2);tool: 5;"


# through the server

API_TOOLS = [{"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}}
             for t in TOOLS.values()]
WEATHER_QUESTION = [{"role": "user", "content": "What is the temperature in Paris right now?"}]


@pytest.fixture(scope="module")
def client(structured_server):
    return openai.OpenAI(base_url=f"{structured_server.url}/v1", api_key="unused")


def ask(client, messages=WEATHER_QUESTION, **kwargs):
    return client.chat.completions.create(model=MODEL, messages=messages, tools=API_TOOLS, max_tokens=100, **kwargs)


def assert_valid_calls(calls, names: set[str]) -> None:
    assert calls
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), TOOLS[call.function.name].parameters)


@pytest.mark.parametrize("tool_choice,names", [
    ("required", set(TOOLS)),
    ({"type": "function", "function": {"name": "add"}}, {"add"}),
], ids=["required", "named"])
def test_forced_calls_validate_greedy_and_sampled(client, tool_choice, names):
    for temperature, seed in ((0, None), (1.0, 1), (1.0, 2)):
        choice = ask(client, tool_choice=tool_choice, temperature=temperature, seed=seed).choices[0]
        assert choice.finish_reason == "tool_calls"
        assert_valid_calls(choice.message.tool_calls, names)


def test_no_parallel_calls_means_one_call(client):
    message = ask(client, tool_choice="required", parallel_tool_calls=False, temperature=0).choices[0].message
    assert len(message.tool_calls) == 1


def test_streamed_call_arrives_as_name_then_argument_fragments(client):
    whole = ask(client, tool_choice="required", temperature=0).choices[0].message.tool_calls
    chunks = [chunk.choices[0] for chunk in ask(client, tool_choice="required", temperature=0, stream=True) if chunk.choices]
    deltas = [delta for chunk in chunks for delta in chunk.delta.tool_calls or []]
    first = deltas[0]
    assert (first.index, first.type, first.function.name, first.function.arguments) == (0, "function", whole[0].function.name, "")
    assert first.id.startswith("call_")
    assert all(d.id is None and d.function.name is None for d in deltas[1:] if d.index == 0)
    assert len(deltas) > 3  # the arguments come in pieces, as they are generated
    assert "".join(d.function.arguments for d in deltas if d.index == 0) == whole[0].function.arguments
    assert [c.finish_reason for c in chunks if c.finish_reason] == ["tool_calls"]
    assert not any(c.delta.content for c in chunks)


def test_round_trip_call_result_answer(client):
    messages = list(WEATHER_QUESTION)
    call_message = ask(client, messages, tool_choice={"type": "function", "function": {"name": "get_weather"}},
                       temperature=0).choices[0].message
    assert_valid_calls(call_message.tool_calls, {"get_weather"})
    messages.append(call_message.model_dump(exclude_none=True))
    result = {"temperature": 18, "unit": "celsius", "sky": "sunny"}
    messages.append({"role": "tool", "tool_call_id": call_message.tool_calls[0].id, "content": json.dumps(result)})
    answer = ask(client, messages, temperature=0).choices[0]
    assert answer.finish_reason == "stop" and answer.message.tool_calls is None
    assert "18" in answer.message.content  # the model read the tool's result
