"""The model's generation_config.json sets the defaults of the sampling fields a request
leaves out (--generation-config auto, as vLLM); --generation-config none keeps OpenAI's."""

from __future__ import annotations

import json

import openai
import pytest

from nanovllm_api.protocol.chat import ChatCompletionRequest
from nanovllm_api.protocol.completion import CompletionRequest
from nanovllm_core.engine.llm_engine import LLMEngine
from nanovllm_core.engine.model_spec import merge_sampling_defaults
from nanovllm_core.loader.source import resolve_model
from nanovllm_core.config import EngineConfig
from nanovllm_core.model_info import ModelInfo
from server_process import ServerProcess
from tiny_models import make_tiny_checkpoint

# what a model card ships: sampling fields, and others that are not request defaults
GENERATION_CONFIG = {"temperature": 0.0, "top_k": 7, "top_p": 0.9, "do_sample": True, "max_new_tokens": 99}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory, smollm2_tokenizer):
    path = make_tiny_checkpoint("Qwen3ForCausalLM", tmp_path_factory.mktemp("generation-defaults"), smollm2_tokenizer)
    written = json.loads((path / "generation_config.json").read_text())
    (path / "generation_config.json").write_text(json.dumps({**written, **GENERATION_CONFIG}))
    return path


def test_the_engine_reads_only_the_sampling_fields_written_there(model_dir):
    engine = LLMEngine(EngineConfig(model=str(model_dir), dtype="float32"))
    assert engine.model_info.sampling_defaults == {"temperature": 0.0, "top_k": 7, "top_p": 0.9}
    off = LLMEngine(EngineConfig(model=str(model_dir), dtype="float32", generation_config="none"))
    assert off.model_info.sampling_defaults == {}


def test_a_request_keeps_what_it_sets_and_takes_the_rest_from_the_model():
    model = ModelInfo(max_model_len=64, vocab_size=100, sampling_defaults={"temperature": 0.3, "top_k": 7})
    request = ChatCompletionRequest(messages=[{"role": "user", "content": "hi"}], top_k=3, top_p=0.5)
    [params] = request.to_sampling_params(model)
    assert (params.temperature, params.top_k, params.top_p, params.min_p) == (0.3, 3, 0.5, 0.0)
    [plain] = request.to_sampling_params(ModelInfo(max_model_len=64, vocab_size=100))
    assert (plain.temperature, plain.top_k) == (1.0, 3)


def test_the_server_applies_the_models_defaults(model_dir, tmp_path):
    server = ServerProcess("--model", str(model_dir), "--dtype", "float32", log_path=tmp_path / "server.log")
    try:
        server.wait_healthy()
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused")
        body = dict(model=model_dir.name, messages=[{"role": "user", "content": "Hello"}], max_tokens=16,
                    extra_body={"ignore_eos": True})
        # the model's temperature 0 makes a request that sets none greedy; OpenAI's 1.0 would sample
        # this random model's flat distribution, which no 16 tokens of greedy decoding survive
        greedy = client.chat.completions.create(**body, temperature=0).choices[0].message.content
        assert all(client.chat.completions.create(**body).choices[0].message.content == greedy for _ in range(2))
        assert "sampling defaults from the model's generation_config.json" in (tmp_path / "server.log").read_text()
    finally:
        assert server.stop() == 0


def test_the_embedded_model_gets_its_cards_defaults_under_the_checkpoints():
    """Regression: the embedded SmolLM2 is a GGUF file with no generation_config, so a request
    that set nothing sampled at OpenAI's temperature 1.0, which its card advises against
    (0.2, top_p 0.9). The card's defaults apply under generation_config.json's, and its
    max_tokens and stop too; generation_config none turns both off."""
    assert resolve_model(None).card_defaults() == {"temperature": 0.2, "top_p": 0.9}
    card = {"temperature": 0.2, "top_p": 0.9, "max_tokens": 40, "stop": ["\n\n"]}
    checkpoint = {"temperature": 0.7, "max_new_tokens": 99}
    assert merge_sampling_defaults(EngineConfig(), checkpoint, card) == {
        "temperature": 0.7, "top_p": 0.9, "max_tokens": 40, "stop": ["\n\n"]}
    assert merge_sampling_defaults(EngineConfig(generation_config="none"), checkpoint, card) == {}


def test_a_models_max_tokens_and_stop_apply_where_the_request_sets_none():
    model = ModelInfo(max_model_len=64, vocab_size=100, sampling_defaults={"max_tokens": 40, "stop": ["\n\n"]})
    messages = [{"role": "user", "content": "hi"}]
    [chat] = ChatCompletionRequest(messages=messages).to_sampling_params(model)
    assert (chat.max_tokens, chat.stop) == (40, ["\n\n"])
    [own] = ChatCompletionRequest(messages=messages, max_completion_tokens=5, stop=[]).to_sampling_params(model)
    assert (own.max_tokens, own.stop) == (5, [])
    [completion] = CompletionRequest(prompt="hi").to_sampling_params(model)
    assert completion.max_tokens == 40  # the model's, over the endpoint's 16
    [plain] = CompletionRequest(prompt="hi").to_sampling_params(ModelInfo(max_model_len=64, vocab_size=100))
    assert (plain.max_tokens, plain.stop) == (16, [])
