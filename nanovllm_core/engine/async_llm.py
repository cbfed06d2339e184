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
from nanovllm_core.engine.model_runner import work_unless_rank_zero
from nanovllm_core.engine_client import (
    EngineFailed,
    EngineState,
    EngineStats,
    EngineUnavailable,
    QueueFull,
    ReaderStalled,
    ReplicaStatus,
)
from nanovllm_core.errors import InvalidRequestError
from nanovllm_core.grammar import GuidedDecoding
from nanovllm_core.grammar.compile_pool import GrammarCompilePool
from nanovllm_core.model_info import ModelInfo
from nanovllm_core.outputs import RequestOutput
from nanovllm_core.pooling import PoolingParams
from nanovllm_core.sampling_params import SamplingParams

__all__ = ["AsyncLLM", "work_unless_rank_zero"]  # the second: a server under torchrun calls it first

logger = logging.getLogger(__name__)

IDLE_WAIT_S = 0.5
# outputs one request may have waiting for its reader; past this it is not reading
MAX_PENDING_OUTPUTS = 4096
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
    """An LLMEngine on its own thread, as an ``EngineClient``."""

    def __init__(self, config: EngineConfig, limits: ClientLimits):
        self.config = config
        self.reader_timeout = limits.reader_timeout
        self.grammar_compile_timeout = limits.grammar_compile_timeout
        self.state = EngineState.LOADING
        # built and stepped by the engine thread; other threads only read its immutable model_info and its
        # counters (stats), and compile through its grammar backend, which is thread-safe
        self._engine: LLMEngine | None = None
        self.max_sequences = config.max_num_seqs + limits.max_queued_sequences
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks = StreamSinks(limits.reader_timeout, abort=lambda sub_id: self._commands.put(("abort", sub_id)))
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
            self._commands.put(("stop",))
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
            self._engine = LLMEngine(self.config)
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
        for sub_id, (prompt_ids, params) in zip(stream.ids, sequences):
            self._commands.put(("add", sub_id, prompt_ids, params, grammar))
        return stream

    async def _compile_grammar(self, guided: GuidedDecoding) -> object:
        """Checked and compiled in the pool's worker processes, neither on the event loop nor
        on the engine's thread; the pool caches repeats."""
        if self._grammar_pool is None:
            backend = await asyncio.to_thread(self._engine.grammar_backend)  # builds the vocabulary's tables
            if self._grammar_pool is None:  # another request may have made it meanwhile
                self._grammar_pool = GrammarCompilePool(
                    backend, self.config.grammar_backend, self._engine.tokenizer, self._engine.vocab_size,
                    GRAMMAR_COMPILE_WORKERS, self.grammar_compile_timeout)
        return await self._grammar_pool.compile(guided)


def check_admissible(num_sequences: int, max_sequences: int, holder: str, param: str) -> None:
    """InvalidRequestError for a request that needs more sequences than ``holder`` ever holds
    at once (retrying cannot help, unlike QueueFull); ``param``: what it would change."""
    if num_sequences > max_sequences:
        raise InvalidRequestError(
            f"The request needs {num_sequences} sequences (prompts x n, or inputs) but {holder} holds at most "
            f"{max_sequences} at once (max_num_seqs + max_queued_sequences).", param=param)


def run_engine_loop(
    engine: LLMEngine,
    commands,
    deliver: Callable[[list[RequestOutput]], None],
    refuse: Callable[[str, Exception], None],
) -> None:
    """The engine's side of a client, wherever the engine runs: apply the queued
    ("add", ...), ("abort", id) commands, step while there is work, hand each step's
    outputs to ``deliver``; return on ("stop",). ``commands``: any queue with
    ``get(timeout=)`` and ``get_nowait()``."""
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
        command = commands.get(timeout=IDLE_WAIT_S) if block else commands.get_nowait()
    except queue.Empty:
        return True
    while True:
        kind = command[0]
        if kind == "stop":
            return False
        if kind == "add":
            try:
                engine.add_checked_request(*command[1:])
            except ValueError as error:  # checked before; one request's surprise must not stop the loop
                refuse(command[1], error)
        elif kind == "abort":
            engine.abort_request(command[1])
        try:
            command = commands.get_nowait()
        except queue.Empty:
            return True


