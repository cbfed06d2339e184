"""The OpenAI-compatible server, for real: uvicorn on a free port, SmolLM2,
driven by the official openai client and by httpx."""

import asyncio
import json
import socket
import time

import httpx
import openai
import pytest

from prometheus_client.parser import text_string_to_metric_families

from server_process import FLOAT32_UNQUANTIZED, assert_openai_error, metric, serve

MODEL = "SmolLM2-135M-Instruct"
HUNG_S = 120  # long enough to mean "hung", not "slow"
READ_TIMEOUT_S = 3
FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve(tmp_path_factory, "server", *FLOAT32_UNQUANTIZED, "--max-num-seqs", "32",
                     "--client-read-timeout", str(READ_TIMEOUT_S))


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")


@pytest.fixture
def aclient(server):
    return openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused")


# endpoints


def test_health_version_models_docs(server, client):
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert httpx.get(f"{server.url}/version").json()["version"]
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL
    assert "swagger" in httpx.get(f"{server.url}/docs").text.lower()
    paths = httpx.get(f"{server.url}/openapi.json").json()["paths"]
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/tokenize", "/detokenize"} <= set(paths)


def test_the_embedded_model_samples_as_its_card_advises(server, client):
    """A request that leaves temperature and top_p out gets the card's 0.2 and 0.9, which
    /v1/models shows; before, it got OpenAI's 1.0 and 1.0."""
    assert httpx.get(f"{server.url}/v1/models").json()["data"][0]["sampling_defaults"] == {
        "temperature": 0.2, "top_p": 0.9}
    base = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me about cats."}], max_tokens=24)
    for seed in (1, 2):
        left_out = client.chat.completions.create(seed=seed, **base).choices[0].message.content
        assert left_out == client.chat.completions.create(seed=seed, temperature=0.2, top_p=0.9,
                                                          **base).choices[0].message.content


def test_tokenize_and_detokenize_round_trip(server):
    tokens = httpx.post(f"{server.url}/tokenize", json={"prompt": "Hello world"}).json()
    assert tokens["count"] == len(tokens["tokens"]) == 2 and tokens["max_model_len"] == 4096
    text = httpx.post(f"{server.url}/detokenize", json={"tokens": tokens["tokens"]}).json()["prompt"]
    assert text == "Hello world"
    chat = httpx.post(f"{server.url}/tokenize", json={"messages": FRANCE}).json()
    assert chat["count"] == 37  # the model's own template, with its default system prompt


def test_a_generative_model_refuses_embeddings(client):
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="SmolLM2-135M-Instruct", input="hello")
    assert refused.value.code == "unsupported_task" and "/v1/chat/completions" in refused.value.message


def test_prompt_logprobs_on_both_endpoints(server, client, smollm2_tokenizer):
    prompt = "The capital of France is"
    ids = smollm2_tokenizer(prompt)["input_ids"]
    completion = client.completions.create(model="SmolLM2-135M-Instruct", prompt=prompt, max_tokens=1,
                                           extra_body={"prompt_logprobs": 2})
    scored = completion.choices[0].model_extra["prompt_logprobs"]
    assert len(scored) == len(ids) and scored[0] is None
    for token_id, entries in zip(ids[1:], scored[1:]):
        entry = entries[str(token_id)]  # the prompt's own token is always there, with its rank
        assert entry["logprob"] <= 0 and entry["rank"] >= 1 and entry["decoded_token"] == smollm2_tokenizer.decode([token_id])
        assert {e["rank"] for e in entries.values()} >= {1, 2}
    chat = client.chat.completions.create(model="SmolLM2-135M-Instruct", messages=FRANCE, max_tokens=1,
                                          extra_body={"prompt_logprobs": 0})
    assert len(chat.model_extra["prompt_logprobs"]) == chat.usage.prompt_tokens
    streamed = httpx.post(f"{server.url}/v1/completions", json={"prompt": prompt, "prompt_logprobs": 1, "stream": True})
    assert_openai_error(streamed, 400, "invalid_request_error", param="prompt_logprobs")


