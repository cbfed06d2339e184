"""The engine: requests in, one continuous-batching step at a time, outputs out."""

from __future__ import annotations

import logging
import random

import torch.distributed as dist

from nanovllm_core.config import EngineConfig
from nanovllm_core.engine.block_manager import BlockManager
from nanovllm_core.engine.model_runner import ModelRunner
from nanovllm_core.engine.model_spec import ModelSpec
from nanovllm_core.engine.output_processor import OutputProcessor, RowFailed
from nanovllm_core.engine.platform import resolve_device
from nanovllm_core.engine.scheduler import ScheduledBatch, Scheduler
from nanovllm_core.engine.sequence import Sequence
from nanovllm_core.engine.structured_output import StructuredOutputManager
from nanovllm_core.engine.tensor_parallel import WorkerGroup, check_tensor_parallel_size
from nanovllm_core.engine.tp_worker import spawned_worker
from nanovllm_core.errors import InvalidRequestError
from nanovllm_core.loader import ModelSource
from nanovllm_core.outputs import RequestOutput
from nanovllm_core.pooling import PoolingParams
from nanovllm_core.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

SEED_MASK = (1 << 63) - 1


class LLMEngine:
    """``source``: the model, when the caller has resolved it already (else ``config.model``)."""

    def __init__(self, config: EngineConfig, source: ModelSource | None = None):
        self.config = config
        self.spec = ModelSpec.load(config, source)
        self.runner = ModelRunner(config, self.spec, self._spawn_workers())
        self.max_model_len = fit_max_model_len(config, self.spec.task, self.runner.max_model_len,
                                               self.runner.num_blocks)
        # an embedding request is computed whole, once: nothing to reuse, and no chunks
        prefix_caching = config.enable_prefix_caching and self.spec.task == "generate"
        self.block_manager = BlockManager(self.runner.num_blocks, config.block_size, prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens)
        self.output_processor = OutputProcessor(self.spec.tokenizer, self.spec.eos_token_ids, self.max_model_len)
        self.structured_output = StructuredOutputManager(self.spec, config)
        self.model_info = self.spec.model_info(self.max_model_len)
        self.num_steps = 0
        self._seeds = random.Random(config.seed)

    def _spawn_workers(self) -> WorkerGroup | None:
        """Tensor-parallel ranks 1..N-1, unless they exist already (torchrun started them)."""
        if self.config.tensor_parallel_size == 1 or dist.is_initialized():
            return None
        device = resolve_device(self.config.device)
        check_tensor_parallel_size(self.config.tensor_parallel_size, self.spec.hf_config, device)
        return WorkerGroup(self.config, device, spawned_worker)

    # what callers read

    @property
    def tokenizer(self):
        return self.spec.tokenizer

    @property
    def vocab_size(self) -> int:
        return self.spec.vocab_size

    @property
    def task(self) -> str:
        return self.spec.task

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self.spec.eos_token_ids

    @property
    def requests(self) -> dict:
        return self.output_processor.requests

    # add, step, abort

    def tokenize(self, prompt: str | list[int]) -> list[int]:
        if not isinstance(prompt, str):
            return list(prompt)
        if self.tokenizer is None:
            raise InvalidRequestError("no tokenizer is loaded (skip_tokenizer_init): give token ids", param="prompt")
        return self.tokenizer.encode(prompt, add_special_tokens=True)

    def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams | PoolingParams,
                    grammar: object | None = None) -> Sequence:
        """Check the request, then add it; InvalidRequestError if it cannot run."""
        prompt_token_ids = self.tokenize(prompt)
        info = self.model_info
        check = info.check_embedding_request if isinstance(params, PoolingParams) else info.check_request
        return self.add_checked_request(request_id, prompt_token_ids, check(prompt_token_ids, params), grammar)

    def add_checked_request(self, request_id: str, prompt_token_ids: list[int],
                            params: SamplingParams | PoolingParams, grammar: object | None = None) -> Sequence:
        """Add a request that ``model_info.check_request`` passed (an engine client checks it
        before it reaches this thread). ``grammar``: ``params.guided`` compiled already, else compiled here."""
        if request_id in self.output_processor.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        if isinstance(params, PoolingParams):
            seq = Sequence(request_id, prompt_token_ids, params, seed=0)
        else:
            seed = params.seed if params.seed is not None else self._seeds.getrandbits(63)
            seq = Sequence(request_id, prompt_token_ids, params, seed & SEED_MASK)
            if params.guided is not None:
                self.structured_output.attach(seq, grammar)
        self.output_processor.add(seq)
        self.scheduler.add(seq)
        return seq

    def abort_request(self, request_id: str) -> bool:
        """Stop a request now and free its KV blocks; False if it is unknown or done."""
        if not self.output_processor.abort(request_id):
            return False
        self.scheduler.abort(request_id)
        return True

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    def step(self) -> list[RequestOutput]:
        self.num_steps += 1
        batch = self.scheduler.schedule()
        if not batch:
            return []
        try:
            results = self.runner.execute(batch)
        except Exception:
            results = self._execute_apart(batch)
        outputs = self.output_processor.process(batch, results)
        self.scheduler.postprocess(batch)
        return outputs

    def _execute_apart(self, batch: ScheduledBatch) -> list:
        """A step raised: run its sequences one at a time, so that a request that breaks
        the model or the sampler fails alone (``RowFailed``) and the others go on. If every
        one fails, a probe sequence of the engine's own tells a broken engine (raise) from
        requests that are each bad."""
        logger.exception("a step of %d sequences failed; running them one at a time", len(batch))
        results = []
        for seq, num_new in zip(batch.seqs, batch.num_new_tokens):
            try:
                results.append(self.runner.execute(ScheduledBatch([seq], [num_new]))[0])
            except Exception:
                logger.exception("request %s failed the step on its own; failing it", seq.request_id)
                results.append(RowFailed())
        if all(isinstance(result, RowFailed) for result in results):
            self._probe()
        return results

    def _probe(self) -> None:
        """Run one token of a sequence no request sent; raise if even that fails."""
        probe = Sequence("engine-probe", [0], SamplingParams(temperature=0.0, max_tokens=1), seed=0)
        if not self.block_manager.can_admit(probe, [], 1):
            return  # no free block to probe with: the running sequences show soon enough
        self.block_manager.admit(probe, [])
        self.block_manager.append_slots(probe, 1)
        try:
            self.runner.execute(ScheduledBatch([probe], [1]))
        except Exception as error:
            raise RuntimeError("the engine fails a step of its own probe sequence too: it is broken") from error
        finally:
            self.block_manager.free(probe)

    def check_health(self) -> None:
        """Raise if part of the engine (a tensor-parallel worker) has died."""
        self.runner.check_health()

    def shutdown(self) -> None:
        """Stop the worker processes, if any; the engine is unusable afterwards."""
        self.runner.shutdown()


def fit_max_model_len(config: EngineConfig, task: str, max_model_len: int, num_blocks: int) -> int:
    """max_model_len within what can run: no longer than the whole KV cache (a sequence that
    long could never run), and for embeddings, which run whole in one step, no longer than a
    step's budget. An explicit setting past a limit fails here, with the numbers; the default is capped."""
    limits = [(num_blocks * config.block_size,
               f"is more than the KV cache holds: {num_blocks} blocks of {config.block_size} tokens",
               "raise kv_cache_memory_gb (gpu_memory_utilization on a GPU) or lower max_model_len")]
    if task == "embed":
        limits.append((config.max_num_batched_tokens, "> max_num_batched_tokens: embedding inputs run whole in one step",
                       "raise max_num_batched_tokens or lower max_model_len"))
    for limit, what, remedy in limits:
        if max_model_len <= limit:
            continue
        message = f"max_model_len {max_model_len} {what} = {limit} tokens"
        if "max_model_len" in config.model_fields_set:
            raise ValueError(f"{message}; {remedy}")
        logger.warning("%s; max_model_len is capped to %d", message, limit)
        max_model_len = limit
    return max_model_len
