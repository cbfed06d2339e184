"""The offline interface, as nano-vllm users know it."""

from __future__ import annotations

from collections.abc import Sequence as SequenceOf
from typing import Any

import torch
from tqdm.auto import tqdm

from nanovllm_core.config import EngineConfig
from nanovllm_core.engine.llm_engine import LLMEngine
from nanovllm_core.engine.tp_worker import work_unless_rank_zero
from nanovllm_core.outputs import RequestOutput
from nanovllm_core.pooling import PoolingParams
from nanovllm_core.sampling_params import SamplingParams


class LLM:
    """``LLM(model=None, **settings)``: ``model`` is an HF directory or a .gguf
    file (none: the embedded SmolLM2); settings are any ``EngineConfig`` field."""

    def __init__(self, model: str | None = None, **settings: Any):
        if model is not None:
            settings["model"] = model
        self.config = EngineConfig(**settings)
        work_unless_rank_zero(self.config)
        self.engine = LLMEngine(self.config)
        self.tokenizer = self.engine.tokenizer

    def shutdown(self) -> None:
        """Stop tensor-parallel workers now (they also stop when the program exits)."""
        self.engine.shutdown()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc_info) -> None:
        self.shutdown()

    def generate(
        self,
        prompts: str | list[int] | SequenceOf[str | list[int]],
        sampling_params: SamplingParams | SequenceOf[SamplingParams] | None = None,
        use_tqdm: bool = True,
    ) -> list[dict[str, Any]]:
        """Generate for every prompt (text or token ids); results in prompt order, each
        ``{"text", "token_ids", "finish_reason", "prompt_token_ids", "prompt_logprobs"}``
        (the last: with the ``prompt_logprobs`` sampling parameter, one ``SampledToken`` per
        prompt token after the first, which has None)."""
        prompts = _as_list(prompts)
        if sampling_params is None:
            sampling_params = SamplingParams()
        if isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise ValueError(f"{len(prompts)} prompts but {len(sampling_params)} sampling params")
        outputs = self._run(prompts, sampling_params, "Generating", use_tqdm)
        return [
            {"text": output.text, "token_ids": list(output.output_token_ids), "finish_reason": output.finish_reason,
             "prompt_token_ids": prompt_ids, "prompt_logprobs": prompt_logprobs}
            for output, prompt_ids, prompt_logprobs in outputs
        ]

    def embed(
        self, prompts: str | list[int] | SequenceOf[str | list[int]], pooling_params: PoolingParams | None = None,
        use_tqdm: bool = True,
    ) -> list[torch.Tensor]:
        """The embedding of every prompt (text or token ids), in prompt order, for a model
        served with task embed: float32 tensors, pooled as the engine is configured."""
        prompts = _as_list(prompts)
        params = [pooling_params or PoolingParams()] * len(prompts)
        return [output.embedding for output, _, _ in self._run(prompts, params, "Embedding", use_tqdm)]

    def _run(self, prompts: list, params: list, description: str, use_tqdm: bool) -> list[tuple]:
        """Add every request, step until all finish; each final output with its prompt's ids
        and prompt logprobs (None unless asked for)."""
        request_ids = [f"offline-{id(self)}-{i}" for i in range(len(prompts))]
        seqs = []
        try:
            for request_id, prompt, request_params in zip(request_ids, prompts, params):
                seqs.append(self.engine.add_request(request_id, prompt, request_params))
        except ValueError:  # a bad prompt: the ones before it must not linger in the engine
            for seq in seqs:
                self.engine.abort_request(seq.request_id)
            raise
        finals: dict[str, RequestOutput] = {}
        prompt_logprobs: dict[str, list] = {}
        with tqdm(total=len(prompts), desc=description, disable=not use_tqdm, unit="req") as progress:
            while self.engine.has_unfinished_requests():
                for output in self.engine.step():
                    if output.prompt_logprobs is not None:
                        prompt_logprobs[output.request_id] = output.prompt_logprobs
                    if output.finished:
                        finals[output.request_id] = output
                        progress.update(1)
        return [(finals[seq.request_id], seq.prompt_token_ids, prompt_logprobs.get(seq.request_id)) for seq in seqs]


def _as_list(prompts) -> list:
    """One prompt (text or token ids) or many, as a list of prompts."""
    return [prompts] if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)) else list(prompts)
