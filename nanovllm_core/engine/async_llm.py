"""``AsyncLLM``: the in-process ``EngineClient``. One thread steps continuous
batches while requests arrive; each request reads its outputs from its own asyncio queue.

The thread owns the LLMEngine: checked requests and aborts reach it as commands
on a thread-safe queue, and each step's outputs go back to the event loop in one
``call_soon_threadsafe``. Requests are checked on the client's side and their
constraints compiled in worker processes (``grammar.compile_pool``), so the engine
thread only steps. PyTorch releases the GIL inside its kernels, so the event loop
keeps accepting and streaming while a step runs.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass

from nanovllm_core.config import EngineConfig
from nanovllm_core.engine.llm_engine import LLMEngine
from nanovllm_core.engine.messages import AbortSequence, AddSequence, EngineCommand, StopEngine
from nanovllm_core.engine.streams import AsyncStream, StreamSinks, check_admissible
from nanovllm_core.engine.tp_worker import work_unless_rank_zero
from nanovllm_core.engine_client import EngineFailed, EngineState, EngineStats, EngineUnavailable, QueueFull, ReplicaStatus
from nanovllm_core.grammar import GuidedDecoding
from nanovllm_core.grammar.compile_pool import GrammarCompilePool
from nanovllm_core.loader import ModelSource
from nanovllm_core.model_info import ModelInfo
from nanovllm_core.outputs import RequestOutput
from nanovllm_core.pooling import PoolingParams
from nanovllm_core.sampling_params import SamplingParams

__all__ = ["AsyncLLM", "work_unless_rank_zero"]  # the second: a server under torchrun calls it first

logger = logging.getLogger(__name__)

IDLE_WAIT_S = 0.5
# grammar compilations at once, each in a worker process (a request's wait for one does not
# count against its timeout; its time in one does)
GRAMMAR_COMPILE_WORKERS = 2


@dataclass(frozen=True)
class ClientLimits:
    """``max_queued_sequences``: sequences that may wait beyond max_num_seqs (then QueueFull);
    ``reader_timeout``: seconds a request's outputs may wait for a reader that is not reading;
    ``grammar_compile_timeout``: seconds a request's constraint may take to compile."""

    max_queued_sequences: int
    reader_timeout: float
    grammar_compile_timeout: float


