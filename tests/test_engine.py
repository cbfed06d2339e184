"""LLMEngine behaviour on the real model: validation, abort, stops, seeds, logprobs."""

import os

import pytest
import torch

from conftest import chat_prompt
from nanovllm_core import SamplingParams


@pytest.fixture
def engine(smollm2_llm):
    return smollm2_llm.engine


def run_to_end(engine):
    outputs = []
    while engine.has_unfinished_requests():
        outputs.extend(engine.step())
    return outputs


def test_overlong_requests_are_rejected_with_the_numbers(engine):
    with pytest.raises(ValueError, match=r"maximum context length is 4096 tokens.*4100 tokens \(100 in the prompt, 4000"):
        engine.add_request("long", [5] * 100, SamplingParams(max_tokens=4000))
    with pytest.raises(ValueError, match="out of range"):
        engine.add_request("oov", [5, 10**6], SamplingParams())
    with pytest.raises(ValueError, match="empty"):
        engine.add_request("empty", [], SamplingParams())
    assert not engine.has_unfinished_requests()


def test_abort_frees_the_blocks_at_once(engine, smollm2_tokenizer):
    free_before = engine.block_manager.num_free_blocks
    engine.add_request("victim", chat_prompt(smollm2_tokenizer, "Tell me a story."), SamplingParams(max_tokens=200))
    engine.add_request("survivor", chat_prompt(smollm2_tokenizer, "Say hi."), SamplingParams(temperature=0, max_tokens=8))
    engine.step()
    engine.step()
    assert engine.block_manager.num_free_blocks < free_before
    assert engine.abort_request("victim")
    assert not engine.abort_request("victim")
    outputs = run_to_end(engine)
    assert {o.request_id for o in outputs} == {"survivor"}
    assert outputs[-1].finished
    assert engine.block_manager.num_free_blocks == free_before


def test_stop_strings_and_tokens_end_the_output(smollm2_llm, smollm2_tokenizer):
    prompt = chat_prompt(smollm2_tokenizer, "What is the capital of France?")
    full = smollm2_llm.generate(prompt, SamplingParams(temperature=0, max_tokens=20), use_tqdm=False)[0]
    assert full["text"] == "The capital of France is Paris."
    by_string = smollm2_llm.generate(prompt, SamplingParams(temperature=0, max_tokens=20, stop=["France"]), use_tqdm=False)[0]
    assert by_string["text"] == "The capital of " and by_string["finish_reason"] == "stop"
    kept = SamplingParams(temperature=0, max_tokens=20, stop=["France"], include_stop_str_in_output=True)
    assert smollm2_llm.generate(prompt, kept, use_tqdm=False)[0]["text"] == "The capital of France"
    capital = smollm2_tokenizer.encode(" capital", add_special_tokens=False)[0]
    by_token = smollm2_llm.generate(prompt, SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[capital]), use_tqdm=False)[0]
    assert by_token["text"] == "The" and by_token["token_ids"][-1] == capital
    short = smollm2_llm.generate(prompt, SamplingParams(temperature=0, max_tokens=3), use_tqdm=False)[0]
    assert short["finish_reason"] == "length" and len(short["token_ids"]) == 3


def test_seeded_sampling_reproduces_and_differs_across_seeds(smollm2_llm, smollm2_tokenizer):
    prompt = chat_prompt(smollm2_tokenizer, "Invent a name for a cat.")
    runs = [
        smollm2_llm.generate([prompt, "Other prompt in the batch"], SamplingParams(temperature=1.0, max_tokens=12, seed=s), use_tqdm=False)[0]
        for s in (1, 1, 2)
    ]
    alone = smollm2_llm.generate(prompt, SamplingParams(temperature=1.0, max_tokens=12, seed=1), use_tqdm=False)[0]
    assert runs[0]["token_ids"] == runs[1]["token_ids"] == alone["token_ids"]
    assert runs[0]["token_ids"] != runs[2]["token_ids"]


def test_logprobs_come_with_each_token(engine, smollm2_tokenizer):
    engine.add_request("lp", chat_prompt(smollm2_tokenizer, "Hi"), SamplingParams(temperature=0, max_tokens=4, logprobs=3))
    outputs = run_to_end(engine)
    assert len(outputs) == 4
    for output in outputs:
        (sampled,) = output.new_logprobs
        assert sampled.token_id == output.new_token_ids[0]
        assert len(sampled.top_logprobs) == 3
        assert sampled.top_logprobs[0][0] == sampled.token_id  # greedy: the best one
        assert sampled.logprob == pytest.approx(sampled.top_logprobs[0][1])
        assert sampled.logprob <= 0