def test_metrics_parse_and_count(server, client):
    before = metric(server, "nanovllm_generation_tokens_total")
    response = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0)
    assert response.usage.completion_tokens > 1
    assert metric(server, "nanovllm_generation_tokens_total") == before + response.usage.completion_tokens
    assert metric(server, "nanovllm_time_to_first_token_seconds_count") >= 1
    assert metric(server, "nanovllm_kv_cache_usage_ratio") == 0
    names = {f.name for f in text_string_to_metric_families(httpx.get(f"{server.url}/metrics").text)}
    assert {"nanovllm_num_requests_running", "nanovllm_num_requests_waiting", "nanovllm_prefix_cache_hit_rate",
            "nanovllm_prompt_tokens", "nanovllm_time_per_output_token_seconds", "nanovllm_e2e_request_latency_seconds"} <= names


# chat


def test_chat_uses_the_models_template(client):
    reply = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0)
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "The capital of France is Paris."
    assert choice.finish_reason == "stop"
    assert reply.usage.prompt_tokens == 37 and reply.usage.completion_tokens == 8


def test_chat_content_parts_and_system_message(client):
    parts = [{"role": "system", "content": "You are terse."},
             {"role": "user", "content": [{"type": "text", "text": "What is the capital "}, {"type": "text", "text": "of France?"}]}]
    text = client.chat.completions.create(model=MODEL, messages=parts, temperature=0, max_tokens=16).choices[0].message.content
    assert "Paris" in text


def test_streaming_is_real_and_equals_non_streaming(client):
    messages = [{"role": "user", "content": "Write a short poem about rain."}]
    full = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=48)
    stream = client.chat.completions.create(
        model=MODEL, messages=messages, temperature=0, max_tokens=48, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant" and not chunks[0].choices[0].delta.content
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(deltas) > 20  # token by token, not one blob
    assert "".join(deltas) == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 48


def test_tokens_arrive_while_generation_runs(server):
    """Real streaming: content reaches the client while the engine is still generating."""
    body = {"messages": FRANCE, "temperature": 0, "max_tokens": 2000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=HUNG_S) as response:
        contents = (line for line in response.iter_lines() if '"content":"' in line and '"content":""' not in line)
        next(contents), next(contents)
        running = metric(server, "nanovllm_num_requests_running")
    assert running == 1  # 2,000 tokens asked for: far from done when the second piece arrived


def test_n_choices_seed_and_logprobs(client):
    kwargs = dict(model=MODEL, messages=[{"role": "user", "content": "Name an animal."}], max_tokens=12, temperature=1.0)
    first = client.chat.completions.create(n=3, seed=7, **kwargs)
    again = client.chat.completions.create(n=3, seed=7, **kwargs)
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert [c.message.content for c in first.choices] == [c.message.content for c in again.choices]
    assert len({c.message.content for c in first.choices}) > 1
    with_logprobs = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, logprobs=True, top_logprobs=3)
    content = with_logprobs.choices[0].logprobs.content
    assert len(content) == with_logprobs.usage.completion_tokens
    assert "".join(t.token for t in content[:-1]) == "The capital of France is Paris."
    assert all(len(t.top_logprobs) == 3 and t.top_logprobs[0].token == t.token and t.logprob <= 0 for t in content)


def test_stop_strings_never_leak(client):
    for stream in (False, True):
        kwargs = dict(model=MODEL, messages=FRANCE, temperature=0, stop=[" Par", "zzz"])
        if stream:
            chunks = list(client.chat.completions.create(stream=True, **kwargs))
            text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
        else:
            reply = client.chat.completions.create(**kwargs)
            text, reasons = reply.choices[0].message.content, [reply.choices[0].finish_reason]
        assert text == "The capital of France is"
        assert reasons == ["stop"]


