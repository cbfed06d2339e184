"""`nanovllm-api --model <the Gemma 3 GGUF>` chats through the official openai
client in Gemma's turn format, which the plugin supplies for a file without a
template; `--list-plugins` names the plugin's distribution."""

import subprocess
import sys

import httpx
import pytest
from openai import OpenAI

from nanovllm_api.testing import serve

# Google's format, written out: the system message opens the first user turn
EXPECTED_PROMPT = (
    "<bos><start_of_turn>user\nAnswer with one word.\n\nCapital of Italy?<end_of_turn>\n"
    "<start_of_turn>model\nRome<end_of_turn>\n"
    "<start_of_turn>user\nCapital of France?<end_of_turn>\n"
    "<start_of_turn>model\n"
)
MESSAGES = [
    {"role": "system", "content": "Answer with one word."},
    {"role": "user", "content": "Capital of Italy?"},
    {"role": "assistant", "content": "Rome"},
    {"role": "user", "content": "Capital of France?"},
]


@pytest.fixture(scope="module")
def server(gemma3_gguf, tmp_path_factory):
    yield from serve(tmp_path_factory, "gemma3", "--model", str(gemma3_gguf), "--max-model-len", "1024",
                     "--max-num-seqs", "4")


def test_chat_is_rendered_in_gemmas_turn_format(server):
    rendered = httpx.post(f"{server.url}/tokenize", json={"messages": MESSAGES}).json()["tokens"]
    expected = httpx.post(f"{server.url}/tokenize", json={"prompt": EXPECTED_PROMPT, "add_special_tokens": False})
    assert rendered == expected.json()["tokens"]
    assert rendered.count(105) == 4  # <start_of_turn> stayed one special token


def test_chat_completion_with_the_openai_client(server):
    client = OpenAI(base_url=f"{server.url}/v1", api_key="unused")
    model = client.models.list().data[0].id
    reply = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8, temperature=0)
    # the file is the base model, whose chat answers are poor: what is checked here is the
    # serving, and test_gguf_parity.py checks the tokens against transformers
    assert reply.choices[0].message.content and reply.usage.completion_tokens <= 8
    assert reply.usage.prompt_tokens == len(httpx.post(f"{server.url}/tokenize", json={"messages": MESSAGES}).json()["tokens"])
    chunks = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=8, temperature=0, stream=True)
    assert "".join(chunk.choices[0].delta.content or "" for chunk in chunks if chunk.choices) == \
        reply.choices[0].message.content


def test_list_plugins_names_the_distribution():
    listing = subprocess.run([sys.executable, "-m", "nanovllm_api", "--list-plugins"], capture_output=True, text=True,
                             check=True).stdout.splitlines()
    assert any(line.split() == ["Gemma3ForCausalLM", "nanovllm-gemma3"] for line in listing)
    assert any(line.split() == ["gemma", "nanovllm-gemma3"] for line in listing)
