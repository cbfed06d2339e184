"""The original nanovllm server README's examples, run as written: the server started
its way (`python -m nanovllm.entrypoints.api_server --model ...`, or its `run_server`),
every request naming the model "qwen", through the openai client and as its curl
commands send them, with the response shapes it documents."""

import json
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from server_process import ServerProcess

HERE = Path(__file__).parent
CHAT = {"model": "qwen", "messages": [{"role": "system", "content": "You are a helpful assistant."},
                                      {"role": "user", "content": "What is the capital of France?"}],
        "max_tokens": 100, "temperature": 0.7}
COMPLETION = {"model": "qwen", "prompt": "Once upon a time,", "max_tokens": 50, "temperature": 0.7}
STREAM = {"model": "qwen", "messages": [{"role": "user", "content": "Tell me a story."}], "max_tokens": 100, "stream": True}
RUN_SERVER = """
import sys
from nanovllm.entrypoints.api_server import run_server
run_server(model=sys.argv[5], host=sys.argv[2], port=int(sys.argv[4]), max_num_seqs=512, max_model_len=4096,
           tensor_parallel_size=1)
"""


@pytest.fixture(scope="module")
def server(tmp_path_factory, smollm2_path):
    log = tmp_path_factory.mktemp("original-readme") / "server.log"
    process = ServerProcess("--model", str(smollm2_path), entry=("-m", "nanovllm.entrypoints.api_server"),
                            log_path=log).wait_healthy()
    yield process
    assert process.stop() == 0


def assert_usage(usage: dict) -> None:
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] and usage["completion_tokens"] > 0


def test_openai_client_examples(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="dummy")
    chat = client.chat.completions.create(**CHAT)
    assert chat.model == "qwen" and chat.object == "chat.completion" and chat.id.startswith("chatcmpl-")
    assert chat.choices[0].message.role == "assistant" and chat.choices[0].message.content
    completion = client.completions.create(**COMPLETION)
    assert completion.model == "qwen" and completion.object == "text_completion" and completion.choices[0].text
    pieces = []
    for chunk in client.chat.completions.create(**{k: v for k, v in STREAM.items() if k != "stream"}, stream=True):
        assert chunk.model == "qwen"
        if chunk.choices[0].delta.content:  # as that README reads them: every chunk has a choice
            pieces.append(chunk.choices[0].delta.content)
    assert len(pieces) > 1


def test_curl_examples_and_response_shapes(server):
    chat = httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, timeout=120).json()
    assert {"id", "object", "created", "model", "choices", "usage"} <= set(chat) and chat["model"] == "qwen"
    choice = chat["choices"][0]
    assert choice["index"] == 0 and choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")
    assert_usage(chat["usage"])
    completion = httpx.post(f"{server.url}/v1/completions", json=COMPLETION, timeout=120).json()
    assert completion["object"] == "text_completion" and completion["model"] == "qwen"
    assert {"index", "text", "finish_reason"} <= set(completion["choices"][0])
    assert_usage(completion["usage"])
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=STREAM, timeout=120) as response:
        events = [line[6:] for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and all(json.loads(e)["object"] == "chat.completion.chunk" for e in events[:-1])
    models = httpx.get(f"{server.url}/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["object"] == "model"
    assert httpx.get(f"{server.url}/health").status_code == 200
    assert "swagger" in httpx.get(f"{server.url}/docs").text.lower()


def test_its_request_fields(server):
    """ignore_eos on both endpoints, echo on completions."""
    chat = httpx.post(f"{server.url}/v1/chat/completions", timeout=120, json={
        "model": "qwen", "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 64, "ignore_eos": True})
    assert chat.json()["usage"]["completion_tokens"] == 64 and chat.json()["choices"][0]["finish_reason"] == "length"
    echoed = httpx.post(f"{server.url}/v1/completions", timeout=120, json={
        "model": "qwen", "prompt": "Once upon a time,", "max_tokens": 8, "echo": True, "ignore_eos": True}).json()
    assert echoed["choices"][0]["text"].startswith("Once upon a time,") and echoed["usage"]["completion_tokens"] == 8


def test_its_example_script(server):
    out = subprocess.run([sys.executable, str(HERE.parent / "examples" / "example_api_server.py"),
                          "--base-url", f"{server.url}/v1"], capture_output=True, text=True, timeout=300, check=True).stdout
    # each part's text may span lines: the labels start lines, and the stream brought text
    assert out.startswith("chat: ") and "\ncompletion: " in out and out.split("\nstreaming: ", 1)[1].strip()


def test_run_server_from_python(tmp_path, smollm2_path):
    started = ServerProcess(str(smollm2_path), entry=("-c", RUN_SERVER), log_path=tmp_path / "server.log").wait_healthy()
    try:
        answer = openai.OpenAI(base_url=f"{started.url}/v1", api_key="dummy").chat.completions.create(
            **{**CHAT, "max_tokens": 4})
        assert answer.model == "qwen"
    finally:
        assert started.stop() == 0