def test_sampling_parameters_change_the_output(client):
    base = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me about cats."}], max_tokens=24)
    greedy = client.chat.completions.create(temperature=0, **base).choices[0].message.content
    assert client.chat.completions.create(temperature=1.0, seed=3, extra_body={"top_k": 1}, **base).choices[0].message.content == greedy
    penalised = client.chat.completions.create(temperature=0, frequency_penalty=2.0, **base).choices[0].message.content
    assert penalised != greedy
    first_token = client.chat.completions.create(
        temperature=0, logprobs=True, max_tokens=1, model=MODEL, messages=base["messages"]
    ).choices[0].logprobs.content[0].token
    banned = httpx.post(f"{client.base_url}tokenize".replace("/v1", ""), json={"prompt": first_token, "add_special_tokens": False}).json()["tokens"][0]
    biased = client.chat.completions.create(temperature=0, logit_bias={str(banned): -100}, **base).choices[0].message.content
    assert not biased.startswith(first_token)
    short = client.chat.completions.create(temperature=0, max_completion_tokens=3, **base)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 3
    long = client.chat.completions.create(temperature=0, extra_body={"min_tokens": 30, "ignore_eos": False}, model=MODEL, messages=FRANCE)
    assert long.usage.completion_tokens >= 30


def test_remaining_sampling_parameters(client):
    base = dict(model=MODEL, messages=[{"role": "user", "content": "Tell me about dogs."}], max_tokens=16)
    greedy = client.chat.completions.create(temperature=0, **base).choices[0].message.content
    # truncation so tight that only the best token survives makes hot sampling greedy
    for extra in ({"top_p": 0.001}, {"extra_body": {"min_p": 1.0}}):
        assert client.chat.completions.create(temperature=1.5, seed=5, **extra, **base).choices[0].message.content == greedy
    assert client.chat.completions.create(temperature=1.5, seed=5, **base).choices[0].message.content != greedy
    repeat = dict(model=MODEL, prompt="The cat sat. The cat sat. The cat sat.", max_tokens=12, temperature=0)
    repetitive = client.completions.create(**repeat).choices[0].text
    assert repetitive.count("cat sat") == 3
    for penalty in ({"presence_penalty": 2.0}, {"extra_body": {"repetition_penalty": 2.0}}):
        assert client.completions.create(**penalty, **repeat).choices[0].text.count("cat sat") < 3


def test_stop_token_ids_and_special_tokens(client, server):
    is_id = httpx.post(f"{server.url}/tokenize", json={"prompt": " is", "add_special_tokens": False}).json()["tokens"][0]
    stopped = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, extra_body={"stop_token_ids": [is_id]})
    assert stopped.choices[0].message.content == "The capital of France"
    assert stopped.choices[0].finish_reason == "stop" and stopped.choices[0].model_extra["stop_reason"] == is_id
    past_eos = dict(model=MODEL, messages=FRANCE, temperature=0, max_tokens=12)
    hidden = client.chat.completions.create(**past_eos, extra_body={"ignore_eos": True})
    shown = client.chat.completions.create(**past_eos, extra_body={"ignore_eos": True, "skip_special_tokens": False})
    assert hidden.usage.completion_tokens == 12 and "<|im_end|>" not in hidden.choices[0].message.content
    assert shown.choices[0].message.content.startswith("The capital of France is Paris.<|im_end|>")


