"""Helpers for testing nanovllm and its plugins (used by nanovllm's own tests).

- ``registered_plugin(obj)``: register a plugin object for the duration of a block.
- ``save_random_checkpoint(config, directory, tokenizer)``: a transformers model
  with random weights, saved as a real HF checkpoint (safetensors + tokenizer).
- ``LogitsRecorder``: a greedy sampler that keeps every logits row it sees, keyed
  by the request's seed, for numerical parity tests against transformers.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import torch

from nanovllm_core.hookspecs import hookimpl
from nanovllm_core.plugins import get_plugin_manager
from nanovllm_core.sampling import SamplerOutput, SamplingBatch


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
