"""Structured outputs through a real server: response_format constrains
decoding so that even SmolLM2-135M answers in valid form."""

import asyncio
import json
import re

import httpx
import jsonschema
import openai
import pytest

MODEL = "SmolLM2-135M-Instruct"

SCHEMAS = {
    "nested_object": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 20},
            "country": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 20},
                                                         "code": {"type": "string", "maxLength": 3}},
                        "required": ["name", "code"], "additionalProperties": False},
        },
        "required": ["city", "country"],
        "additionalProperties": False,
    },
    "array_of_enums": {
        "type": "object",
        "properties": {"colors": {"type": "array", "items": {"enum": ["red", "green", "blue"]},
                                  "minItems": 1, "maxItems": 3}},
        "required": ["colors"],
        "additionalProperties": False,
    },
    "numbers_and_booleans": {
        "type": "object",
        "properties": {"population": {"type": "integer", "minimum": 0, "maximum": 99999999},
                       "capital": {"type": "boolean"}, "rating": {"enum": [1, 2, 3]}},
        "required": ["population", "capital", "rating"],
        "additionalProperties": False,
    },
}


@pytest.fixture(scope="module")
def server(structured_server):
    return structured_server


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")


def ask(name: str) -> list[dict]:
    return [{"role": "user", "content": f"Describe Paris as JSON ({name.replace('_', ' ')})."}]


def schema_format(name: str) -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": SCHEMAS[name], "strict": True}}


@pytest.mark.parametrize("name", SCHEMAS)
@pytest.mark.parametrize("stream", [False, True])
def test_json_schema_output_validates(client, name, stream):
    kwargs = dict(model=MODEL, messages=ask(name), response_format=schema_format(name), max_tokens=120, temperature=0)
    if stream:
        chunks = list(client.chat.completions.create(**kwargs, stream=True))
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    else:
        choice = client.chat.completions.create(**kwargs).choices[0]
        text, finish = choice.message.content, [choice.finish_reason]
    assert finish == ["stop"], text  # the grammar ended the answer, not max_tokens
    jsonschema.validate(json.loads(text), SCHEMAS[name])


def test_sampled_output_validates_too(client):
    name = "nested_object"
    for seed in range(3):
        text = client.chat.completions.create(model=MODEL, messages=ask(name), response_format=schema_format(name),
                                              max_tokens=120, temperature=1.0, seed=seed).choices[0].message.content
        jsonschema.validate(json.loads(text), SCHEMAS[name])


def test_json_object_gives_a_json_object(client):
    ask_for = 'Answer with a JSON object like {"animal": "cat", "legs": 4} for a dog.'
    chat = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": ask_for}],
                                          response_format={"type": "json_object"}, max_tokens=300, temperature=0)
    completion = client.completions.create(model=MODEL, prompt=ask_for + "\n", max_tokens=300, temperature=0,
                                           extra_body={"response_format": {"type": "json_object"}})
    for choice, text in ((chat.choices[0], chat.choices[0].message.content), (completion.choices[0], completion.choices[0].text)):
        assert choice.finish_reason == "stop", text
        assert isinstance(json.loads(text), dict), text


def test_constrained_and_free_requests_share_a_batch(server):
    free = [{"messages": [{"role": "user", "content": f"Write one sentence about the number {i}."}], "max_tokens": 24}
            for i in range(4)]
    constrained = [{"messages": ask(name), "max_tokens": 120, "response_format": schema_format(name)} for name in SCHEMAS]
    constrained.append({"messages": ask("nested_object"), "max_tokens": 120, "tool_choice": "required",
                        "tools": [{"type": "function", "function": {"name": "describe", "parameters": SCHEMAS["nested_object"]}}]})

    async def answers(requests):
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused")
        responses = await asyncio.gather(*(client.chat.completions.create(model=MODEL, temperature=0, **r)
                                           for r in requests))
        return [r.choices[0].message.content or r.choices[0].message.tool_calls[0].function.arguments for r in responses]

    alone = [asyncio.run(answers([request]))[0] for request in free]
    mixed = asyncio.run(answers(free + constrained))
    assert mixed[: len(free)] == alone  # the masks touched only the constrained rows
    for name, text in zip([*SCHEMAS, "nested_object"], mixed[len(free):]):
        jsonschema.validate(json.loads(text), SCHEMAS[name])


ENUM_FORMAT = {"type": "json_schema", "json_schema": {"name": "pick", "strict": True, "schema": {
    "type": "object", "properties": {"pick": {"enum": ["yes", "no"]}}, "required": ["pick"],
    "additionalProperties": False}}}


@pytest.mark.parametrize("stream", [False, True])
def test_logprobs_of_constrained_output_are_finite(client, stream):
    """Regression: tokens the grammar masked had logprob -inf, a 500 without streaming
    (JSON has no -inf) and null in streams; they report -9999.0 now."""
    kwargs = dict(model=MODEL, messages=ask("pick"), response_format=ENUM_FORMAT, max_tokens=20, temperature=0)
    chat = client.chat.completions.create(**kwargs, logprobs=True, top_logprobs=5, stream=stream)
    if stream:
        entries = [t for c in chat if c.choices and c.choices[0].logprobs for t in c.choices[0].logprobs.content or []]
    else:
        entries = chat.choices[0].logprobs.content
    values = [t.logprob for t in entries] + [top.logprob for t in entries for top in t.top_logprobs]
    completion = client.completions.create(model=MODEL, prompt="Pick yes or no as JSON:", max_tokens=20, temperature=0,
                                           logprobs=5, stream=stream, extra_body={"response_format": ENUM_FORMAT})
    if stream:
        pieces = [c.choices[0].logprobs for c in completion if c.choices and c.choices[0].logprobs]
        values += [v for p in pieces for v in p.token_logprobs] + [v for p in pieces for top in p.top_logprobs
                                                                   for v in top.values()]
    else:
        scored = completion.choices[0].logprobs
        values += scored.token_logprobs + [v for top in scored.top_logprobs for v in top.values()]
    assert entries and values
    assert all(v is not None and -9999.0 <= v <= 0 for v in values), values
    assert -9999.0 in values  # the masked alternatives are there, at the floor


