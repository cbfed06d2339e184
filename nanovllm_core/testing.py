"""Helpers for testing nanovllm and its plugins (used by nanovllm's own tests).

- ``registered_plugin(obj)``: register a plugin object for the duration of a block.
- ``save_random_checkpoint(config, directory, tokenizer)``: a transformers model
  with random weights, saved as a real HF checkpoint (safetensors + tokenizer).
- ``LogitsRecorder``: a greedy sampler that keeps every logits row it sees, keyed
  by the request's seed, for numerical parity tests against transformers.
- ``check_model_matches_transformers(hf_config, directory)``: a model plugin's whole
  parity test: a random-weight checkpoint of the config, checked on every setting.
- ``check_logits_match_transformers(checkpoint, prompts, ...)``: the parity test
  itself, for one of ``CPU_PARITY_SETTINGS`` (attention backend, block size, step budget).
- ``check_tool_call_parser(parser, tools, calls, tokenizer)``: assert what the
  server relies on from a tool-call parser.
"""

from __future__ import annotations

import contextlib
import json
import random
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch

from nanovllm_core.hookspecs import hookimpl
from nanovllm_core.plugins import get_plugin_manager
from nanovllm_core.sampling import SamplerOutput, SamplingBatch
from nanovllm_core.tool_calls import ParsedToolCall, Tool, ToolCallParser


@contextlib.contextmanager
def registered_plugin(plugin: object, name: str | None = None) -> Iterator[object]:
    pm = get_plugin_manager()
    pm.register(plugin, name=name)
    try:
        yield plugin
    finally:
        pm.unregister(plugin)


