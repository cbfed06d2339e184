"""The engine survives any single request: a step that raises is run again one sequence
at a time, the sequence that raises alone fails with an error in OpenAI's shape, and the
others finish. The faults come from plugins (tests/poisoned_server.py): a sampler that
raises for one seed, a model that raises on one prompt."""

import asyncio

import httpx
import openai
import pytest

from poisoned_server import POISON_REPEATS, POISON_SEED, POISON_TOKEN_ID
from server_process import log_text, metric, serve

STREAMS = 16
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from serve(tmp_path_factory, "poisoned", "--sampler", "poisoned", "--max-num-seqs", str(STREAMS),
                     entry=("tests/poisoned_server.py",))


async def stream_completion(client: openai.AsyncOpenAI, prompt, seed: int) -> tuple[str, str | None]:
    """(the text, the finish reason), or ("error", the error's type) for an error event."""
    text, reason = "", None
    try:
        stream = await client.completions.create(model="SmolLM2-135M-Instruct", prompt=prompt, max_tokens=MAX_TOKENS,
                                                 temperature=0, seed=seed, stream=True,
                                                 extra_body={"ignore_eos": True})
        async for chunk in stream:
            text += chunk.choices[0].text
            reason = chunk.choices[0].finish_reason or reason
    except openai.APIError as error:
        return "error", (error.body or {}).get("type") if isinstance(error.body, dict) else str(error)
    return text, reason


def run_streams(server, poisoned_index: int, poisoned_prompt=None, poisoned_seed: int = 1):
    async def run():
        client = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="none", max_retries=0, timeout=300)
        prompts = [f"Count from {i} to {i + 20}:" for i in range(STREAMS)]
        seeds = [1] * STREAMS
        if poisoned_prompt is not None:
            prompts[poisoned_index] = poisoned_prompt
        seeds[poisoned_index] = poisoned_seed
        results = await asyncio.gather(*(stream_completion(client, p, s) for p, s in zip(prompts, seeds)))
        await client.close()
        return results

    return asyncio.run(run())


def assert_only_the_poisoned_failed(results, poisoned_index: int) -> None:
    for index, (text, reason) in enumerate(results):
        if index == poisoned_index:
            assert (text, reason) == ("error", "internal_server_error")
        else:
            assert reason == "length" and text, (index, text, reason)


def assert_still_serving(server) -> None:
    assert httpx.get(f"{server.url}/health", timeout=10).json() == {"status": "ok"}
    response = httpx.post(f"{server.url}/v1/completions", json={"prompt": "Hello", "max_tokens": 4}, timeout=120)
    assert response.status_code == 200 and response.json()["usage"]["completion_tokens"] >= 1


def test_a_request_that_breaks_the_sampler_fails_alone(server):
    results = run_streams(server, poisoned_index=5, poisoned_seed=POISON_SEED)
    assert_only_the_poisoned_failed(results, 5)
    assert_still_serving(server)


def test_a_prompt_that_breaks_the_model_fails_alone(server):
    poisoned = [1, 2, 3] + [POISON_TOKEN_ID] * POISON_REPEATS + [4, 5, 6]
    results = run_streams(server, poisoned_index=11, poisoned_prompt=poisoned)
    assert_only_the_poisoned_failed(results, 11)
    assert_still_serving(server)
    assert metric(server, "nanovllm_num_requests_running") == 0


def test_a_non_streamed_request_that_fails_gets_a_500_in_openai_shape(server):
    response = httpx.post(f"{server.url}/v1/chat/completions", timeout=120, json={
        "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "seed": POISON_SEED, "temperature": 0})
    assert response.status_code == 500
    error = response.json()["error"]
    assert error["type"] == "internal_server_error" and error["code"] == "engine_error"
    assert "injected" not in response.text and "Traceback" not in response.text  # the log has the details
    assert "injected sampler fault" in log_text(server)
    assert_still_serving(server)