def test_a_bad_prompt_in_generate_leaves_nothing_behind(smollm2_llm):
    """Regression: the prompts before a refused one stayed in the engine, and the next
    call failed with 'request id already in use'."""
    params = SamplingParams(temperature=0, max_tokens=4)
    with pytest.raises(ValueError, match="empty"):
        smollm2_llm.generate(["Hello there", []], params, use_tqdm=False)
    assert not smollm2_llm.engine.has_unfinished_requests()
    assert len(smollm2_llm.generate(["Hello there", "Hi"], params, use_tqdm=False)) == 2


KV_BYTES_PER_BLOCK = 2 * 16 * 2 * 16 * 4 * 2  # K and V, 16 tokens, 2 KV heads of 16, float32, 2 layers


def test_max_model_len_is_reconciled_with_the_kv_cache(tmp_path, smollm2_tokenizer, caplog):
    """Regression: a max_model_len beyond what the cache holds was accepted, and every
    request without max_tokens was then refused."""
    from nanovllm_core import LLM
    from tiny_models import make_tiny_checkpoint

    checkpoint = str(make_tiny_checkpoint("LlamaForCausalLM", tmp_path, smollm2_tokenizer))
    eight_blocks = 8 * KV_BYTES_PER_BLOCK / 1024**3
    with pytest.raises(ValueError, match=r"max_model_len 512 is more than the KV cache holds: 8 blocks of 16 tokens"):
        LLM(checkpoint, dtype="float32", kv_cache_memory_gb=eight_blocks, max_model_len=512)
    with caplog.at_level("WARNING"):
        llm = LLM(checkpoint, dtype="float32", kv_cache_memory_gb=eight_blocks)  # the default 4096, capped to 512
    assert llm.engine.max_model_len == 128 and "capped to 128" in caplog.text
    result = llm.generate([[5] * 20], SamplingParams(max_tokens=None, ignore_eos=True), use_tqdm=False)[0]
    assert result["finish_reason"] == "length" and len(result["token_ids"]) == 108


def test_the_cpu_kv_cache_holds_what_the_configuration_can_use(tmp_path, smollm2_tokenizer):
    """max_num_seqs x max_model_len tokens, not a fixed 2 GiB; kv_cache_memory_gb still caps it."""
    from nanovllm_core import LLM
    from tiny_models import make_tiny_checkpoint

    checkpoint = make_tiny_checkpoint("LlamaForCausalLM", tmp_path, smollm2_tokenizer)
    llm = LLM(str(checkpoint), dtype="float32", max_num_seqs=3, max_model_len=100, block_size=16)
    assert llm.engine.runner.num_blocks == 3 * 7  # ceil(100 / 16) blocks per sequence
    runner = llm.engine.runner
    assert runner.num_blocks * runner.kv_cache.bytes_per_block() == sum(
        layer.k_cache.nbytes + layer.v_cache.nbytes for layer in runner.attention_layers)
    capped = LLM(str(checkpoint), dtype="float32", max_num_seqs=3, max_model_len=100, block_size=16,
                 kv_cache_memory_gb=runner.kv_cache.bytes_per_block() * 10 / (1 << 30))
    assert capped.engine.runner.num_blocks == 10


def test_cpu_decode_graphs_replay_the_eager_steps(tmp_path, smollm2_tokenizer):
    """Decode batches of 5 to 1 sequences run through the recorded graphs of sizes 8, 4, 2 and 1
    (padded rows included), and every step gives the eager engine's tokens and logprobs: a
    replay reads the inputs, metadata and KV cache as they are at that step, not as recorded."""
    from nanovllm_core import LLM
    from nanovllm_core.engine.decode_graphs import CpuGraphRunner
    from tiny_models import make_tiny_checkpoint

    checkpoint = str(make_tiny_checkpoint("Qwen3ForCausalLM", tmp_path, smollm2_tokenizer))
    prompts = [[7 + i] * (3 + 5 * i) for i in range(5)]
    params = [SamplingParams(max_tokens=6 + 4 * i, temperature=0, ignore_eos=True, logprobs=0) for i in range(5)]
    steps = {}
    for eager in (True, False):
        engine = LLM(checkpoint, dtype="float32", max_num_seqs=8, enforce_eager=eager).engine
        for i, (prompt, param) in enumerate(zip(prompts, params)):
            engine.add_request(str(i), prompt, param)
        steps[eager] = [(out.request_id, out.new_logprobs[0]) for out in run_to_end(engine)]
    assert isinstance(engine.runner.decode_graphs, CpuGraphRunner)
    assert sorted(engine.runner.decode_graphs.graphs) == [1, 2, 4, 8]
    assert len(steps[False]) == len(steps[True]) == sum(param.max_tokens for param in params)
    for (eager_id, eager_token), (graph_id, graph_token) in zip(steps[True], steps[False]):
        assert (graph_id, graph_token.token_id) == (eager_id, eager_token.token_id)
        assert graph_token.logprob == pytest.approx(eager_token.logprob, abs=1e-4)


