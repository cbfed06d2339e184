"""The engine: requests in, one continuous-batching step at a time, outputs out."""

from __future__ import annotations

import json
import logging
import random
import threading

from nanovllm_core import plugins
from nanovllm_core.config import EngineConfig
from nanovllm_core.detokenizer import IncrementalDetokenizer, StopStringMatcher
from nanovllm_core.engine.block_manager import BlockManager
from nanovllm_core.engine.model_runner import ModelRunner
from nanovllm_core.engine.scheduler import ScheduledBatch, Scheduler
from nanovllm_core.engine.sequence import Sequence
from nanovllm_core.errors import InvalidRequestError
from nanovllm_core.grammar import GrammarBackend, GuidedDecoding
from nanovllm_core.grammar.schema_check import check_constraint
from nanovllm_core.loader import resolve_model
from nanovllm_core.model_info import ModelInfo
from nanovllm_core.outputs import RequestOutput, SampledToken
from nanovllm_core.pooling import PoolerConfig, PoolingParams
from nanovllm_core.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

SEED_MASK = (1 << 63) - 1
# what generation_config.json may set for requests that leave it out (vLLM's list)
SAMPLING_DEFAULT_FIELDS = ("temperature", "top_p", "top_k", "min_p", "repetition_penalty")


class RequestState:
    """A sequence and the text made from it so far (none for an embedding request)."""

    def __init__(self, seq: Sequence, detokenizer: IncrementalDetokenizer | None):
        self.seq = seq
        self.detokenizer = detokenizer
        if not seq.is_pooling:
            self.stops = StopStringMatcher(seq.params.stop, seq.params.include_stop_str_in_output)
            self.stop_token_ids = frozenset(seq.params.stop_token_ids)
        self.pieces: list[str] = []  # the emitted text, joined once at the end


