"""The Responses API (stateless) through a real server and the openai client:
the same answer as chat, streamed as typed events, function calls both ways,
text formats, and what a stateless server refuses."""

from __future__ import annotations

import json

import httpx
import jsonschema
import openai
import pytest
from server_process import assert_openai_error

MODEL = "SmolLM2-135M-Instruct"
QUESTION = "What is the capital of France?"
WEATHER = {"type": "function", "name": "get_weather", "description": "The weather in a city.",
           "parameters": {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}},
                          "required": ["city"], "additionalProperties": False}}


@pytest.fixture(scope="module")
def client(structured_server):
    return openai.OpenAI(base_url=f"{structured_server.url}/v1", api_key="unused", timeout=120)


def test_the_same_answer_as_chat(client):
    response = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=24, temperature=0)
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": QUESTION}],
                                          max_tokens=24, temperature=0)
    assert response.output_text == chat.choices[0].message.content
    assert response.usage.input_tokens == chat.usage.prompt_tokens
    assert response.usage.output_tokens == chat.usage.completion_tokens
    assert response.status == ("completed" if chat.choices[0].finish_reason == "stop" else "incomplete")
    [message] = response.output
    assert message.type == "message" and message.role == "assistant"


def test_streamed_as_typed_events(client):
    whole = client.responses.create(model=MODEL, input=QUESTION, max_output_tokens=24, temperature=0)
    with client.responses.stream(model=MODEL, input=QUESTION, max_output_tokens=24, temperature=0) as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert final.output_text == whole.output_text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    types = [e.type for e in events]
    assert types[:4] == ["response.created", "response.in_progress", "response.output_item.added",
                         "response.content_part.added"]
    assert types[-4:] == ["response.output_text.done", "response.content_part.done", "response.output_item.done",
                          "response.completed"]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == whole.output_text


@pytest.mark.parametrize("stream", [False, True])
def test_function_calls_and_their_outputs(client, stream):
    asked = dict(model=MODEL, input="What is the weather in Paris?", tools=[WEATHER], tool_choice="required",
                 max_output_tokens=60, temperature=0)
    if stream:
        with client.responses.stream(**asked) as events:
            kinds = [e.type for e in events]
            response = events.get_final_response()
        assert "response.function_call_arguments.delta" in kinds and "response.function_call_arguments.done" in kinds
    else:
        response = client.responses.create(**asked)
    calls = [item for item in response.output if item.type == "function_call"]
    assert calls and all(call.name == "get_weather" for call in calls)
    jsonschema.validate(json.loads(calls[0].arguments), WEATHER["parameters"])
    follow_up = client.responses.create(
        model=MODEL, tools=[WEATHER], max_output_tokens=30, temperature=0,
        input=[{"role": "user", "content": "What is the weather in Paris?"},
               {"type": "function_call", "call_id": calls[0].call_id, "name": "get_weather",
                "arguments": calls[0].arguments},
               {"type": "function_call_output", "call_id": calls[0].call_id, "output": "Sunny, 24 C"}])
    assert follow_up.output and follow_up.usage.input_tokens > response.usage.input_tokens


def test_text_format_json_schema(client):
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
              "additionalProperties": False}
    response = client.responses.create(
        model=MODEL, input="Name the capital of France as JSON.", max_output_tokens=40, temperature=0,
        text={"format": {"type": "json_schema", "name": "city", "schema": schema, "strict": True}})
    jsonschema.validate(json.loads(response.output_text), schema)


def test_cut_short_is_incomplete(client):
    response = client.responses.create(model=MODEL, input="Tell me a long story.", max_output_tokens=3)
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.usage.output_tokens == 3 and response.output[0].status == "incomplete"


def test_what_a_stateless_server_refuses(structured_server):
    url = f"{structured_server.url}/v1/responses"
    previous = httpx.post(url, json={"model": MODEL, "input": "Hi", "previous_response_id": "resp_123"})
    assert_openai_error(previous, 400, "invalid_request_error", param="previous_response_id")
    store = httpx.post(url, json={"model": MODEL, "input": "Hi", "store": True})
    assert_openai_error(store, 400, "invalid_request_error", param="store")
    image = httpx.post(url, json={"model": MODEL, "input": [{"role": "user", "content": [
        {"type": "input_image", "image_url": "http://x/y.png"}]}]})
    assert_openai_error(image, 400, "invalid_request_error")
