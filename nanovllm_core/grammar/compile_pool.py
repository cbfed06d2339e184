"""Constraint compiles in worker processes that can be killed.

A request's schema is checked and its grammar compiled in one of a few worker
processes, never on the event loop or the engine's thread. Compiling can take
unbounded time (a nested regex, a schema of 100,000 alternatives) and a thread
cannot be stopped, so a compile past its request's timeout used to keep its
thread, and a few slow schemas took every thread from everyone. Here a worker
past the deadline is killed and replaced, so a slow schema costs its timeout and
nothing after; a worker that crashes costs only its own request. Compiled grammars
come back serialized (``GrammarBackend.serialize``) and are kept in this process's
cache, which survives the workers.

The workers start on the first compile (a model that is never asked for
structured output never pays for them). The timeout counts a constraint's time in
a worker, not the wait for one: requests wait in arrival order, so each one ahead
costs at most ``timeout / workers`` seconds, and a replaced worker's start (a few
seconds) does not fail the requests behind it.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import threading
import time
from collections import OrderedDict
from multiprocessing.connection import Connection

from nanovllm_core.engine_client import GrammarCompileTimeout
from nanovllm_core.errors import InvalidRequestError
from nanovllm_core.grammar.backend import GrammarBackend, GuidedDecoding
from nanovllm_core.grammar.schema_check import check_constraint

logger = logging.getLogger(__name__)

CACHE_BYTES = 256 << 20  # serialized grammars this process keeps (one complex schema: ~30 MB)


def worker_main(conn: Connection, backend_name: str, tokenizer, vocab_size: int) -> None:
    """A worker process: check and compile each constraint that arrives, send it back serialized."""
    from nanovllm_core import plugins

    backend = plugins.grammar_backends().get(backend_name)(tokenizer, vocab_size)
    conn.send(("ready",))
    while True:
        try:
            guided = conn.recv()
        except EOFError:  # the server is gone
            return
        try:
            check_constraint(guided)
            conn.send(("ok", backend.serialize(backend.compile(guided))))
        except InvalidRequestError as error:
            conn.send(("invalid", str(error), error.param or guided.param, error.code))
        except RecursionError:
            conn.send(("invalid", f"the {guided.param} constraint nests too deeply", guided.param, None))


class Worker:
    """One worker process and its pipe; ``compile`` is called from one thread at a time."""

    def __init__(self, context, backend_name: str, tokenizer, vocab_size: int):
        self.conn, theirs = context.Pipe()
        self.process = context.Process(target=worker_main, args=(theirs, backend_name, tokenizer, vocab_size),
                                       name="nanovllm-grammar", daemon=True)
        self.process.start()
        theirs.close()

    def wait_ready(self) -> bool:
        try:
            return self.conn.recv() == ("ready",)
        except EOFError:
            return False

    def compile(self, guided: GuidedDecoding, timeout: float) -> tuple | None:
        """The worker's answer, or None if it took longer than ``timeout`` (the worker is
        then killed). EOFError: the worker died on it."""
        self.conn.send(guided)
        if not self.conn.poll(timeout):
            self.kill()
            return None
        return self.conn.recv()

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


class GrammarCompilePool:
    """``workers`` processes compiling for ``backend`` (this process's instance, which
    deserializes what they send); ``compile`` is called on the event loop."""

    def __init__(self, backend: GrammarBackend, backend_name: str, tokenizer, vocab_size: int, workers: int,
                 timeout: float):
        self.backend = backend
        self.timeout = timeout
        self._spawn_args = (backend_name, tokenizer, vocab_size)
        self._num_workers = workers
        self._context = multiprocessing.get_context("spawn")  # the server has threads: fork is unsafe
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: asyncio.Queue[Worker] | None = None
        self._started: asyncio.Event | None = None
        self._workers: set[Worker] = set()
        self._usable = 0  # workers alive or starting; changed on the event loop only
        self._cache: OrderedDict[GuidedDecoding, tuple[object, int]] = OrderedDict()
        self._cache_bytes = 0

    async def compile(self, guided: GuidedDecoding) -> object:
        """The compiled grammar; InvalidRequestError for a bad constraint, GrammarCompileTimeout
        for one that did not compile in ``timeout`` seconds (its worker is killed)."""
        if guided in self._cache:
            self._cache.move_to_end(guided)
            return self._cache[guided][0]
        await self._start()
        if not self._usable:  # every worker failed to start (their errors are in the log)
            raise RuntimeError("no grammar worker could start")
        worker = await self._idle.get()
        job = self._loop.run_in_executor(None, worker.compile, guided, self.timeout)
        pid = worker.process.pid
        job.add_done_callback(lambda _: self._settle(worker, job))  # also if this request is cancelled
        try:
            answer = await asyncio.shield(job)
        except (EOFError, OSError) as error:
            logger.error("a grammar worker died compiling a %s constraint; it is replaced", guided.kind)
            raise InvalidRequestError(f"the {guided.param} constraint could not be compiled",
                                      param=guided.param) from error
        if answer is None:
            logger.warning("a %s constraint did not compile in %g s; its worker %d was killed", guided.kind,
                           self.timeout, pid)
            raise self._timed_out(guided)
        if answer[0] == "invalid":
            raise InvalidRequestError(answer[1], param=answer[2], code=answer[3])
        compiled = await asyncio.to_thread(self.backend.deserialize, answer[1])
        self._remember(guided, compiled, len(answer[1]))
        return compiled

    def _settle(self, worker: Worker, job: asyncio.Future) -> None:
        """After a compile: the worker goes back to the queue, or, killed or dead, is replaced."""
        if job.exception() is None and job.result() is not None:
            self._idle.put_nowait(worker)
            return
        self._workers.discard(worker)
        worker.kill()
        self._spawn()

    def _timed_out(self, guided: GuidedDecoding) -> GrammarCompileTimeout:
        return GrammarCompileTimeout(f"The constraint did not compile within {self.timeout:g} s; simplify it.",
                                     param=guided.param, code="grammar_compile_timeout")

    def _remember(self, guided: GuidedDecoding, compiled: object, size: int) -> None:
        if size > CACHE_BYTES or guided in self._cache:
            return
        self._cache[guided] = (compiled, size)
        self._cache_bytes += size
        while self._cache_bytes > CACHE_BYTES:
            _, (_, evicted) = self._cache.popitem(last=False)
            self._cache_bytes -= evicted

    async def _start(self) -> None:
        """Start the workers on first use; wait until one is ready."""
        if self._started is None:
            self._loop, self._idle, self._started = asyncio.get_running_loop(), asyncio.Queue(), asyncio.Event()
            self._usable = self._num_workers
            for _ in range(self._num_workers):
                self._spawn()
        await self._started.wait()

    def _spawn(self) -> None:
        threading.Thread(target=self._start_worker, name="grammar-worker-start", daemon=True).start()

    def _start_worker(self) -> None:
        """On its own thread: a new worker, made idle once it is ready."""
        started = time.perf_counter()
        worker = Worker(self._context, *self._spawn_args)
        self._workers.add(worker)
        if worker.wait_ready():
            logger.info("grammar worker %d ready in %.1f s", worker.process.pid, time.perf_counter() - started)
            self._loop.call_soon_threadsafe(self._idle.put_nowait, worker)
        else:
            self._workers.discard(worker)
            self._loop.call_soon_threadsafe(self._lose_one)
            logger.error("a grammar worker failed to start; its error is above")
        self._loop.call_soon_threadsafe(self._started.set)  # a pool that cannot start times requests out

    def _lose_one(self) -> None:
        self._usable -= 1

    def close(self) -> None:
        for worker in list(self._workers):
            worker.kill()
        self._workers.clear()
