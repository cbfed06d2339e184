"""Builds the model, owns the KV cache, turns a scheduled batch into tensors and runs it."""

from __future__ import annotations

import logging
import math
import mmap
import os

import torch
import torch.distributed as dist
from torch import nn

from nanovllm_core import cpu_kernels, plugins
from nanovllm_core.attention import AttentionBackend, AttentionMetadata, forward_context
from nanovllm_core.config import EngineConfig
from nanovllm_core.grammar import apply_grammar_masks
from nanovllm_core.distributed import get_tp_rank
from nanovllm_core.engine.decode_graphs import CpuGraphRunner, CudaGraphRunner, DecodeGraphRunner
from nanovllm_core.engine.scheduler import ScheduledBatch
from nanovllm_core.engine.tensor_parallel import (
    StepInputs,
    WorkerGroup,
    check_tensor_parallel_size,
    init_process_group,
    launched_by_torchrun,
    receive_steps,
    shutdown_process_group,
)
from nanovllm_core.layers.attention import Attention
from nanovllm_core.layers.quantization import quantize_model_
from nanovllm_core.loader import ModelSource, load_model_weights, resolve_model
from nanovllm_core.outputs import SampledToken
from nanovllm_core.pooling import PoolerConfig, embed
from nanovllm_core.engine.sampling_inputs import build_sampling_batch, ending_token_ids, worst_case_sampling_batch

logger = logging.getLogger(__name__)

GiB = 1 << 30
# JSON has no -inf: a token the grammar masked reports this instead (vLLM's floor too)
LOGPROB_FLOOR = -9999.0
CPU_KV_CACHE_GB = 2.0
# prompt tokens scored at once (prompt_logprobs): their logits span the vocabulary
PROMPT_LOGITS_ROWS = 256
# preference order of `auto`; the first one installed and usable wins
CUDA_BACKEND_PREFERENCE = ("flash-attn", "triton", "torch")
CPU_BACKEND_PREFERENCE = ("cpu", "torch")  # torch when the C++ kernels cannot be built


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for, but PyTorch sees no CUDA GPU")
    return torch.device(name)


def load_cpu_kernels() -> None:
    """Build/load the C++ CPU kernels, which the layers then use; PyTorch ops if they cannot be built."""
    try:
        cpu_kernels.load()
    except RuntimeError as error:
        logger.warning("running the CPU path in plain PyTorch, which is slower: %s", error)


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name != "auto":
        return getattr(torch, name)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_kernels.cpu_has_bf16() else torch.float32


def select_attention_backend(name: str, device: torch.device, block_size: int = 16,
                             dtype: torch.dtype = torch.float32) -> type[AttentionBackend]:
    """The backend ``name`` if it can run here (else RuntimeError saying how to fix it); ``auto``:
    the first of the preference order that is installed and can run this block size and dtype."""
    registry = plugins.attention_backends()
    if name == "auto":
        candidates = CUDA_BACKEND_PREFERENCE if device.type == "cuda" else CPU_BACKEND_PREFERENCE
        for candidate in candidates:
            if candidate not in registry:
                continue
            backend = registry.get(candidate)
            try:
                backend.check_available(device)
                backend.check_config(block_size, dtype)
            except RuntimeError as error:
                logger.info("attention backend %s skipped: %s", candidate, error)
                continue
            return backend
        raise RuntimeError(registry.describe_missing("auto"))
    backend = registry.get(name)
    backend.check_available(device)
    backend.check_config(block_size, dtype)
    return backend


