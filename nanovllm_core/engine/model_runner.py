"""``ModelRunner``: the model on its device with its KV cache; one call runs one scheduled step
(forward, prompt scores, pooling, grammar masks, sampling) and returns what each sequence got."""

from __future__ import annotations

import logging

import torch

from nanovllm_core import plugins
from nanovllm_core.attention import forward_context
from nanovllm_core.config import EngineConfig
from nanovllm_core.distributed import get_tp_rank
from nanovllm_core.engine import kv_cache
from nanovllm_core.engine.decode_graphs import CpuGraphRunner, CudaGraphRunner, DecodeGraphRunner
from nanovllm_core.engine.model_loader import build_model
from nanovllm_core.engine.model_spec import ModelSpec
from nanovllm_core.engine.platform import load_cpu_kernels, resolve_device, resolve_dtype, select_attention_backend
from nanovllm_core.engine.prompt_scoring import prompt_logits, score_prompts
from nanovllm_core.engine.sampling_inputs import build_sampling_batch
from nanovllm_core.engine.scheduler import ScheduledBatch
from nanovllm_core.engine.sequence import Sequence
from nanovllm_core.engine.step_inputs import prepare_step
from nanovllm_core.engine.structured_output import mask_logits
from nanovllm_core.engine.tensor_parallel import StepInputs, WorkerGroup, receive_steps
from nanovllm_core.layers.attention import Attention
from nanovllm_core.outputs import LOGPROB_FLOOR, SampledToken
from nanovllm_core.pooling import embed

logger = logging.getLogger(__name__)


