"""`nanovllm-api` with the engine in its own process instead of a thread: a
prototype ``EngineClient`` for measuring what the move would change (see
docs/benchmarks.md, "Engine thread or engine process"). Same flags as nanovllm-api.

The client side (request checks, slots, streams) is AsyncLLM's; the engine side
is the same ``run_engine_loop``, in a spawned process that reads commands from
one multiprocessing queue and writes each step's outputs, with the scheduler's
stats, to another. The server loads its own tokenizer, as vLLM's API process
does. Not supported here: constraints (response_format, tools), which would
need compiled grammars to cross the process boundary.
"""

from __future__ import annotations

import multiprocessing as mp
import threading

from nanovllm_api import app, cli
from nanovllm_api.config import ServerConfig
from nanovllm_core.config import EngineConfig
from nanovllm_core.engine.async_llm import AsyncLLM, run_engine_loop
from nanovllm_core.engine.llm_engine import LLMEngine
from nanovllm_core.engine_client import EngineFailed, EngineState, EngineStats, EngineUnavailable
from nanovllm_core.errors import InvalidRequestError
from nanovllm_core.loader import resolve_model
from nanovllm_core.model_info import ModelInfo


def engine_process(config_json: str, commands, results) -> None:
    try:
        engine = LLMEngine(EngineConfig.model_validate_json(config_json))
        results.put(("ready", engine.model_info.max_model_len, engine.model_info.vocab_size))

        def deliver(outputs) -> None:
            scheduler, manager = engine.scheduler, engine.block_manager
            stats = EngineStats(len(scheduler.running), len(scheduler.waiting), manager.usage, 0.0,
                                scheduler.num_preemptions)
            results.put(("outputs", outputs, stats))

        run_engine_loop(engine, commands, deliver, refuse=lambda request_id, error: results.put(("refused", request_id,
                                                                                                str(error))))
        results.put(("stopped",))
    except Exception as error:  # reported to the server, which fails the requests and exits
        results.put(("failed", repr(error)))


class ProcessAsyncLLM(AsyncLLM):
    def __init__(self, config: ServerConfig, *args):
        super().__init__(config, *args)
        context = mp.get_context("spawn")
        self._commands = context.Queue()
        self._results = context.Queue()
        engine_fields = set(EngineConfig.model_fields) - {"config_file"}
        config_json = EngineConfig.model_construct(**config.model_dump(include=engine_fields)).model_dump_json()
        self._process = context.Process(target=engine_process, args=(config_json, self._commands, self._results),
                                        name="nanovllm-engine", daemon=True)
        self._info: ModelInfo | None = None
        self._stats: EngineStats | None = None

    def start(self, loop, on_failure=lambda: None) -> None:
        self._loop, self._on_failure = loop, on_failure
        self._process.start()
        threading.Thread(target=self._read_results, name="engine-results", daemon=True).start()

    def _read_results(self) -> None:
        tokenizer = resolve_model(self.config.model).load_tokenizer(self.config.tokenizer)
        while True:
            kind, *rest = self._results.get()
            if kind == "outputs":
                outputs, self._stats = rest
                self._loop.call_soon_threadsafe(self._deliver, outputs)
            elif kind == "ready":
                self._info = ModelInfo(rest[0], rest[1], tokenizer)
                self.state = EngineState.READY
                self._ready.set()
            elif kind == "refused":
                self._loop.call_soon_threadsafe(self._fail, rest[0], InvalidRequestError(rest[1]))
            else:
                if kind == "failed":
                    self._die(EngineFailed(rest[0]))
                self._ready.set()
                return

    @property
    def model_info(self) -> ModelInfo:
        if self._info is None:
            raise EngineUnavailable("The model is still loading; retry shortly.")
        return self._info

    def stats(self) -> EngineStats | None:
        return self._stats

    async def _compile_grammar(self, guided):
        raise InvalidRequestError("this prototype does not compile constraints", param="response_format")

    def stop(self) -> None:
        self._commands.put(("stop",))
        self._process.join(timeout=30)
        if self._process.is_alive():
            self._process.kill()


if __name__ == "__main__":
    app.build_engine_client = lambda config: ProcessAsyncLLM(
        config, config.max_queued_sequences, config.client_read_timeout, config.grammar_compile_timeout)
    cli.main()