class ModelRunner:
    """``pooler_config``: how embeddings pool, for an engine that serves them (rank 0 only)."""

    def __init__(self, config: EngineConfig, source: ModelSource, hf_config, eos_token_ids: set[int],
                 pooler_config: PoolerConfig | None = None):
        self.config = config
        self.hf_config = hf_config
        self.eos_token_ids = eos_token_ids
        self.device = resolve_device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.block_size = config.block_size
        self.max_model_len = min(config.max_model_len, hf_config.max_position_embeddings)
        self.workers: WorkerGroup | None = None
        if config.tensor_parallel_size > 1 and not dist.is_initialized():  # rank 0; other ranks come initialised
            check_tensor_parallel_size(config.tensor_parallel_size, hf_config, self.device)
            self.workers = WorkerGroup(config, self.device, _spawned_worker)
        if config.tensor_parallel_size > 1 and self.device.type == "cuda":
            self.device = torch.device("cuda", torch.cuda.current_device())
        if self.device.type == "cpu":
            load_cpu_kernels()
        self.model = self._build_model(source)
        self.kv_cache_dtype = self._kv_cache_dtype()
        # only rank 0 samples; the other ranks never need (or load) the sampler
        self.sampler = plugins.samplers().get(config.sampler)() if get_tp_rank() == 0 else None
        self.pooler_config = pooler_config
        self.pooler = plugins.poolers().get(pooler_config.pooler)() if pooler_config is not None else None
        self.attention_layers = [m for m in self.model.modules() if isinstance(m, Attention)]
        layer = self.attention_layers[0]
        backend_cls = select_attention_backend(config.attention_backend, self.device, self.block_size, self.dtype)
        self.backend = backend_cls(layer.num_heads, layer.num_kv_heads, layer.head_dim, self.block_size)
        if any(layer.sliding_window for layer in self.attention_layers) and not backend_cls.supports_sliding_window:
            raise ValueError(f"{hf_config.architectures[0]} has sliding-window layers, which attention backend "
                             f"{backend_cls.name!r} does not support; use torch, cpu, triton or flash-attn")
        # an encoder's layers attend within the step and cache nothing
        self.keeps_kv = any(layer.causal for layer in self.attention_layers)
        self.num_blocks = self._allocate_kv_cache() if self.keeps_kv else self._attend_without_cache()
        self.decode_graphs = self._capture_decode_graphs()
        logger.info(
            "model %s on %s in %s, attention backend %s, KV cache %d blocks of %d tokens in %s",
            hf_config.architectures[0], self.device, self.dtype, self.backend.name, self.num_blocks, self.block_size,
            self.kv_cache_dtype,
        )

    def _build_model(self, source: ModelSource) -> nn.Module:
        architecture = self.hf_config.architectures[0]
        model_cls = plugins.model_architectures().get(architecture)
        previous_dtype = torch.get_default_dtype()
        torch.set_default_dtype(self.dtype)
        try:
            with torch.device(self.device):
                model = model_cls(self.hf_config)
        finally:
            torch.set_default_dtype(previous_dtype)
        if self.config.load_format == "dummy":
            _randomise(model)
        else:
            load_model_weights(model, source, self.hf_config)
        method = self._quantization(source)
        if method != "none":
            count = quantize_model_(model, method)
            logger.info("%s quantized linear layers: %d", method, count)
        return model.eval()

    def _quantization(self, source: ModelSource) -> str:
        """--quantization, with auto resolved: the GGUF file's own precision on CPU where the kernels built."""
        method = self.config.quantization
        if method != "auto":
            if method != "none" and self.device.type != "cpu":
                raise ValueError(f"quantization {method!r} runs on the CPU only")
            return method
        if self.device.type != "cpu" or self.config.load_format == "dummy":
            return "none"
        native = source.quantization()
        if native != "none" and not cpu_kernels.loaded():
            logger.warning("the GGUF file is %s, but without the CPU kernels it runs unquantized in %s",
                           native, self.dtype)
            return "none"
        return native

    def _kv_cache_dtype(self) -> torch.dtype:
        """The model's dtype, but float16 for a float32 model with quantized weights on a CPU
        (llama.cpp's cache is float16 too): quantizing the weights moves the outputs further
        than a float16 cache does, and the cache then holds half the bytes, which decode
        attention reads at half the cost."""
        quantized = any(getattr(module, "quantized", None) is not None for module in self.model.modules())
        if self.device.type == "cpu" and quantized and self.dtype == torch.float32:
            return torch.float16
        return self.dtype

    def kv_bytes_per_block(self) -> int:
        layer = self.attention_layers[0]
        per_layer = 2 * self.block_size * layer.num_kv_heads * layer.head_dim * self.kv_cache_dtype.itemsize
        return per_layer * len(self.attention_layers)

    def _kv_cache_budget(self) -> int:
        if self.device.type == "cpu":
            return self._cpu_kv_cache_budget()
        if self.config.kv_cache_memory_gb is not None:
            return int(self.config.kv_cache_memory_gb * GiB)
        activation_peak = self._profile_activation_memory()
        free, total = torch.cuda.mem_get_info(self.device)
        budget = int(total * self.config.gpu_memory_utilization - (total - free) - activation_peak)
        logger.info("GPU: %.1f GiB in use, activation peak %.2f GiB, KV cache %.1f GiB",
                    (total - free) / GiB, activation_peak / GiB, budget / GiB)
        return budget

    def _cpu_kv_cache_budget(self) -> int:
        """What the configuration can use (max_num_seqs sequences of max_model_len tokens),
        at most kv_cache_memory_gb (2 GiB unset): a one-user server does not hold 2 GiB."""
        cap = int((self.config.kv_cache_memory_gb or CPU_KV_CACHE_GB) * GiB)
        usable = self.config.max_num_seqs * -(-self.max_model_len // self.block_size) * self.kv_bytes_per_block()
        logger.info("KV cache: %.0f MiB (the configuration can use %.0f MiB, capped at %.0f MiB)",
                    min(usable, cap) / (1 << 20), usable / (1 << 20), cap / (1 << 20))
        return min(usable, cap)

    def _set_kv_cache(self, num_blocks: int) -> None:
        shape = self.backend.kv_cache_shape(num_blocks)
        for layer in self.attention_layers:
            layer.backend = self.backend
            layer.k_cache = self._zeroed_cache(shape)
            layer.v_cache = self._zeroed_cache(shape)

    def _zeroed_cache(self, shape: tuple[int, ...]) -> torch.Tensor:
        """On a CPU, mapped from anonymous memory: the system's zero pages, which become
        resident only when a block is first written, so a server holds the memory its
        sequences use rather than all that the configuration could (torch.zeros writes
        every page at start)."""
        if self.device.type != "cpu":
            return torch.zeros(shape, dtype=self.kv_cache_dtype, device=self.device)
        count = math.prod(shape)
        pages = mmap.mmap(-1, max(count * self.kv_cache_dtype.itemsize, 1))
        return torch.frombuffer(pages, dtype=self.kv_cache_dtype, count=count).view(shape)

    @torch.inference_mode()
    def _profile_activation_memory(self) -> int:
        """Peak memory of the largest step the scheduler can make (one prefill of
        max_num_batched_tokens, logits for max_num_seqs rows and the sampler on them with
        every option on), beyond the weights."""
        tokens = min(self.config.max_num_batched_tokens, self.hf_config.max_position_embeddings)
        num_blocks = -(-tokens // self.block_size)
        self._set_kv_cache(num_blocks)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        metadata = AttentionMetadata(
            num_decode_tokens=0,
            slot_mapping=torch.arange(tokens, device=self.device),
            block_tables=torch.arange(num_blocks, dtype=torch.int32, device=self.device)[None],
            context_lens=torch.tensor([tokens], dtype=torch.int32, device=self.device),
            query_start_loc=torch.tensor([0, tokens], dtype=torch.int32, device=self.device),
            max_query_len=tokens, max_context_len=tokens, query_lens_host=[tokens], context_lens_host=[tokens],
        )
        with forward_context(metadata):
            hidden_states = self.model(torch.zeros(tokens, dtype=torch.int64, device=self.device),
                                       torch.arange(tokens, device=self.device))
        rows = min(tokens, self.config.max_num_seqs)
        logits = self.model.compute_logits(hidden_states[:rows]).float()
        if self.sampler is not None:  # rank 0 samples
            self.sampler(logits, worst_case_sampling_batch(rows, self.hf_config.vocab_size).to(self.device))
        peak = torch.cuda.max_memory_allocated(self.device) - before
        self._set_kv_cache(0)
        torch.cuda.empty_cache()
        return peak

    def _allocate_kv_cache(self) -> int:
        num_blocks = self._kv_cache_budget() // self.kv_bytes_per_block()
        if dist.is_initialized():  # every rank must agree on the block count
            agreed = torch.tensor([num_blocks], device=self.device)
            dist.all_reduce(agreed, op=dist.ReduceOp.MIN)
            num_blocks = int(agreed.item())
        if num_blocks < 1:
            raise RuntimeError("the KV-cache memory budget is too small for a single block")
        self._set_kv_cache(num_blocks)
        return num_blocks

    def _attend_without_cache(self) -> int:
        """Give the layers their backend and no cache. The blocks returned exist only
        for the scheduler's accounting: enough for max_num_seqs sequences of max_model_len."""
        for layer in self.attention_layers:
            layer.backend = self.backend
        return self.config.max_num_seqs * -(-self.max_model_len // self.block_size)

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

    def _prepare(self, batch: ScheduledBatch) -> tuple[StepInputs, list[bool], list[tuple[int, int, int]],
                                                        list[tuple[int, list[int]]]]:
        """The step's tensors; for each sequence whether it samples a token this step (its
        last token is computed) or is a prompt still being prefilled in chunks; the
        embedding requests, whole in this step, as (row, first token, end) in the flat batch;
        and the prompt tokens to score (prompt_logprobs) as (row, their ids)."""
        input_ids: list[int] = []
        positions: list[int] = []
        token_rows: list[int] = []
        context_lens: list[int] = []
        sample_indices: list[int] = []
        samples: list[bool] = []
        pooled: list[tuple[int, int, int]] = []
        prompt_indices: list[int] = []
        scored: list[tuple[int, list[int]]] = []
        for row, (seq, num_new) in enumerate(zip(batch.seqs, batch.num_new_tokens)):
            start = seq.num_computed_tokens
            end = start + num_new
            input_ids.extend(seq.token_ids[start:end])
            positions.extend(range(start, end))
            token_rows.extend([row] * num_new)
            context_lens.append(end)
            samples.append(end == len(seq) and not seq.is_pooling)
            if samples[-1]:
                sample_indices.append(len(input_ids) - 1)
            elif seq.is_pooling:  # the scheduler never splits an embedding request
                pooled.append((row, len(input_ids) - num_new, len(input_ids)))
            if seq.scores_prompt:  # position p's logits score prompt token p + 1, once (not again after preemption)
                positions_scored = range(max(start, len(seq.prompt_logprobs) - 1), min(end, seq.num_prompt_tokens - 1))
                prompt_indices.extend(len(input_ids) - end + p for p in positions_scored)
                scored.append((row, [seq.token_ids[p + 1] for p in positions_scored]))
        width = max(len(seq.block_table) for seq in batch.seqs)
        block_tables = torch.tensor(
            [seq.block_table + [0] * (width - len(seq.block_table)) for seq in batch.seqs], dtype=torch.int64
        )
        positions_t = torch.tensor(positions, dtype=torch.int64)
        slots = block_tables[torch.tensor(token_rows), positions_t // self.block_size] * self.block_size
        slots += positions_t % self.block_size
        query_lens = batch.num_new_tokens
        metadata = AttentionMetadata(
            num_decode_tokens=batch.num_decodes,
            slot_mapping=slots.to(self.device, non_blocking=True),
            block_tables=block_tables.to(self.device, dtype=torch.int32, non_blocking=True),
            context_lens=torch.tensor(context_lens, dtype=torch.int32).to(self.device, non_blocking=True),
            query_start_loc=torch.tensor([0, *_cumsum(query_lens)], dtype=torch.int32).to(self.device),
            max_query_len=max(query_lens),
            max_context_len=max(context_lens),
            query_lens_host=list(query_lens),
            context_lens_host=context_lens,
        )
        inputs = StepInputs(
            input_ids=torch.tensor(input_ids, dtype=torch.int64).to(self.device, non_blocking=True),
            positions=positions_t.to(self.device, non_blocking=True),
            metadata=metadata,
            sample_indices=torch.tensor(sample_indices, dtype=torch.int64).to(self.device, non_blocking=True),
            prompt_indices=torch.tensor(prompt_indices, dtype=torch.int64).to(self.device, non_blocking=True),
        )
        return inputs, samples, pooled, scored

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
        inputs, samples, pooled, scored = self._prepare(batch)
        if self.workers is not None:
            self.workers.check_alive()
            inputs.broadcast(len(batch))
        hidden_states, logits = self._forward(inputs, len(batch))
        if scored:
            self._score_prompts(batch, hidden_states, inputs.prompt_indices, scored)
        results: list = [None] * len(batch)
        for row, start, end in pooled:
            results[row] = embed(self.pooler, hidden_states[start:end], self.pooler_config.normalize,
                                 batch.seqs[row].params)
        if logits is None:
            return results
        sampled_seqs = [seq for seq, sample in zip(batch.seqs, samples) if sample]
        constrained = [(row, seq.grammar) for row, seq in enumerate(sampled_seqs) if seq.constrained]
        only_end = set()
        if constrained:
            apply_grammar_masks(logits, constrained)
            only_end = self._rows_that_can_only_end(logits, sampled_seqs, [row for row, _ in constrained])
        sampling = build_sampling_batch(sampled_seqs, self.hf_config.vocab_size, self.eos_token_ids, only_end)
        tokens = iter(_to_host(self.sampler(logits, sampling.to(logits.device)), sampling.num_logprobs))
        return [next(tokens) if sample else result for sample, result in zip(samples, results)]

    def _prompt_logits(self, hidden_states: torch.Tensor, indices: torch.Tensor):
        """The logits at ``indices``, PROMPT_LOGITS_ROWS at a time; every rank runs this."""
        for start in range(0, indices.numel(), PROMPT_LOGITS_ROWS):
            yield self.model.compute_logits(hidden_states[indices[start : start + PROMPT_LOGITS_ROWS]]).float()

    def _score_prompts(self, batch: ScheduledBatch, hidden_states: torch.Tensor, indices: torch.Tensor,
                       scored: list[tuple[int, list[int]]]) -> None:
        """Append each scored prompt token's logprob, rank and top alternatives to its sequence."""
        targets = torch.tensor([t for _, ids in scored for t in ids], device=hidden_states.device)
        k = max(batch.seqs[row].params.prompt_logprobs for row, _ in scored)
        entries = []
        for logits, chunk in zip(self._prompt_logits(hidden_states, indices), targets.split(PROMPT_LOGITS_ROWS)):
            logprobs = logits.log_softmax(dim=-1)
            chosen = logprobs.gather(1, chunk[:, None])[:, 0]
            ranks = (logprobs > chosen[:, None]).sum(dim=-1) + 1
            top_values, top_ids = logprobs.topk(k, dim=-1)
            entries.extend(zip(chosen.clamp(min=LOGPROB_FLOOR).tolist(), ranks.tolist(), top_ids.tolist(),
                               top_values.clamp(min=LOGPROB_FLOOR).tolist()))
        entries = iter(entries)
        for row, token_ids in scored:
            seq = batch.seqs[row]
            keep = seq.params.prompt_logprobs
            for token_id in token_ids:
                logprob, rank, top_ids, top_values = next(entries)
                seq.prompt_logprobs.append(
                    SampledToken(token_id, logprob, list(zip(top_ids[:keep], top_values[:keep])), rank))

    def _rows_that_can_only_end(self, logits: torch.Tensor, seqs: list, rows: list[int]) -> set[int]:
        """Constrained rows, still short of min_tokens, whose grammar allows nothing but ending:
        banning the end there would leave no token at all."""
        only_end = set()
        for row in rows:
            seq = seqs[row]
            if seq.num_output_tokens >= seq.params.min_tokens:
                continue
            end_ids = [t for t in ending_token_ids(seq.params, self.eos_token_ids) if 0 <= t < logits.shape[1]]
            allowed = torch.isfinite(logits[row])
            if int(allowed.sum()) == int(allowed[end_ids].sum()):
                only_end.add(row)
        return only_end

    @torch.inference_mode()
    def worker_loop(self) -> None:
        """Ranks 1..N-1: run each step rank 0 broadcasts, until it says stop."""
        for inputs, num_seqs in receive_steps(self.device):
            hidden_states, _ = self._forward(inputs, num_seqs)
            for _ in self._prompt_logits(hidden_states, inputs.prompt_indices):  # rank 0's collectives, matched
                pass

    def check_health(self) -> None:
        """Raise if a tensor-parallel worker has died."""
        if self.workers is not None:
            self.workers.check_alive()

    def shutdown(self) -> None:
        if self.workers is not None:
            self.workers.shutdown()
            self.workers = None


@torch.no_grad()
def _randomise(model: nn.Module) -> None:
    """Small random weights, for benchmarks where only speed matters."""
    for param in model.parameters():
        param.uniform_(-0.02, 0.02) if param.dim() > 1 else param.fill_(1.0)


def _cumsum(values: list[int]) -> list[int]:
    total, out = 0, []
    for value in values:
        total += value
        out.append(total)
    return out


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


def run_worker(config: EngineConfig, rank: int, world_size: int, on_start=None) -> None:
    """Everything a rank other than 0 does, from start to stop."""
    device = resolve_device(config.device)
    if on_start is not None:
        on_start()
    init_process_group(rank, world_size, device)
    try:
        source = resolve_model(config.model, need_weights=config.load_format != "dummy")
        runner = ModelRunner(config, source, source.load_config(), eos_token_ids=set())
        runner.worker_loop()
    finally:
        shutdown_process_group()


def _spawned_worker(rank: int, world_size: int, config_json: str, env: dict[str, str], started) -> None:
    """The target of the processes ``WorkerGroup`` spawns."""
    os.environ.update(env)
    run_worker(EngineConfig.model_validate_json(config_json), rank, world_size, started.set)


def work_unless_rank_zero(config: EngineConfig) -> None:
    """Under torchrun every rank runs the user's program: ranks other than 0
    become workers here, and exit when rank 0 stops them."""
    if launched_by_torchrun() and int(os.environ["RANK"]) != 0:
        run_worker(config, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
        raise SystemExit(0)