class LLMEngine:
    def __init__(self, config: EngineConfig):
        self.config = config
        self.source = resolve_model(config.model, need_weights=config.load_format != "dummy")
        self.hf_config = self.source.load_config()
        self.tokenizer = None if config.skip_tokenizer_init else self.source.load_tokenizer(config.tokenizer)
        self.model_cls = plugins.model_architectures().get(self.hf_config.architectures[0])
        self.eos_token_ids = self._eos_token_ids()
        self.task, pooler_config = self._resolve_task()
        self.runner = ModelRunner(config, self.source, self.hf_config, self.eos_token_ids, pooler_config)
        self.max_model_len = self.runner.max_model_len  # the setting, capped to the model's context
        # an embedding request is computed whole, once: nothing to reuse, and no chunks
        prefix_caching = config.enable_prefix_caching and self.task == "generate"
        self.block_manager = BlockManager(self.runner.num_blocks, config.block_size, prefix_caching)
        self._fit_max_model_len_to_cache()
        self._fit_max_model_len_to_step()
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens)
        self.model_info = ModelInfo(
            self.max_model_len, self.hf_config.vocab_size, self.tokenizer, self._sampling_defaults(), self.task,
            self.hf_config.hidden_size if self.task == "embed" else None, _matryoshka(self.hf_config),
            getattr(self.model_cls, "default_chat_template", None),
        )
        self.requests: dict[str, RequestState] = {}
        self.num_steps = 0
        self._seeds = random.Random(config.seed)
        self._grammar_backend: GrammarBackend | None = None  # built on the first constrained request
        self._grammar_backend_lock = threading.Lock()

    def _fit_max_model_len_to_cache(self) -> None:
        """A sequence longer than the whole KV cache could never run: an explicit
        max_model_len that large fails here, with the numbers; the default is capped."""
        capacity = self.block_manager.num_blocks * self.config.block_size
        if self.max_model_len <= capacity:
            return
        message = (f"max_model_len {self.max_model_len} is more than the KV cache holds: "
                   f"{self.block_manager.num_blocks} blocks of {self.config.block_size} tokens = {capacity} tokens")
        if "max_model_len" in self.config.model_fields_set:
            raise ValueError(f"{message}; raise kv_cache_memory_gb (gpu_memory_utilization on a GPU) "
                             "or lower max_model_len")
        logger.warning("%s; max_model_len is capped to %d", message, capacity)
        self.max_model_len = capacity

    def _resolve_task(self) -> tuple[str, PoolerConfig | None]:
        """generate or embed, and for embed how to pool: the checkpoint's sentence-transformers
        files, else the model class's preference (last token), normalised either way."""
        can_generate = hasattr(self.model_cls, "compute_logits")
        pooler_config = self.source.load_pooler_config()
        task = self.config.task
        if task == "auto":
            task = "embed" if not can_generate or pooler_config is not None else "generate"
        if task == "generate" and not can_generate:
            raise ValueError(f"{self.hf_config.architectures[0]} has no language-model head: "
                             "it serves embeddings only (task embed)")
        if task == "generate":
            return task, None
        if pooler_config is None:
            pooler_config = PoolerConfig(getattr(self.model_cls, "default_pooler", "last"), normalize=True)
        if self.config.pooler != "auto":
            pooler_config = PoolerConfig(self.config.pooler, pooler_config.normalize)
        plugins.poolers().get(pooler_config.pooler)  # an unknown name fails here, naming the installed ones
        logger.info("task embed: %s pooling%s", pooler_config.pooler, ", normalised" if pooler_config.normalize else "")
        return task, pooler_config

    def _fit_max_model_len_to_step(self) -> None:
        """An embedding request runs in one step, so it can be no longer than a step's budget."""
        budget = self.config.max_num_batched_tokens
        if self.task != "embed" or self.max_model_len <= budget:
            return
        message = f"embedding inputs run whole in one step: max_model_len {self.max_model_len} > " \
                  f"max_num_batched_tokens {budget}"
        if "max_model_len" in self.config.model_fields_set:
            raise ValueError(f"{message}; raise max_num_batched_tokens or lower max_model_len")
        logger.warning("%s; max_model_len is capped to %d", message, budget)
        self.max_model_len = budget

    @property
    def vocab_size(self) -> int:
        return self.hf_config.vocab_size

    def _generation_config(self) -> dict:
        """The model's generation_config.json as written ({} for a GGUF file or none)."""
        path = self.source.path / "generation_config.json"
        return {} if self.source.is_gguf or not path.is_file() else json.loads(path.read_text())

    def _eos_token_ids(self) -> set[int]:
        """The checkpoint's EOS ids (config, tokenizer, generation_config.json), and the ids of the
        model class's ``stop_tokens`` that the vocabulary has (GGUF files name a single EOS)."""
        ids: set[int] = set()
        candidates = [self.hf_config.eos_token_id, getattr(self.tokenizer, "eos_token_id", None),
                      self._generation_config().get("eos_token_id")]
        stop_tokens = getattr(self.model_cls, "stop_tokens", ())
        if stop_tokens and self.tokenizer is not None:
            vocabulary = self.tokenizer.get_vocab()
            candidates.append([vocabulary[token] for token in stop_tokens if token in vocabulary])
        for candidate in candidates:
            if isinstance(candidate, int):
                ids.add(candidate)
            elif candidate:
                ids.update(candidate)
        return ids

    def _sampling_defaults(self) -> dict[str, float]:
        """The sampling fields the model's generation_config.json sets, as written there
        (not transformers' own defaults for the rest, such as top_k=50)."""
        if self.config.generation_config == "none":
            return {}
        written = self._generation_config()
        defaults = {name: written[name] for name in SAMPLING_DEFAULT_FIELDS if written.get(name) is not None}
        if defaults:
            logger.info("sampling defaults from the model's generation_config.json: %s", defaults)
        return defaults

    def grammar_backend(self) -> GrammarBackend:
        """The engine's grammar backend, built on first use (from any thread)."""
        with self._grammar_backend_lock:
            if self._grammar_backend is None:
                if self.tokenizer is None:
                    raise InvalidRequestError("structured outputs need the tokenizer (skip_tokenizer_init is set)")
                backend_cls = plugins.grammar_backends().get(self.config.grammar_backend)
                self._grammar_backend = backend_cls(self.tokenizer, self.vocab_size)
            return self._grammar_backend

    def compile_grammar(self, guided: GuidedDecoding) -> object:
        """Compile a constraint (the backend caches repeats); InvalidRequestError if it is bad.
        Slow for some grammars: a server compiles in worker processes instead (compile_pool)."""
        check_constraint(guided)
        return self.grammar_backend().compile(guided)

    def tokenize(self, prompt: str | list[int]) -> list[int]:
        if not isinstance(prompt, str):
            return list(prompt)
        if self.tokenizer is None:
            raise InvalidRequestError("no tokenizer is loaded (skip_tokenizer_init): give token ids", param="prompt")
        return self.tokenizer.encode(prompt, add_special_tokens=True)

    def add_request(
        self, request_id: str, prompt: str | list[int], params: SamplingParams | PoolingParams,
        grammar: object | None = None,
    ) -> Sequence:
        """Check the request, then add it; InvalidRequestError if it cannot run."""
        prompt_token_ids = self.tokenize(prompt)
        info = self.model_info
        check = info.check_embedding_request if isinstance(params, PoolingParams) else info.check_request
        params = check(prompt_token_ids, params)
        return self.add_checked_request(request_id, prompt_token_ids, params, grammar)

    def add_checked_request(
        self, request_id: str, prompt_token_ids: list[int], params: SamplingParams | PoolingParams,
        grammar: object | None = None,
    ) -> Sequence:
        """Add a request that ``model_info.check_request`` passed (an engine client checks it
        before it reaches this thread). ``grammar``: ``params.guided`` compiled already, else compiled here."""
        if request_id in self.requests:
            raise InvalidRequestError(f"request id {request_id!r} is already in use")
        if isinstance(params, PoolingParams):
            seq = Sequence(request_id, prompt_token_ids, params, seed=0)
            self.requests[request_id] = RequestState(seq, None)
            self.scheduler.add(seq)
            return seq
        seed = params.seed if params.seed is not None else self._seeds.getrandbits(63)
        seq = Sequence(request_id, prompt_token_ids, params, seed & SEED_MASK)
        if params.guided is not None:
            compiled = grammar if grammar is not None else self.compile_grammar(params.guided)
            seq.grammar = self.grammar_backend().matcher(compiled)
            seq.grammar_waits = bool(params.guided_starts_after)
        detokenizer = (
            IncrementalDetokenizer(self.tokenizer, prompt_token_ids, params.skip_special_tokens)
            if self.tokenizer is not None else None
        )
        self.requests[request_id] = RequestState(seq, detokenizer)
        self.scheduler.add(seq)
        return seq

    def abort_request(self, request_id: str) -> bool:
        """Stop a request now and free its KV blocks; False if it is unknown or done."""
        state = self.requests.pop(request_id, None)
        if state is None:
            return False
        self.scheduler.abort(request_id)
        return True

    def check_health(self) -> None:
        """Raise if part of the engine (a tensor-parallel worker) has died."""
        self.runner.check_health()

    def shutdown(self) -> None:
        """Stop the worker processes, if any; the engine is unusable afterwards."""
        self.runner.shutdown()

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
        return self.scheduler.postprocess(batch, results, self._process)

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

    def _process(self, seq: Sequence, result: SampledToken | object) -> RequestOutput:
        if isinstance(result, RowFailed):  # logged where it failed
            return self._fail(seq)
        try:
            return self._finish_embedding(seq, result) if seq.is_pooling else self._append(seq, result)
        except Exception:  # detokenizing, the grammar, stops: this request's own, as a step's would be
            logger.exception("request %s failed after its step; the others go on", seq.request_id)
            return self._fail(seq)

    def _fail(self, seq: Sequence) -> RequestOutput:
        seq.finish("error")
        self.requests.pop(seq.request_id, None)
        return RequestOutput.failed(seq.request_id, seq.num_prompt_tokens,
                                    "The engine failed on this request; the others were not affected.")

    def _finish_embedding(self, seq: Sequence, embedding: object) -> RequestOutput:
        seq.finish("stop")
        del self.requests[seq.request_id]
        return RequestOutput(
            request_id=seq.request_id, new_token_ids=[], new_text="", output_token_ids=[], text="", finished=True,
            finish_reason="stop", stop_reason=None, num_prompt_tokens=seq.num_prompt_tokens, num_cached_tokens=0,
            embedding=embedding,
        )

    def _append(self, seq: Sequence, sampled: SampledToken) -> RequestOutput:
        """Append a sampled token, detokenize it, and finish the sequence if it stops."""
        state = self.requests[seq.request_id]
        token = sampled.token_id
        seq.append_token(token)
        params = seq.params
        if seq.constrained:
            seq.grammar.accept(token)  # the mask allowed only tokens it accepts
        elif seq.grammar is not None:  # thinking: the constraint starts once the output ends it
            end = params.guided_starts_after
            seq.grammar_waits = tuple(seq.token_ids[-len(end):]) != end
        stop_token = token in state.stop_token_ids
        ends_on_token = stop_token or (token in self.eos_token_ids and not params.ignore_eos)
        detokenizer = state.detokenizer
        delta = "" if ends_on_token or detokenizer is None else detokenizer.add([token])
        if ends_on_token:
            seq.finish("stop", token if stop_token else None)
        elif seq.num_output_tokens >= params.max_tokens or len(seq) >= self.max_model_len:
            seq.finish("length")
        elif seq.constrained and seq.grammar.is_terminated():
            seq.finish("stop")
        if seq.is_finished and detokenizer is not None:
            delta += detokenizer.flush()
        emitted, stop_string = state.stops.add(delta)
        if stop_string is not None:
            seq.finish("stop", stop_string)
        elif seq.is_finished:
            emitted += state.stops.finish()
        state.pieces.append(emitted)
        if seq.is_finished:
            del self.requests[seq.request_id]
        return RequestOutput(
            request_id=seq.request_id,
            new_token_ids=[token],
            new_text=emitted,
            output_token_ids=seq.output_token_ids if seq.is_finished else [],
            text="".join(state.pieces) if seq.is_finished else "",
            finished=seq.is_finished,
            finish_reason=seq.finish_reason,
            stop_reason=seq.stop_reason,
            num_prompt_tokens=seq.num_prompt_tokens,
            num_cached_tokens=seq.num_cached_tokens,
            new_logprobs=[sampled] if params.logprobs is not None else [],
            prompt_logprobs=seq.prompt_logprobs if params.prompt_logprobs is not None and seq.num_output_tokens == 1
            else None,
        )


class RowFailed:
    """In place of a sampled token: this sequence's step raised when run on its own."""


def _matryoshka(hf_config) -> bool:
    """Whether embeddings may be cut short (``dimensions``): the config says it was trained
    for it, as vLLM reads it (``is_matryoshka`` or ``matryoshka_dimensions``)."""
    return bool(getattr(hf_config, "is_matryoshka", False) or getattr(hf_config, "matryoshka_dimensions", None))