def test_cors_is_off_by_default(server):
    preflight = httpx.options(f"{server.url}/v1/chat/completions",
                              headers={"Origin": "https://example.com", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers


def test_example_client_runs_against_the_server(server):
    import subprocess
    import sys
    from pathlib import Path

    example = Path(__file__).parents[1] / "examples" / "example_api_server.py"
    # the original server README's examples, here naming a served model (nanovllm-api answers others with 404)
    out = subprocess.run([sys.executable, str(example), "--base-url", f"{server.url}/v1", "--model", MODEL],
                         capture_output=True, text=True, timeout=HUNG_S, check=True).stdout
    assert out.startswith("chat: ") and "\ncompletion: " in out and out.split("\nstreaming: ", 1)[1].strip()


# completions


def test_completion_prompt_forms(client, server):
    text = client.completions.create(model=MODEL, prompt="The capital of France is", max_tokens=5, temperature=0)
    assert text.choices[0].text.strip().startswith("Paris")
    ids = httpx.post(f"{server.url}/tokenize", json={"prompt": "The capital of France is"}).json()["tokens"]
    by_ids = client.completions.create(model=MODEL, prompt=ids, max_tokens=5, temperature=0)
    assert by_ids.choices[0].text == text.choices[0].text
    many = client.completions.create(model=MODEL, prompt=["One, two,", "Red, green,"], max_tokens=4, temperature=0, n=2)
    assert [c.index for c in many.choices] == [0, 1, 2, 3]
    assert many.choices[0].text == many.choices[1].text != many.choices[2].text
    lists = client.completions.create(model=MODEL, prompt=[ids, ids[:3]], max_tokens=4, temperature=0)
    assert len(lists.choices) == 2 and lists.choices[0].text == text.choices[0].text[: len(lists.choices[0].text)]
    assert lists.usage.prompt_tokens == len(ids) + 3


def test_completion_echo_logprobs_and_stream(client):
    echoed = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0, echo=True)
    assert echoed.choices[0].text.startswith("Once upon a time") and len(echoed.choices[0].text) > len("Once upon a time")
    scored = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0, logprobs=2)
    logprobs = scored.choices[0].logprobs
    assert len(logprobs.tokens) == len(logprobs.token_logprobs) == len(logprobs.top_logprobs) == 6
    assert "".join(logprobs.tokens) == scored.choices[0].text
    assert all(len(top) <= 2 for top in logprobs.top_logprobs) and logprobs.text_offset[0] == 0
    streamed = client.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=6, temperature=0, stream=True)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == scored.choices[0].text


# concurrency and disconnects


def test_concurrent_requests_match_sequential_and_run_batched(server, aclient):
    asyncio.run(_concurrent_vs_sequential(server, aclient))


async def _concurrent_vs_sequential(server, aclient):
    prompts = [f"Count from {i} to {i + 10}, one number per line." for i in range(8)]

    async def ask(p):
        reply = await aclient.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": p}], temperature=0, max_tokens=24, extra_body={"ignore_eos": True}
        )
        return reply.choices[0].message.content

    sequential = [await ask(p) for p in prompts]
    batch_sizes = []

    async def watch_batch():
        while True:
            batch_sizes.append(await asyncio.to_thread(metric, server, "nanovllm_num_requests_running"))
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch_batch())
    concurrent = await asyncio.gather(*(ask(p) for p in prompts))
    watcher.cancel()
    assert list(concurrent) == sequential
    assert max(batch_sizes) >= len(prompts) // 2  # continuous batching ran them together


def test_client_disconnect_frees_its_slot(server, client):
    body = {"messages": FRANCE, "max_tokens": 3000, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as response:
        lines = response.iter_lines()
        for _ in range(5):
            next(lines)
        assert metric(server, "nanovllm_num_requests_running") == 1
    deadline = time.monotonic() + HUNG_S
    while metric(server, "nanovllm_num_requests_running") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(server, "nanovllm_num_requests_running") == 0
    assert metric(server, "nanovllm_kv_cache_usage_ratio") == 0
    assert client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0).choices[0].message.content


