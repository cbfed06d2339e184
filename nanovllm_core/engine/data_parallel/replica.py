"""The replica's side: a process running an ``AsyncLLM`` that serves the ``ReplicaCommand``s
arriving on its pipe and answers with ``ReplicaMessage``s."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from multiprocessing.connection import Connection

import torch

from nanovllm_core.config import EngineConfig
from nanovllm_core.engine.async_llm import AsyncLLM, ClientLimits
from nanovllm_core.engine import messages
from nanovllm_core.engine.tensor_parallel import die_with_parent

STATS_INTERVAL_S = 0.25  # how often a replica reports its scheduler's state: its heartbeat


def replica_main(index: int, conn: Connection, config_json: str, cpus: list[int], env: dict[str, str],
                 limits: ClientLimits, log_level: int) -> None:
    """A replica process: an ``AsyncLLM`` serving the commands that arrive on ``conn``."""
    die_with_parent()
    # the server drains on SIGINT/SIGTERM and then stops its replicas; a terminal's Ctrl-C
    # reaches the whole process group and must not kill them mid-drain
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ.update(env)
    if cpus:
        os.sched_setaffinity(0, cpus)
        torch.set_num_threads(len(cpus))
    logging.basicConfig(level=log_level, format=f"%(asctime)s %(levelname)s replica{index} %(name)s: %(message)s")
    engine = AsyncLLM(EngineConfig.model_validate_json(config_json), limits)
    asyncio.run(ReplicaServer(conn, engine).serve())


class ReplicaServer:
    """Each request becomes a task that forwards its outputs; aborts and a stop end them."""

    def __init__(self, conn: Connection, engine: AsyncLLM):
        self.conn = conn
        self.engine = engine
        self.requests: dict[str, asyncio.Task] = {}

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        died = asyncio.Event()
        self.engine.start(loop, on_failure=died.set)
        if not await asyncio.to_thread(self.engine.wait_ready):
            self.conn.send(messages.ReplicaDead("the engine failed to load; its error is in the log"))
            return
        self.conn.send(messages.ReplicaReady(self.engine.model_info))
        commands: asyncio.Queue = asyncio.Queue()
        threading.Thread(target=self._receive, args=(loop, commands), name="replica-commands", daemon=True).start()
        reporting = asyncio.create_task(self._report_stats())
        stopping = asyncio.create_task(died.wait())
        while True:
            getting = asyncio.create_task(commands.get())
            await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.done() or isinstance(getting.result(), messages.StopReplica):
                break
            self._apply(getting.result())
        getting.cancel()
        reporting.cancel()
        self.engine.stop()
        if died.is_set():
            self.conn.send(messages.ReplicaDead("the engine stopped; its error is in the log"))

    def _receive(self, loop: asyncio.AbstractEventLoop, commands: asyncio.Queue) -> None:
        while True:
            try:
                command = self.conn.recv()
            except (EOFError, OSError):  # the server is gone
                command = messages.StopReplica()
            loop.call_soon_threadsafe(commands.put_nowait, command)
            if isinstance(command, messages.StopReplica):
                return

    def _apply(self, command: messages.ReplicaCommand) -> None:
        match command:
            case messages.AbortRequest(request_id):
                task = self.requests.pop(request_id, None)
                if task is not None:
                    task.cancel()
            case messages.GenerateRequest(request_id, sequences):
                self._start(request_id, self.engine.generate(request_id, sequences))
            case messages.EncodeRequest(request_id, prompts, params):
                self._start(request_id, self.engine.encode(request_id, prompts, params))

    def _start(self, request_id: str, submission) -> None:
        self.requests[request_id] = asyncio.create_task(self._forward(request_id, submission))

    async def _forward(self, request_id: str, submission) -> None:
        try:
            stream = await submission
        except Exception as error:  # the request's own problem or the replica's capacity
            self.conn.send(messages.RequestRefused(request_id, error))
            self.requests.pop(request_id, None)
            return
        self.conn.send(messages.RequestAccepted(request_id))
        try:
            async for _, output in stream:
                self.conn.send(messages.SequenceOutput(output))
        except Exception as error:  # EngineFailed: the server fails the request
            self.conn.send(messages.RequestFailed(request_id, error))
        finally:
            stream.close()
            self.requests.pop(request_id, None)

    async def _report_stats(self) -> None:
        while True:
            self.conn.send(messages.ReplicaStats(self.engine.stats()))
            await asyncio.sleep(STATS_INTERVAL_S)