class ModelRunner:
    """``workers``: the tensor-parallel ranks rank 0 spawned, which it drives step by step."""

    def __init__(self, config: EngineConfig, spec: ModelSpec, workers: WorkerGroup | None = None):
        self.config = config
        self.spec = spec
        self.workers = workers
        self.device = resolve_device(config.device)
        if config.tensor_parallel_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.block_size = config.block_size
        self.max_model_len = min(config.max_model_len, spec.hf_config.max_position_embeddings)
        if self.device.type == "cpu":
            load_cpu_kernels()
        self.model = build_model(spec, config, self.device, self.dtype)
        # only rank 0 samples and pools; the other ranks never need (or load) them
        rank_zero = get_tp_rank() == 0
        self.sampler = plugins.samplers().get(config.sampler)() if rank_zero else None
        pooler_config = spec.pooler_config
        self.pooler = plugins.poolers().get(pooler_config.pooler)() if rank_zero and pooler_config else None
        self.attention_layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        self.backend = self._attention_backend()
        self.kv_cache = kv_cache.KvCache(self.attention_layers, self.backend, self.block_size,
                                         kv_cache.kv_cache_dtype(self.model, self.device, self.dtype), self.device)
        # an encoder's layers attend within the step and cache nothing
        self.keeps_kv = any(layer.causal for layer in self.attention_layers)
        self._allocate_kv_cache()
        self.decode_graphs = self._capture_decode_graphs()
        logger.info("model %s on %s in %s, attention backend %s, KV cache %d blocks of %d tokens in %s",
                    spec.architecture, self.device, self.dtype, self.backend.name, self.num_blocks, self.block_size,
                    self.kv_cache.dtype)

    @property
    def num_blocks(self) -> int:
        return self.kv_cache.num_blocks

    def _attention_backend(self):
        layer = self.attention_layers[0]
        backend_cls = select_attention_backend(self.config.attention_backend, self.device, self.block_size, self.dtype)
        if any(layer.sliding_window for layer in self.attention_layers) and not backend_cls.supports_sliding_window:
            raise ValueError(f"{self.spec.architecture} has sliding-window layers, which attention backend "
                             f"{backend_cls.name!r} does not support; use torch, cpu, triton or flash-attn")
        return backend_cls(layer.num_heads, layer.num_kv_heads, layer.head_dim, self.block_size)

    def _allocate_kv_cache(self) -> None:
        """The blocks the budget holds; for an encoder, only enough for the scheduler's accounting
        (max_num_seqs sequences of max_model_len)."""
        cache = self.kv_cache
        if not self.keeps_kv:
            cache.attend_without_cache(cache.blocks_for(self.config.max_num_seqs, self.max_model_len))
            return
        if self.device.type == "cpu":
            budget = kv_cache.cpu_budget(cache, self.config, self.max_model_len)
        else:
            budget = kv_cache.gpu_budget(self.config, self.device, self._profile_activation_memory)
        cache.allocate(cache.agreed_num_blocks(budget))

    def _profile_activation_memory(self) -> int:
        return kv_cache.profile_activation_memory(self.model, self.sampler, self.kv_cache, self.config,
                                                  self.spec.hf_config)

    def _capture_decode_graphs(self) -> DecodeGraphRunner | None:
        if self.config.enforce_eager or not self.keeps_kv:
            return None
        max_batch_size, max_blocks = self.config.max_num_seqs, -(-self.max_model_len // self.block_size)
        if self.device.type == "cuda" and self.backend.supports_cuda_graphs:
            return CudaGraphRunner(self.model, min(max_batch_size, 512), max_blocks, self.block_size, self.device)
        # a recorded graph would hold a tensor-parallel step's collectives as they were recorded
        if self.device.type == "cpu" and self.backend.supports_cpu_graphs and self.config.tensor_parallel_size == 1:
            return CpuGraphRunner(self.model, max_batch_size, max_blocks, self.block_size, self.device)
        return None

    def _forward(self, inputs: StepInputs, num_seqs: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The hidden states of every token, and the logits of the sampled rows (None if
        no row samples), the same on every rank."""
        metadata = inputs.metadata
        graphs = self.decode_graphs
        if graphs is not None and graphs.can_run(num_seqs, metadata.num_decode_tokens, metadata.block_tables.shape[1]):
            hidden_states = graphs.run(inputs.input_ids, inputs.positions, metadata)
        else:
            with forward_context(metadata):
                hidden_states = self.model(inputs.input_ids, inputs.positions)
        if not inputs.sample_indices.numel():
            return hidden_states, None
        return hidden_states, self.model.compute_logits(hidden_states[inputs.sample_indices]).float()

    @torch.inference_mode()
    def execute(self, batch: ScheduledBatch) -> list[SampledToken | torch.Tensor | None]:
        """Run one step; return a token for each sequence of the batch whose last token
        was computed, the embedding (float32, CPU) of each embedding request, and None
        for prompts still being prefilled in chunks."""
        step = prepare_step(batch, self.block_size, self.device)
        if self.workers is not None:
            self.workers.check_alive()
            step.inputs.broadcast(len(batch))
        hidden_states, logits = self._forward(step.inputs, len(batch))
        if step.scored:
            score_prompts(self.model, batch, hidden_states, step.inputs.prompt_indices, step.scored)
        results: list = [None] * len(batch)
        for row, start, end in step.pooled:
            results[row] = embed(self.pooler, hidden_states[start:end], self.spec.pooler_config.normalize,
                                 batch.seqs[row].params)
        if logits is None:
            return results
        tokens = iter(self._sample(logits, [seq for seq, sample in zip(batch.seqs, step.samples) if sample]))
        return [next(tokens) if sample else result for sample, result in zip(step.samples, results)]

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> list[SampledToken]:
        only_end = mask_logits(logits, seqs, self.spec.eos_token_ids)
        sampling = build_sampling_batch(seqs, self.spec.vocab_size, self.spec.eos_token_ids, only_end)
        return _to_host(self.sampler(logits, sampling.to(logits.device)), sampling.num_logprobs)

    @torch.inference_mode()
    def worker_loop(self) -> None:
        """Ranks 1..N-1: run each step rank 0 broadcasts, until it says stop."""
        for inputs, num_seqs in receive_steps(self.device):
            hidden_states, _ = self._forward(inputs, num_seqs)
            for _ in prompt_logits(self.model, hidden_states, inputs.prompt_indices):  # rank 0's collectives, matched
                pass

    def check_health(self) -> None:
        """Raise if a tensor-parallel worker has died."""
        if self.workers is not None:
            self.workers.check_alive()

    def shutdown(self) -> None:
        if self.workers is not None:
            self.workers.shutdown()
            self.workers = None


def _to_host(output, num_logprobs: list[int | None]) -> list[SampledToken]:
    tokens = output.token_ids.tolist()
    if output.logprobs is None:
        return [SampledToken(t) for t in tokens]
    chosen = output.logprobs.clamp(min=LOGPROB_FLOOR).tolist()
    top_values = output.top_logprobs.clamp(min=LOGPROB_FLOOR).tolist()
    top_ids = output.top_token_ids.tolist()
    sampled = []
    for row, token in enumerate(tokens):
        k = num_logprobs[row]
        if k is None:
            sampled.append(SampledToken(token))
        else:
            sampled.append(SampledToken(token, chosen[row], list(zip(top_ids[row][:k], top_values[row][:k]))))
    return sampled