def test_a_client_that_stops_reading_loses_its_slot(server):
    """Regression: a client that kept the connection open but stopped reading kept its
    slot (and every output piled up for it, each holding the full text so far)."""
    # 16 choices with 20 alternatives a token fill the kernel's socket buffers (up to 4 MB) in seconds
    body = json.dumps({"messages": FRANCE, "max_tokens": 3000, "n": 16, "ignore_eos": True, "stream": True,
                       "logprobs": True, "top_logprobs": 20}).encode()
    silent = socket.socket()
    silent.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    silent.connect(("127.0.0.1", server.port))
    silent.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                   b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    try:
        deadline = time.monotonic() + HUNG_S
        while metric(server, "nanovllm_num_requests_running") == 0 and time.monotonic() < deadline:
            time.sleep(0.1)  # admitted
        while metric(server, "nanovllm_num_requests_running") and time.monotonic() < deadline:
            time.sleep(0.2)
        assert metric(server, "nanovllm_num_requests_running") == 0  # aborted, the connection still open
    finally:
        silent.close()
    assert metric(server, "nanovllm_kv_cache_usage_ratio") == 0  # and its KV blocks


def test_non_streaming_disconnect_aborts_too(server):
    body = {"messages": FRANCE, "max_tokens": 3000, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=1.5)
    deadline = time.monotonic() + HUNG_S
    while metric(server, "nanovllm_num_requests_running") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert metric(server, "nanovllm_num_requests_running") == 0


# errors


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"a": {"type": "integer"}}}}}


def post(server, path, body=None, **kwargs):
    return httpx.post(f"{server.url}{path}", json=body, timeout=HUNG_S, **kwargs)


