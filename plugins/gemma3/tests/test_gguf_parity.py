"""Gemma 3 270M from llama.cpp's GGUF file (Q4_K_M), dequantized to float32, gives
transformers' greedy tokens: 6 prompts of 760 tokens, longer than the 512-token
window, so that the local layers must drop the prompt's start; batched and alone."""

import importlib
import inspect

import pytest
import torch

from nanovllm_core import LLM, SamplingParams
from nanovllm_core.layers import Attention

PROMPT_TOKENS = 760
NEW_TOKENS = 32
# natural text that every Python has: the start of six standard-library modules' source
SOURCE_MODULES = ["textwrap", "json", "heapq", "bisect", "colorsys", "difflib"]


@pytest.fixture(scope="module")
def llm(gemma3_gguf):
    # no prefix cache: every run below prefills its prompts afresh
    engine = LLM(str(gemma3_gguf), dtype="float32", quantization="none", max_model_len=1024, max_num_seqs=8,
                 enable_prefix_caching=False)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def prompts(llm):
    texts = [inspect.getsource(importlib.import_module(name)) for name in SOURCE_MODULES]
    return [llm.tokenizer.encode(text)[:PROMPT_TOKENS] for text in texts]


@pytest.fixture(scope="module")
def reference(gemma3_gguf, prompts):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(gemma3_gguf.parent, gguf_file=gemma3_gguf.name, dtype=torch.float32)
    tokens = []
    for prompt in prompts:
        out = model.generate(torch.tensor([prompt]), max_new_tokens=NEW_TOKENS, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
        tokens.append(out[0, len(prompt):].tolist())
    return tokens


def greedy(llm, prompts):
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0, ignore_eos=True)
    return [out["token_ids"] for out in llm.generate(prompts, params, use_tqdm=False)]


def test_prompts_are_longer_than_the_window(llm, prompts):
    windows = {layer.sliding_window for layer in llm.engine.runner.model.modules() if isinstance(layer, Attention)}
    assert windows == {512, None}  # local and global layers
    assert all(len(prompt) == PROMPT_TOKENS for prompt in prompts)


def test_greedy_tokens_match_transformers_batched(llm, prompts, reference):
    assert greedy(llm, prompts) == reference


def test_greedy_tokens_match_transformers_alone(llm, prompts, reference):
    assert [greedy(llm, [prompt])[0] for prompt in prompts] == reference


def test_without_the_window_the_tokens_differ(llm, prompts, reference):
    """The check above could not pass by accident of the window not mattering."""
    local = [layer for layer in llm.engine.runner.model.modules() if isinstance(layer, Attention) and layer.sliding_window]
    try:
        for layer in local:
            layer.sliding_window = None
        unwindowed = greedy(llm, prompts)
    finally:
        for layer in local:
            layer.sliding_window = 512
    assert sum(ours != theirs for ours, theirs in zip(unwindowed, reference)) >= 3


def test_turns_end_on_end_of_turn_as_well_as_eos(llm):
    vocabulary = llm.tokenizer.get_vocab()
    assert {vocabulary["<eos>"], vocabulary["<end_of_turn>"]} <= llm.engine.eos_token_ids


def test_the_default_runs_the_file_as_int8_and_keeps_its_clear_choices(gemma3_gguf, llm, prompts):
    """Most of the file's layer weights are 5-bit (Q5_0), so the CPU default computes with int8
    kernels. Teacher-forced on the float32 model's greedy continuations of shorter prompts, it
    keeps every clear choice (a margin over 0.5 nats) and drifts little in logprob."""
    from nanovllm_core.layers.quantization import Int8Weight

    quantized = LLM(str(gemma3_gguf), max_model_len=1024, max_num_seqs=4)  # --quantization auto, dtype auto
    try:
        layers = [m for m in quantized.engine.runner.model.modules() if hasattr(m, "quantized")]
        assert all(isinstance(m.quantized, Int8Weight) for m in layers)
        short = [prompt[:96] for prompt in prompts[:3]]
        params = SamplingParams(temperature=0, max_tokens=16, ignore_eos=True)
        answers = [o["prompt_token_ids"] + o["token_ids"] for o in llm.generate(short, params, use_tqdm=False)]
        scoring = SamplingParams(temperature=0, max_tokens=1, prompt_logprobs=2)
        original, ours = ([r["prompt_logprobs"][-16:] for r in engine.generate(answers, scoring, use_tqdm=False)]
                          for engine in (llm, quantized))
    finally:
        quantized.shutdown()
    drift, clear, kept = [], 0, 0
    for theirs_row, mine_row in zip(original, ours):
        for theirs, mine in zip(theirs_row, mine_row):
            drift.append(abs(theirs.logprob - mine.logprob))
            runner_up = max((value for token, value in theirs.top_logprobs if token != theirs.token_id), default=-1e9)
            if theirs.logprob - runner_up > 0.5:
                clear += 1
                kept += mine.rank == 1
    assert kept == clear > 0.5 * len(drift), (kept, clear, len(drift))
    assert sum(drift) / len(drift) < 0.1, sum(drift) / len(drift)