class StreamSinks:
    """Where each sequence's outputs go, on the event loop: the queue of its request's
    ``AsyncStream``. ``abort(sequence id)`` tells the engine to drop an unfinished sequence
    whose stream was closed. Every client of an engine, wherever the engine runs, keeps one."""

    def __init__(self, reader_timeout: float, abort: Callable[[str], None]):
        self.reader_timeout = reader_timeout
        self.abort = abort
        self.num_sequences = 0  # admitted and not finished
        self._sinks: dict[str, tuple[AsyncStream, int]] = {}

    def open(self, request_id: str, num_sequences: int) -> AsyncStream:
        """A stream for the sequences ``{request_id}-0`` .. ``-{num_sequences - 1}``."""
        stream = AsyncStream(self, [f"{request_id}-{index}" for index in range(num_sequences)])
        for index, sub_id in enumerate(stream.ids):
            self._sinks[sub_id] = (stream, index)
        self.num_sequences += num_sequences
        return stream

    def deliver(self, outputs: list[RequestOutput], now: float) -> None:
        for output in outputs:
            sink = self._sinks.get(output.request_id)
            if sink is None:
                continue
            stream, index = sink
            stream.queue.put_nowait((index, output))
            if stream.reader_stalled(now, self.reader_timeout):
                stream.fail(ReaderStalled(f"the client did not read for {self.reader_timeout:g} s"))

    def fail(self, sub_id: str, error: BaseException) -> None:
        sink = self._sinks.get(sub_id)
        if sink is not None:
            sink[0].queue.put_nowait((sink[1], error))

    def fail_all(self, error: BaseException) -> None:
        for sub_id in list(self._sinks):
            self.fail(sub_id, error)

    def release(self, ids: list[str], unfinished: set[str]) -> None:
        self.num_sequences -= len(ids)
        for sub_id in ids:
            self._sinks.pop(sub_id, None)
        for sub_id in unfinished:
            self.abort(sub_id)


class AsyncStream:
    """A ``GenerationStream``: (sequence index, output) pairs from an asyncio queue."""

    def __init__(self, sinks: StreamSinks, ids: list[str]):
        self.sinks = sinks
        self.ids = ids
        self.queue: asyncio.Queue = asyncio.Queue()
        self.unfinished = set(ids)
        self.closed = False
        self.reading = False  # the reader waits on the queue now
        self.last_read = asyncio.get_running_loop().time()

    def __aiter__(self) -> AsyncStream:
        return self

    async def __anext__(self) -> tuple[int, RequestOutput]:
        if not self.unfinished:
            self.close()
            raise StopAsyncIteration
        self.reading = True
        try:
            index, item = await self.queue.get()
        finally:
            self.reading, self.last_read = False, asyncio.get_running_loop().time()
        if isinstance(item, BaseException):
            self.close()
            raise item
        if item.finished:
            self.unfinished.discard(item.request_id)
        return index, item

    def reader_stalled(self, now: float, timeout: float) -> bool:
        """Outputs wait while the reader is elsewhere (blocked sending to a client that
        does not read) for longer than ``timeout``, or pile up past the bound."""
        if self.reading or self.closed:
            return False
        return self.queue.qsize() > MAX_PENDING_OUTPUTS or now - self.last_read > timeout

    def fail(self, error: BaseException) -> None:
        """Abort now and drop what waits; the reader, if it comes back, gets ``error``."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait((0, error))
        self.close()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.sinks.release(self.ids, self.unfinished)

    def __del__(self) -> None:
        self.close()
