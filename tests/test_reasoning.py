"""Reasoning parsers: thinking split from the answer, whole and streamed in any pieces;
and through a real server (a tiny random Qwen3 whose sampler follows a script):
reasoning_content, tool calls found in the answer only, constraints starting after
the thinking, and chat_template_kwargs reaching the template."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import openai
import pytest
from server_process import serve
from tiny_models import make_tiny_checkpoint

from nanovllm_core.reasoning import DeepSeekR1ReasoningParser, Qwen3ReasoningParser

QWEN3 = Qwen3ReasoningParser()
R1 = DeepSeekR1ReasoningParser()
# (parser, output, prompt, reasoning, answer)
CASES = [
    (QWEN3, "<think>\nWhat is it?\n</think>\n\nParis.", "", "\nWhat is it?\n", "Paris."),
    (QWEN3, "Paris.", "", None, "Paris."),
    (QWEN3, "  <think>a < b</think>yes", "", "a < b", "yes"),
    (QWEN3, "<think>cut short by max_tokens", "", "cut short by max_tokens", ""),
    (QWEN3, "thinking</think>answer", "<|im_start|>assistant\n<think>\n", "thinking", "answer"),
    (QWEN3, "answer <think>", "x<think>\n\n</think>\n\n", None, "answer <think>"),
    (R1, "thinking\n</think>\n\nanswer", "", "thinking\n", "answer"),
    (R1, "<think>thinking</think>answer", "", "thinking", "answer"),
    (R1, "no end tag", "", "no end tag", ""),
    (R1, "answer", "<think>\n\n</think>", None, "answer"),
]


@pytest.mark.parametrize("parser,output,prompt,reasoning,answer", CASES)
def test_split_whole_and_in_any_pieces(parser, output, prompt, reasoning, answer):
    assert parser.split(output, prompt) == (reasoning, answer)
    rng = random.Random(0)
    for _ in range(50):
        cuts = sorted(rng.sample(range(1, len(output)), min(len(output) - 1, rng.randint(1, 12))))
        stream = parser.stream(prompt)
        pieces = [stream.feed(output[a:b]) for a, b in zip([0, *cuts], [*cuts, len(output)])] + [stream.finish()]
        assert "".join(r for r, _ in pieces) == (reasoning or "")
        assert "".join(a for _, a in pieces) == answer


TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}{% endif %}"
)
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {
    "type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
# seed -> what the scripted sampler writes (then the end of text, or, past the script, the grammar's choice)
SCRIPTS = {
    1: ("<think>\nThe capital of France.\n</think>\n\nParis.", True),
    2: ("Paris.", True),
    3: ('<think>I could write <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
        "</think>\n\nNo tool is needed.", True),
    4: ("<think>Yes or no?</think>", False),
}


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_tokenizer):
    tokenizer = copy.deepcopy(smollm2_tokenizer)
    tokenizer.add_tokens(["<think>", "</think>"])  # Qwen3's: single tokens, kept in decoded text
    directory = make_tiny_checkpoint("Qwen3ForCausalLM", tmp_path_factory.mktemp("qwen3-thinking"), tokenizer)
    (directory / "template.jinja").write_text(TEMPLATE)
    scripts = {seed: tokenizer.encode(text, add_special_tokens=False) + ([tokenizer.eos_token_id] if ends else [])
               for seed, (text, ends) in SCRIPTS.items()}
    scripts_file = directory / "scripts.json"
    scripts_file.write_text(json.dumps(scripts))
    yield from serve(
        tmp_path_factory, "reasoning", "--model", str(directory), "--dtype", "float32", "--sampler", "scripted",
        "--chat-template", str(directory / "template.jinja"), "--reasoning-parser", "qwen3", "--served-model-name", "m",
        "--tool-call-parser", "hermes", entry=(str(Path(__file__).parent / "scripted_server.py"),),
        env={"SCRIPTS_FILE": str(scripts_file)},
    )


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=120)


MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def test_reasoning_content_whole_and_streamed(client):
    message = client.chat.completions.create(model="m", messages=MESSAGES, seed=1, max_tokens=64).choices[0].message
    assert message.content == "Paris."
    assert message.reasoning_content == "\nThe capital of France.\n" == message.reasoning
    reasoning = content = ""
    for chunk in client.chat.completions.create(model="m", messages=MESSAGES, seed=1, max_tokens=64, stream=True):
        delta = chunk.choices[0].delta if chunk.choices else None
        reasoning += getattr(delta, "reasoning_content", None) or ""
        content += (delta.content or "") if delta else ""
    assert (reasoning, content) == ("\nThe capital of France.\n", "Paris.")


def test_template_kwargs_turn_thinking_off(client):
    response = client.chat.completions.create(
        model="m", messages=MESSAGES, seed=2, max_tokens=64, extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    message = response.choices[0].message
    assert message.content == "Paris." and message.reasoning_content is None
    assert response.usage.prompt_tokens > 0


def test_tool_calls_in_the_thinking_are_not_calls(client):
    response = client.chat.completions.create(model="m", messages=MESSAGES, seed=3, max_tokens=96, tools=[TOOL])
    choice = response.choices[0]
    assert choice.message.tool_calls is None and choice.finish_reason == "stop"
    assert choice.message.content == "No tool is needed."
    assert "<tool_call>" in choice.message.reasoning_content


def test_constraints_start_after_the_thinking(client):
    # the grammar would forbid "<think>"; the scripted sampler fails if it is applied during the thinking
    response = client.chat.completions.create(
        model="m", messages=MESSAGES, seed=4, max_tokens=64, extra_body={"guided_choice": ["yes", "no"]})
    message = response.choices[0].message
    assert message.reasoning_content == "Yes or no?"
    assert message.content in ("yes", "no")
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    response = client.chat.completions.create(
        model="m", messages=MESSAGES, seed=4, max_tokens=64,
        response_format={"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}})
    assert isinstance(json.loads(response.choices[0].message.content)["ok"], bool)


def test_responses_api_returns_a_reasoning_item(client):
    response = client.responses.create(model="m", input=MESSAGES[0]["content"], max_output_tokens=64,
                                       extra_body={"seed": 1})
    reasoning, message = response.output
    assert reasoning.type == "reasoning" and reasoning.content[0].text == "\nThe capital of France.\n"
    assert message.type == "message" and response.output_text == "Paris."
    assert 0 < response.usage.output_tokens_details.reasoning_tokens < response.usage.output_tokens
    with client.responses.stream(model="m", input=MESSAGES[0]["content"], max_output_tokens=64,
                                       extra_body={"seed": 1}) as stream:
        deltas = [e.delta for e in stream if e.type == "response.reasoning_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == reasoning.content[0].text and final.output_text == "Paris."