def test_the_cpu_kv_cache_becomes_resident_only_as_blocks_are_written(tmp_path, smollm2_tokenizer):
    """Regression: the cache was written whole at start (torch.zeros), so a server held all
    that max_num_seqs x max_model_len could use (755 MiB of SmolLM2's 32 x 512) from the
    first second; the blocks are still zeros to whoever reads them first."""
    from nanovllm_core import LLM
    from tiny_models import make_tiny_checkpoint

    def resident_mib() -> float:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / (1 << 20)

    checkpoint = str(make_tiny_checkpoint("LlamaForCausalLM", tmp_path, smollm2_tokenizer))
    before = resident_mib()
    llm = LLM(checkpoint, dtype="float32", max_num_seqs=1024, max_model_len=512, kv_cache_memory_gb=1.0,
              enforce_eager=True)
    runner = llm.engine.runner
    cache_mib = runner.num_blocks * runner.kv_cache.bytes_per_block() / (1 << 20)
    assert cache_mib > 200 and resident_mib() - before < cache_mib / 4
    layer = runner.attention_layers[0]
    assert not layer.k_cache.any() and not layer.v_cache.any()
    result = llm.generate([[5] * 20], SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)[0]
    assert len(result["token_ids"]) == 4 and layer.k_cache.any()


def test_a_quantized_model_keeps_a_float16_cache_and_a_cached_prefix_changes_nothing(tmp_path, smollm2_tokenizer):
    """A float32 model with quantized weights keeps its CPU cache in float16. Regression: a
    prompt's first prefill attended to its new K/V in float32 while a later prompt sharing
    its prefix read them rounded from the cache, so the same prompt answered differently the
    second time (seen as a different greedy reply from Gemma 3 on a repeated request)."""
    from nanovllm_core import LLM
    from tiny_models import make_tiny_checkpoint

    checkpoint = str(make_tiny_checkpoint("LlamaForCausalLM", tmp_path, smollm2_tokenizer))
    engine = LLM(checkpoint, dtype="float32", quantization="int8", max_num_seqs=4).engine
    assert engine.runner.attention_layers[0].k_cache.dtype == torch.float16
    prompt = [11 + (7 * i) % 50 for i in range(40)]
    runs = []
    for request_id in ("fresh", "cached"):
        engine.add_request(request_id, prompt, SamplingParams(max_tokens=8, temperature=0, logprobs=0))
        runs.append([out.new_logprobs[0] for out in run_to_end(engine)])
    assert engine.block_manager.prefix_cache_hits >= 32  # the second prompt's first two blocks
    fresh, cached = runs
    assert [t.token_id for t in cached] == [t.token_id for t in fresh]
    assert [t.logprob for t in cached] == pytest.approx([t.logprob for t in fresh], abs=1e-6)


def test_a_request_whose_output_processing_raises_fails_alone(engine, monkeypatch):
    """A fault after the model's step (detokenizing, grammar, stops) fails that request only."""
    processor = type(engine.output_processor)
    real_append = processor._append

    def append(self, seq, sampled):
        if seq.request_id == "bad" and seq.num_output_tokens == 2:
            raise RuntimeError("injected processing fault")
        return real_append(self, seq, sampled)

    monkeypatch.setattr(processor, "_append", append)
    free_before = engine.block_manager.num_free_blocks
    engine.add_request("bad", [5, 6, 7], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    engine.add_request("good", [5, 6, 8], SamplingParams(temperature=0, max_tokens=8, ignore_eos=True))
    finals = {out.request_id: out for out in run_to_end(engine) if out.finished}
    assert finals["bad"].finish_reason == "error" and finals["bad"].error
    assert finals["good"].finish_reason == "length" and len(finals["good"].output_token_ids) == 8
    assert engine.block_manager.num_free_blocks == free_before and not engine.requests


def test_an_engine_that_fails_every_step_says_so(engine, monkeypatch):
    """When each sequence fails on its own as well, the engine's own probe tells a broken engine
    from bad requests: the step raises, and the server's loop dies (and the process exits)."""
    def broken(batch):
        raise RuntimeError("injected device fault")

    monkeypatch.setattr(engine.runner, "execute", broken)
    free_before = engine.block_manager.num_free_blocks
    engine.add_request("any", [5, 6, 7], SamplingParams(max_tokens=4))
    with pytest.raises(RuntimeError, match="probe"):
        engine.step()
    monkeypatch.undo()
    engine.abort_request("any")
    assert engine.block_manager.num_free_blocks == free_before