class AsyncLLM:
    """An LLMEngine on its own thread, as an ``EngineClient``. ``source``: the model, when the
    caller has resolved it already."""

    def __init__(self, config: EngineConfig, limits: ClientLimits, source: ModelSource | None = None):
        self.config = config
        self.source = source
        self.reader_timeout = limits.reader_timeout
        self.grammar_compile_timeout = limits.grammar_compile_timeout
        self.state = EngineState.LOADING
        # built and stepped by the engine thread; other threads only read its immutable model_info and its
        # counters (stats), and compile through its grammar backend, which is thread-safe
        self._engine: LLMEngine | None = None
        self.max_sequences = config.max_num_seqs + limits.max_queued_sequences
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks = StreamSinks(limits.reader_timeout, abort=self._abort)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._on_failure: Callable[[], None] = lambda: None
        self._grammar_pool: GrammarCompilePool | None = None  # made on the first constrained request

    # lifecycle

    def start(self, loop: asyncio.AbstractEventLoop, on_failure: Callable[[], None] = lambda: None) -> None:
        self._loop = loop
        self._on_failure = on_failure
        self._thread = threading.Thread(target=self._run, name="nanovllm-engine", daemon=True)
        self._thread.start()

    def wait_ready(self, timeout: float | None = None) -> bool:
        self._ready.wait(timeout)
        return self.state is EngineState.READY

    def stop(self) -> None:
        if self._grammar_pool is not None:
            self._grammar_pool.close()
        if self._thread is not None and self._thread.is_alive():
            self._commands.put(StopEngine())
            self._thread.join(timeout=30)
        if self._engine is not None:
            self._engine.shutdown()

    @property
    def model_info(self) -> ModelInfo:
        if self._engine is None:
            raise EngineUnavailable("The model is still loading; retry shortly.")
        return self._engine.model_info

    def stats(self) -> EngineStats | None:
        engine = self._engine
        if engine is None:
            return None
        manager, scheduler = engine.block_manager, engine.scheduler
        queries = manager.prefix_cache_queries
        return EngineStats(
            num_running=len(scheduler.running),
            num_waiting=len(scheduler.waiting),
            kv_cache_usage=manager.usage,
            prefix_cache_hit_rate=manager.prefix_cache_hits / queries if queries else 0.0,
            num_preemptions=scheduler.num_preemptions,
            num_steps=engine.num_steps,
        )

    def replica_statuses(self) -> list[ReplicaStatus]:
        return [ReplicaStatus(self.state, self.stats())]

    def _run(self) -> None:
        try:
            self._engine = LLMEngine(self.config, self.source)
            self.state = EngineState.READY
            logger.info("engine ready")
        except Exception as error:
            logger.exception("engine failed to load")
            self._die(error)
            return
        finally:
            self._ready.set()
        try:
            run_engine_loop(
                self._engine, self._commands,
                deliver=lambda outputs: self._loop.call_soon_threadsafe(self._deliver, outputs),
                refuse=lambda request_id, error: self._loop.call_soon_threadsafe(self._sinks.fail, request_id, error),
            )
            self.state = EngineState.STOPPED
        except Exception as error:
            logger.exception("engine loop failed")
            self._die(error)

    def _die(self, error: BaseException) -> None:
        self.state = EngineState.DEAD
        self._loop.call_soon_threadsafe(self._sinks.fail_all, EngineFailed(str(error)))
        self._loop.call_soon_threadsafe(self._on_failure)

    # on the event loop

    def _abort(self, stream: AsyncStream, sequence_ids: set[str]) -> None:
        for sequence_id in sequence_ids:
            self._commands.put(AbortSequence(sequence_id))

    def _deliver(self, outputs: list[RequestOutput]) -> None:
        self._sinks.deliver(outputs, self._loop.time())

    def check_available(self, num_sequences: int, param: str = "n") -> None:
        """``param``: what the request would change to need fewer sequences. (While the model
        loads, ``model_info`` has refused the request already.)"""
        if self.state is not EngineState.READY:
            raise EngineUnavailable("The engine is not running.")
        check_admissible(num_sequences, self.max_sequences, "the server", param)
        if self._sinks.num_sequences + num_sequences > self.max_sequences:
            raise QueueFull("The server is at capacity; retry shortly.")

    async def generate(self, request_id: str, sequences: list[tuple[list[int], SamplingParams]]) -> AsyncStream:
        """Submit each (prompt token ids, params) as a sequence and return the stream of
        their outputs. Slots are taken at submission, so the queue limit holds however
        many requests arrive together. The n sequences of a request share one constraint."""
        info = self.model_info  # EngineUnavailable while loading
        sequences = [(prompt_ids, info.check_request(prompt_ids, params)) for prompt_ids, params in sequences]
        self.check_available(len(sequences))  # a bad request is a 400 however busy the server is
        guided = sequences[0][1].guided
        grammar = await self._compile_grammar(guided) if guided is not None else None
        self.check_available(len(sequences))  # again: others may have come in while this one compiled
        return self._submit(request_id, sequences, grammar)

    async def encode(self, request_id: str, prompts: list[list[int]], params: PoolingParams) -> AsyncStream:
        """Submit each prompt as an embedding request; each one's only output carries its vector."""
        info = self.model_info
        sequences = [(prompt_ids, info.check_embedding_request(prompt_ids, params)) for prompt_ids in prompts]
        self.check_available(len(sequences), param="input")
        return self._submit(request_id, sequences, None)

    def _submit(self, request_id: str, sequences: list[tuple[list[int], object]], grammar: object | None) -> AsyncStream:
        stream = self._sinks.open(request_id, len(sequences))
        for sequence_id, (prompt_ids, params) in zip(stream.ids, sequences):
            self._commands.put(AddSequence(sequence_id, prompt_ids, params, grammar))
        return stream

    async def _compile_grammar(self, guided: GuidedDecoding) -> object:
        """Checked and compiled in the pool's worker processes, neither on the event loop nor
        on the engine's thread; the pool caches repeats."""
        if self._grammar_pool is None:
            backend = await asyncio.to_thread(self._engine.structured_output.backend)  # builds the vocabulary's tables
            if self._grammar_pool is None:  # another request may have made it meanwhile
                self._grammar_pool = GrammarCompilePool(
                    backend, self.config.grammar_backend, self._engine.tokenizer, self._engine.vocab_size,
                    GRAMMAR_COMPILE_WORKERS, self.grammar_compile_timeout)
        return await self._grammar_pool.compile(guided)


def run_engine_loop(
    engine: LLMEngine,
    commands,
    deliver: Callable[[list[RequestOutput]], None],
    refuse: Callable[[str, Exception], None],
) -> None:
    """The engine's side of a client: apply the queued ``EngineCommand``s, step while there is
    work, hand each step's outputs to ``deliver``; return on ``StopEngine``. ``commands``: any
    queue with ``get(timeout=)`` and ``get_nowait()``."""
    while True:
        if not _apply_commands(engine, commands, refuse, block=not engine.has_unfinished_requests()):
            return
        engine.check_health()
        if engine.has_unfinished_requests():
            outputs = engine.step()
            if outputs:
                deliver(outputs)


def _apply_commands(engine: LLMEngine, commands, refuse: Callable[[str, Exception], None], block: bool) -> bool:
    """Run queued adds and aborts; False once asked to stop."""
    try:
        command: EngineCommand = commands.get(timeout=IDLE_WAIT_S) if block else commands.get_nowait()
    except queue.Empty:
        return True
    while True:
        match command:
            case StopEngine():
                return False
            case AddSequence(sequence_id, prompt_token_ids, params, grammar):
                try:
                    engine.add_checked_request(sequence_id, prompt_token_ids, params, grammar)
                except ValueError as error:  # checked before; one request's surprise must not stop the loop
                    refuse(sequence_id, error)
            case AbortSequence(sequence_id):
                engine.abort_request(sequence_id)
        try:
            command = commands.get_nowait()
        except queue.Empty:
            return True