def save_random_checkpoint(config, directory: str | Path, tokenizer=None, seed: int = 0) -> Path:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    directory = Path(directory)
    model.save_pretrained(directory, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(directory)
    return directory


class LogitsRecorder:
    """Greedy sampling that records ``logits`` rows per request seed."""

    records: dict[int, list[torch.Tensor]] = defaultdict(list)

    def __call__(self, logits: torch.Tensor, batch: SamplingBatch) -> SamplerOutput:
        for row, seed in enumerate(batch.seeds.tolist()):
            self.records[seed].append(logits[row].float().cpu().clone())
        return SamplerOutput(logits.argmax(dim=-1))


class LogitsRecorderPlugin:
    @hookimpl
    def register_samplers(self, register):
        register("record-logits", LogitsRecorder)


# what a model's parity test covers on a CPU: (attention backend, block_size, max_num_batched_tokens)
CPU_PARITY_SETTINGS = [
    ("torch", 16, 2048),
    ("torch", 4, 24),  # crosses many block boundaries and prefills in chunks beside decodes
    ("cpu", 4, 24),  # the C++ decode kernel
    ("triton", 4, 24),  # the triton kernels, interpreted on a CPU (TRITON_INTERPRET=1)
]


# prompt lengths of a model's parity test: one within a small sliding window, and two that
# cross it and many blocks of 4, prefilled in chunks of the smaller step budgets
PARITY_PROMPT_LENGTHS = (5, 33, 58)


def check_model_matches_transformers(hf_config, directory: str | Path, settings=CPU_PARITY_SETTINGS,
                                     tokenizer=None, prompts: list[list[int]] | None = None,
                                     **llm_settings) -> None:
    """A model plugin's parity test: save a random-weight transformers checkpoint of
    ``hf_config`` in ``directory``, then ``check_logits_match_transformers`` on it for each
    (attention backend, block size, step budget) of ``settings``. Without a ``tokenizer`` the
    engine runs on token ids (``skip_tokenizer_init``); ``prompts`` default to random ids of
    ``PARITY_PROMPT_LENGTHS``."""
    checkpoint = save_random_checkpoint(hf_config, directory, tokenizer)
    if prompts is None:
        generator = torch.Generator().manual_seed(1)
        prompts = [torch.randint(0, hf_config.vocab_size, (n,), generator=generator).tolist()
                   for n in PARITY_PROMPT_LENGTHS]
    if tokenizer is None:
        llm_settings.setdefault("skip_tokenizer_init", True)
    for attention_backend, block_size, max_num_batched_tokens in settings:
        check_logits_match_transformers(checkpoint, prompts, attention_backend, block_size, max_num_batched_tokens,
                                        **llm_settings)


def check_logits_match_transformers(checkpoint: str | Path, prompts: list[list[int]], attention_backend: str,
                                    block_size: int, max_num_batched_tokens: int, decode_steps: int = 10,
                                    atol: float = 2e-4, **llm_settings) -> None:
    """Assert that the logits of every step (prefill, then ``decode_steps`` greedy decodes) of
    each prompt, run together in float32, equal transformers' ``generate`` on the checkpoint
    within ``atol`` (float32 on both sides: the difference is summation order only). A
    failure names the setting, the prompt, the first step that differs and by how much."""
    from transformers import AutoModelForCausalLM

    from nanovllm_core import LLM, SamplingParams

    LogitsRecorder.records.clear()
    with registered_plugin(LogitsRecorderPlugin()):
        llm = LLM(str(checkpoint), dtype="float32", sampler="record-logits", attention_backend=attention_backend,
                  block_size=block_size, max_num_batched_tokens=max_num_batched_tokens, **llm_settings)
        params = [SamplingParams(max_tokens=decode_steps, ignore_eos=True, seed=i) for i in range(len(prompts))]
        llm.generate(prompts, params, use_tqdm=False)
        llm.shutdown()
    reference = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    setting = f"attention_backend={attention_backend}, block_size={block_size}, " \
              f"max_num_batched_tokens={max_num_batched_tokens}"
    for seed, prompt in enumerate(prompts):
        out = reference.generate(torch.tensor([prompt]), max_new_tokens=decode_steps, do_sample=False,
                                 output_logits=True, return_dict_in_generate=True, eos_token_id=None, pad_token_id=0)
        expected = torch.stack([step[0] for step in out.logits])
        ours = torch.stack(LogitsRecorder.records[seed])
        where = f"{setting}: prompt {seed} ({len(prompt)} tokens, starting {prompt[:5]})"
        assert ours.shape == expected.shape, f"{where}: logits of shape {tuple(ours.shape)}, transformers' " \
                                             f"{tuple(expected.shape)}"
        differences = (ours - expected).abs().amax(dim=-1)
        over = ~(differences <= atol)  # NaN included
        if bool(over.any()):
            step = int(over.nonzero()[0])
            raise AssertionError(
                f"{where}: the logits differ from transformers' at step {step} "
                f"({'the prefill' if step == 0 else f'decode {step}'}) by up to {float(differences[step]):.3g} "
                f"(atol {atol:g}); steps over atol: {over.nonzero().flatten().tolist()}")


def check_tool_call_parser(
    parser: ToolCallParser, tools: list[Tool], calls: list[ParsedToolCall], tokenizer=None, trials: int = 100
) -> None:
    """Assert, for ``calls`` of ``tools``: calls written by ``format_calls`` after
    some text parse back to that text and those calls; streamed in random
    pieces, the deltas add up to the same (so no piece of a call leaks into the
    content), each call opening with its name; and, given the model's
    tokenizer, the ``required`` grammar admits the written calls and refuses
    plain text."""
    prose = "Let me look that up."
    text = f"{prose}\n{parser.format_calls(calls)}"
    content, parsed = parser.parse(text)
    assert content == prose, f"content {content!r}, expected {prose!r}"
    assert _decoded(parsed) == _decoded(calls), f"parsed {parsed}, expected {calls}"
    rng = random.Random(0)
    for _ in range(trials):
        cuts = sorted(rng.sample(range(1, len(text)), min(len(text) - 1, rng.randint(1, 40))))
        pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)])]
        assert _streamed(parser, pieces) == (prose, parsed), f"streamed in pieces {pieces}"
    if tokenizer is not None:
        from nanovllm_core.grammar import GuidedDecoding
        from nanovllm_core.grammar.xgrammar_backend import XGrammarBackend

        backend = XGrammarBackend(tokenizer, len(tokenizer))
        required = GuidedDecoding("structural_tag", json.dumps(parser.structural_tag(tools, "required", True)))
        compiled = backend.compile(required)
        for written, admitted in ((parser.format_calls(calls), True), (prose, False)):
            matcher = backend.matcher(compiled)
            token_ids = tokenizer.encode(written, add_special_tokens=False) + [tokenizer.eos_token_id]
            assert all(matcher.accept(t) for t in token_ids) == admitted, f"the required grammar and {written!r}"


def _decoded(calls: list[ParsedToolCall]) -> list[tuple[str, object]]:
    return [(call.name, json.loads(call.arguments)) for call in calls]


def _streamed(parser: ToolCallParser, pieces: list[str]) -> tuple[str, list[ParsedToolCall]]:
    stream = parser.stream()
    content, calls = "", {}
    for piece_content, deltas in [stream.feed(piece) for piece in pieces] + [stream.finish()]:
        content += piece_content
        for delta in deltas:
            if delta.name is not None:
                assert delta.index not in calls and delta.arguments == "", "a call opens with its name alone"
                calls[delta.index] = ParsedToolCall(delta.name, "")
            else:
                calls[delta.index].arguments += delta.arguments
    return content.strip(), list(calls.values())
