"""`--model org/name` through the Hugging Face hub cache, offline (HF_HUB_OFFLINE=1):
the test fills a cache directory in the hub's layout itself."""

from __future__ import annotations

import os
import subprocess
import sys

import openai
import pytest
from server_process import serve
from tiny_models import make_tiny_checkpoint

REPO_ID = "test-org/tiny-llama"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, smollm2_tokenizer):
    """A cache holding one repository, as `hf download` leaves it: refs/main names the
    commit whose snapshot folder has the files."""
    cache = tmp_path_factory.mktemp("hub")
    repo = cache / f"models--{REPO_ID.replace('/', '--')}"
    make_tiny_checkpoint("LlamaForCausalLM", repo / "snapshots" / COMMIT, smollm2_tokenizer)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    return cache


def offline_env(cache) -> dict[str, str]:
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


@pytest.fixture(scope="module")
def server(tmp_path_factory, hub_cache):
    yield from serve(tmp_path_factory, "hub", "--model", REPO_ID, "--dtype", "float32", env=offline_env(hub_cache))


def test_a_cached_hub_id_serves_offline(server):
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", timeout=120)
    assert [m.id for m in client.models.list().data] == [REPO_ID]
    response = client.chat.completions.create(model=REPO_ID, messages=[{"role": "user", "content": "Hi"}],
                                              max_tokens=4, temperature=0)
    assert response.model == REPO_ID and response.usage.completion_tokens == 4


def test_an_uncached_hub_id_fails_naming_it(hub_cache):
    result = subprocess.run([sys.executable, "-m", "nanovllm_api", "--model", "test-org/not-cached"],
                            capture_output=True, text=True, env={**os.environ, **offline_env(hub_cache)},
                            timeout=120)
    assert result.returncode != 0
    assert "test-org/not-cached" in result.stderr and "HF_HUB_OFFLINE" in result.stderr
    assert "Traceback" not in result.stderr