def test_min_tokens_lets_a_complete_grammar_end(smollm2_llm):
    """Regression: min_tokens banned the end while the grammar allowed only the end,
    leaving no token to sample (a NaN row)."""
    from nanovllm_core import SamplingParams
    from nanovllm_core.grammar import GuidedDecoding

    schema = json.dumps({"type": "object", "properties": {}, "additionalProperties": False})
    for temperature in (0.0, 1.0):
        params = SamplingParams(temperature=temperature, max_tokens=30, min_tokens=20, seed=1,
                                guided=GuidedDecoding("json_schema", schema))
        result = smollm2_llm.generate(["Give me an empty JSON object:"], params, use_tqdm=False)[0]
        assert result["text"] == "{}" and result["finish_reason"] == "stop", result


GUIDED = [  # (extra body, check of the answer): vLLM's guided-decoding fields
    ({"guided_choice": ["yes", "no", "maybe"]}, lambda text: text in ("yes", "no", "maybe")),
    ({"guided_regex": r"[0-9]{3}-[0-9]{4}"}, lambda text: re.fullmatch(r"[0-9]{3}-[0-9]{4}", text)),
    ({"guided_grammar": 'root ::= "Paris" | "Lyon" | "Nice"'}, lambda text: text in ("Paris", "Lyon", "Nice")),
    ({"guided_json": SCHEMAS["array_of_enums"]},
     lambda text: jsonschema.validate(json.loads(text), SCHEMAS["array_of_enums"]) is None),
    ({"structured_outputs": {"choice": ["red", "green"]}}, lambda text: text in ("red", "green")),
    ({"structured_outputs": {"json": json.dumps(SCHEMAS["numbers_and_booleans"])}},
     lambda text: jsonschema.validate(json.loads(text), SCHEMAS["numbers_and_booleans"]) is None),
]


@pytest.mark.parametrize("extra, check", GUIDED, ids=[next(iter(extra)) + "-" + str(i) for i, (extra, _) in
                                                      enumerate(GUIDED)])
def test_vllm_guided_decoding_fields(client, extra, check):
    for temperature in (0, 1.0):
        response = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Answer the question about Paris."}], max_tokens=60,
            temperature=temperature, seed=3, extra_body=extra)
        text = response.choices[0].message.content
        assert response.choices[0].finish_reason == "stop" and check(text), text


def test_two_constraints_a_bad_schema_and_an_oversize_regex_are_400s(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "guided_choice": ["a"],
            "response_format": {"type": "json_object"}}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "guided_choice", response.text
    bad = {**body, "response_format": None, "guided_choice": None, "guided_json": '{"type": "nope"}'}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=bad)
    assert response.status_code == 400 and response.json()["error"]["param"] == "guided_json", response.text
    not_json = {**bad, "guided_json": '{not json'}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=not_json)
    assert response.status_code == 400 and response.json()["error"]["param"] == "guided_json", response.text
    assert "the JSON schema is not JSON" in response.json()["error"]["message"]
    huge = {**body, "response_format": None, "guided_choice": None, "guided_regex": "a" * 65537}
    response = httpx.post(f"{server.url}/v1/chat/completions", json=huge)
    assert response.status_code == 400 and response.json()["error"]["param"] == "guided_regex", response.text


WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20}}, "required": ["city"],
           "additionalProperties": False}
CALL = re.compile(r"<function=get_weather>(.*?)</function>", re.S)


@pytest.mark.parametrize("form", ["format", "structures"])
def test_structural_tag_response_format(client, form):
    """vLLM's structural_tag: xgrammar's format object (here a call that must come), or the
    older structures and triggers (a call that may come, and is valid if it does)."""
    tag = {"begin": "<function=get_weather>", "end": "</function>"}
    if form == "format":
        response_format = {"type": "structural_tag", "format": {
            "type": "triggered_tags", "triggers": ["<function="], "at_least_one": True, "stop_after_first": True,
            "tags": [{"type": "tag", **tag, "content": {"type": "json_schema", "json_schema": WEATHER}}]}}
    else:
        response_format = {"type": "structural_tag", "triggers": ["<function="],
                           "structures": [{**tag, "schema": WEATHER}]}
    prompt = "Call <function=get_weather> with a JSON object naming a city, then </function>."
    for temperature in (0, 1.0):
        response = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=80, temperature=temperature,
            seed=5, response_format=response_format)
        text = response.choices[0].message.content
        calls = CALL.findall(text)
        if form == "format":
            assert len(calls) == 1 and response.choices[0].finish_reason == "stop", text
        assert "<function=get_weather>" not in CALL.sub("", text), text  # every call that opens is closed
        for arguments in calls:
            jsonschema.validate(json.loads(arguments), WEATHER)


def test_a_structural_tag_needs_its_parts(server):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    for response_format in ({"type": "structural_tag"},
                            {"type": "structural_tag", "structures": [{"begin": "<a>", "schema": {}, "end": "</a>"}]},
                            {"type": "structural_tag", "triggers": ["<"], "structures": [
                                {"begin": "<a>", "schema": {"type": "nope"}, "end": "</a>"}]}):
        response = httpx.post(f"{server.url}/v1/chat/completions", json={**body, "response_format": response_format})
        assert response.status_code == 400 and response.json()["error"]["param"] == "response_format", response.text