@pytest.mark.parametrize(
    "body,param",
    [
        ({"messages": FRANCE, "temperature": -1}, "temperature"),
        ({"messages": FRANCE, "temperature": "hot"}, "temperature"),
        ({"messages": FRANCE, "n": 0}, "n"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
        ({"messages": FRANCE, "top_logprobs": 2}, "top_logprobs"),
        ({"messages": FRANCE, "logit_bias": {"abc": 1}}, "logit_bias"),
        ({"messages": FRANCE, "tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "g"}}},
         "tool_choice"),
        ({"messages": FRANCE, "tool_choice": "required"}, "tool_choice"),
        ({"messages": FRANCE, "tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
        ({"messages": FRANCE, "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "nope"}}}]},
         "tools"),
        ({"messages": FRANCE, "tools": [TOOL, TOOL]}, "tools"),
        ({"messages": FRANCE, "tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools"),
        ({"messages": FRANCE, "tools": [TOOL], "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": [*FRANCE, {"role": "assistant", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]}, "messages"),
        ({"messages": FRANCE, "functions": [TOOL["function"]]}, "functions"),
        ({"messages": FRANCE, "response_format": {"type": "json_schema",
                                                   "json_schema": {"name": "x", "schema": {"type": "nope"}}}}, "response_format"),
        ({"messages": FRANCE, "response_format": {"type": "yaml"}}, "response_format"),
        ({"messages": FRANCE, "surprise": True}, "surprise"),
    ],
)
def test_invalid_parameters_are_400_naming_the_field(server, body, param):
    assert_openai_error(post(server, "/v1/chat/completions", body), 400, "invalid_request_error", param=param)


def test_context_length_is_400_with_the_numbers(server):
    long_prompt = {"prompt": "hello " * 3000, "max_tokens": 2000}
    response = post(server, "/v1/completions", long_prompt)
    assert_openai_error(response, 400, "invalid_request_error", code="context_length_exceeded",
                        contains="maximum context length is 4096 tokens")
    assert "5001 tokens (3001 in the prompt, 2000 for the completion)" in response.json()["error"]["message"]
    streamed = post(server, "/v1/completions", {**long_prompt, "stream": True})
    assert_openai_error(streamed, 400, "invalid_request_error", code="context_length_exceeded")


def test_malformed_and_oversize_bodies(server):
    malformed = httpx.post(f"{server.url}/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert_openai_error(malformed, 400, "invalid_request_error", contains="not valid JSON")
    huge = httpx.post(f"{server.url}/v1/completions", content=b"x" * (5 * 1024 * 1024), headers={"content-type": "application/json"})
    assert_openai_error(huge, 413, "invalid_request_error")


def test_unknown_model_is_404(server, client):
    assert_openai_error(post(server, "/v1/chat/completions", {"model": "gpt-4", "messages": FRANCE}), 404,
                        "not_found_error", param="model", code="model_not_found")
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-4", prompt="hi")


# auth and queue limits


@pytest.fixture(scope="module")
def guarded_server(tmp_path_factory):
    yield from serve(tmp_path_factory, "guarded", "--dtype", "float32", "--max-num-seqs", "1",
                     "--max-queued-sequences", "0", "--cors-allowed-origins", "https://app.example.com",
                     "--chat-template", "chatml", env={"NANOVLLM_API_KEY": "sk-test"})


def test_api_key_is_required_on_v1_but_not_health(guarded_server):
    url = guarded_server.url
    assert httpx.get(f"{url}/health").status_code == 200
    assert_openai_error(httpx.get(f"{url}/v1/models"), 401, "authentication_error")
    assert_openai_error(httpx.get(f"{url}/v1/models", headers={"Authorization": "Bearer wrong"}), 401, "authentication_error")
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{url}/v1", api_key="wrong").models.list()
    good = openai.OpenAI(base_url=f"{url}/v1", api_key="sk-test")
    assert good.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0).choices[0].message.content


def test_queue_limit_answers_429_fast(guarded_server):
    headers = {"Authorization": "Bearer sk-test"}
    body = {"messages": FRANCE, "max_tokens": 400, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{guarded_server.url}/v1/chat/completions", json=body, headers=headers, timeout=120) as busy:
        lines = busy.iter_lines()  # kept: dropping the iterator closes the connection
        next(lines)
        rejected = httpx.post(f"{guarded_server.url}/v1/chat/completions", json={"messages": FRANCE}, headers=headers)
        still_running = metric(guarded_server, "nanovllm_num_requests_running")
    assert_openai_error(rejected, 429, "rate_limit_error", code="queue_full")
    assert rejected.headers["retry-after"] == "1"
    assert still_running == 1  # refused at once, not after waiting for the busy request's slot


def test_cors_when_configured(guarded_server):
    preflight = httpx.options(f"{guarded_server.url}/v1/chat/completions",
                              headers={"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == "https://app.example.com"


def test_chat_template_flag_overrides_the_models(guarded_server):
    headers = {"Authorization": "Bearer sk-test"}
    tokens = httpx.post(f"{guarded_server.url}/tokenize", json={"messages": FRANCE}, headers=headers).json()["tokens"]
    text = httpx.post(f"{guarded_server.url}/detokenize", json={"tokens": tokens}, headers=headers).json()["prompt"]
    # chatml has no default system prompt, unlike SmolLM2's own template
    assert text == "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def test_a_request_larger_than_the_queue_is_a_400_not_a_429(guarded_server):
    """Regression: prompts x n beyond max_num_seqs + max_queued_sequences can never be
    admitted, yet got 429 'retry shortly'."""
    headers = {"Authorization": "Bearer sk-test"}
    response = httpx.post(f"{guarded_server.url}/v1/completions", headers=headers,
                          json={"prompt": ["Once upon a time", "Long ago"], "max_tokens": 2})
    assert_openai_error(response, 400, "invalid_request_error", param="n", contains="at most 1 at once")


def test_continuous_usage_stats_put_usage_in_every_chunk(server):
    """Regression: accepted and ignored."""
    options = {"include_usage": True, "continuous_usage_stats": True}
    for path, body in (("/v1/chat/completions", {"messages": FRANCE}), ("/v1/completions", {"prompt": "Hello"})):
        body = {**body, "max_tokens": 6, "ignore_eos": True, "stream": True, "stream_options": options}
        with httpx.stream("POST", f"{server.url}{path}", json=body, timeout=HUNG_S) as response:
            events = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
        counts = [event["usage"]["completion_tokens"] for event in events]
        assert all(event["usage"]["prompt_tokens"] > 0 for event in events)
        assert counts == sorted(counts) and counts[-1] == 6 and len(events) > 6
