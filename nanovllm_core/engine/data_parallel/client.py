"""The server's side of data parallelism: ``DataParallelClient`` starts the replicas,
routes each request to one of them and streams its outputs back through the same
``StreamSinks`` the in-process engine uses.

A replica that dies fails only its own requests; so does one that hangs: a replica that
sends no heartbeat (its stats, every 0.25 s) or, with work, finishes no step for
``replica_timeout`` seconds is killed. Sends to a replica go through a thread of its own,
so a replica that stops reading never blocks the event loop. The client is DEAD when no
replica is left.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection

import torch.multiprocessing as mp

from nanovllm_core.config import EngineConfig
from nanovllm_core.engine.async_llm import ClientLimits
from nanovllm_core.engine.data_parallel.placement import replica_cpu_sets, replica_cuda_devices
from nanovllm_core.engine.data_parallel.replica import replica_main
from nanovllm_core.engine.data_parallel.routing import PrefixAffinity, choose_replica
from nanovllm_core.engine import messages
from nanovllm_core.engine.platform import resolve_device
from nanovllm_core.engine.streams import AsyncStream, StreamSinks, check_admissible
from nanovllm_core.engine.tensor_parallel import engine_config_json
from nanovllm_core.engine_client import EngineFailed, EngineState, EngineStats, EngineUnavailable, QueueFull, ReplicaStatus
from nanovllm_core.model_info import ModelInfo
from nanovllm_core.pooling import PoolingParams
from nanovllm_core.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

WATCH_INTERVAL_S = 0.5  # how often the server looks for hung replicas
STOP_TIMEOUT_S = 30


class Replica:
    """One replica as the server sees it: its process, its pipe, its requests."""

    def __init__(self, index: int, process: mp.Process, conn: Connection, limits: ClientLimits):
        self.index = index
        self.process = process
        self.conn = conn
        self.state = EngineState.LOADING
        self.stats: EngineStats | None = None
        self.model_info: ModelInfo | None = None
        self.sinks = StreamSinks(limits.reader_timeout, abort=self._abort)
        self.submitted: dict[str, tuple[asyncio.Future, int]] = {}  # sent, not yet accepted or refused
        self.last_heard = self.last_progress = 0.0  # event-loop times: any message; a step taken (or no work)
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=self._send_loop, name=f"replica{index}-sender", daemon=True).start()

    @property
    def load(self) -> int:
        """Sequences routed here and not finished."""
        return self.sinks.num_sequences + sum(count for _, count in self.submitted.values())

    def send(self, command: messages.ReplicaCommand) -> None:
        """Queued for the sender thread: a pipe whose reader has stopped blocks that thread only."""
        self._outbox.put(command)

    def _send_loop(self) -> None:
        while True:
            try:
                self.conn.send(self._outbox.get())
            except (OSError, ValueError):  # the replica died; its reader reports it
                return

    def _abort(self, stream: AsyncStream, sequence_ids: set[str]) -> None:
        self.send(messages.AbortRequest(stream.request_id))

    def hung_for(self, now: float) -> float:
        """Seconds since its last heartbeat, or since its last step while it had work."""
        return now - min(self.last_heard, self.last_progress)

    def handle(self, message: messages.ReplicaMessage, now: float) -> None:
        """A message from the replica, on the event loop."""
        self.last_heard = now
        match message:
            case messages.ReplicaReady(model_info):
                self.model_info, self.state = model_info, EngineState.READY
                self.last_progress = now
            case messages.SequenceOutput(output):
                self.sinks.deliver([output], now)
            case messages.ReplicaStats(stats):
                idle = stats.num_running + stats.num_waiting == 0
                if idle or self.stats is None or stats.num_steps != self.stats.num_steps:
                    self.last_progress = now
                self.stats = stats
            case messages.RequestAccepted(request_id):
                future, count = self.submitted.pop(request_id)
                stream = self.sinks.open(request_id, count)
                if future.cancelled():  # the client left while the replica checked its request
                    stream.close()
                else:
                    future.set_result(stream)
            case messages.RequestRefused(request_id, error):
                future, _ = self.submitted.pop(request_id)
                if not future.cancelled():
                    future.set_exception(error)
            case messages.RequestFailed(request_id, error):
                self.sinks.fail_request(request_id, error)

    def fail_everything(self, error: BaseException) -> None:
        for future, _ in self.submitted.values():
            if not future.done():
                future.set_exception(error)
        self.submitted.clear()
        self.sinks.fail_all(error)


class DataParallelClient:
    """``size`` engine replicas behind one ``EngineClient``. A request goes, whole (all its
    ``n`` choices), to the replica ``routing.choose_replica`` picks."""

    def __init__(self, config: EngineConfig, size: int, threads_per_replica: int | None, limits: ClientLimits,
                 replica_timeout: float = 60.0):
        self.config = config
        self.replica_timeout = replica_timeout
        self.size = size
        self.threads_per_replica = threads_per_replica
        self.limits = limits
        self.state = EngineState.LOADING
        self.replicas: list[Replica] = []
        self.affinity = PrefixAffinity(config.block_size)
        self.max_sequences_per_replica = config.max_num_seqs + limits.max_queued_sequences
        self._next = 0  # where the search for the least loaded starts, so ties rotate
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_failure: Callable[[], None] = lambda: None
        self._settled = threading.Event()
        self._stopping = False

    # lifecycle

    def start(self, loop: asyncio.AbstractEventLoop, on_failure: Callable[[], None] = lambda: None) -> None:
        self._loop, self._on_failure = loop, on_failure
        if resolve_device(self.config.device).type == "cuda":
            cpu_sets = [[] for _ in range(self.size)]
            envs = [{"CUDA_VISIBLE_DEVICES": devices}
                    for devices in replica_cuda_devices(self.size, self.config.tensor_parallel_size)]
        else:
            cpu_sets = replica_cpu_sets(self.size, self.threads_per_replica)
            envs = [{} for _ in range(self.size)]
        context = mp.get_context("spawn")
        config_json = engine_config_json(self.config)
        log_level = logging.getLogger().getEffectiveLevel()
        for index, (cpus, env) in enumerate(zip(cpu_sets, envs)):
            ours, theirs = context.Pipe()
            # not a daemon: a replica with tensor_parallel_size > 1 spawns its own workers
            process = context.Process(target=replica_main, name=f"nanovllm-replica{index}",
                                      args=(index, theirs, config_json, cpus, env, self.limits, log_level))
            process.start()
            theirs.close()
            replica = Replica(index, process, ours, self.limits)
            self.replicas.append(replica)
            logger.info("replica %d: process %d%s", index, process.pid, f", CPUs {cpus}" if cpus else f", {env}")
            threading.Thread(target=self._read, args=(replica,), name=f"replica{index}-reader", daemon=True).start()
        loop.call_later(WATCH_INTERVAL_S, self._watch)

    def wait_ready(self, timeout: float | None = None) -> bool:
        self._settled.wait(timeout)
        return self.state is EngineState.READY

    def stop(self) -> None:
        self._stopping = True
        if self.state is not EngineState.DEAD:  # the server's exit status reads it
            self.state = EngineState.STOPPED
        for replica in self.replicas:
            replica.send(messages.StopReplica())
        for replica in self.replicas:
            replica.process.join(timeout=STOP_TIMEOUT_S)
            if replica.process.is_alive():
                logger.warning("replica %d did not stop in %d s; killing it", replica.index, STOP_TIMEOUT_S)
                replica.process.kill()
                replica.process.join()

    def _read(self, replica: Replica) -> None:
        """A replica's messages, handed to the event loop in order; its end, however it ends."""
        while True:
            try:
                message = replica.conn.recv()
            except (EOFError, OSError):
                message = messages.ReplicaDead("its process exited")
            if isinstance(message, messages.ReplicaDead):
                if not self._stopping:
                    self._loop.call_soon_threadsafe(self._lose, replica, message.reason)
                return
            self._loop.call_soon_threadsafe(self._handle, replica, message, self._loop.time())

    def _handle(self, replica: Replica, message: messages.ReplicaMessage, now: float) -> None:
        """On the event loop, where every change of state happens."""
        replica.handle(message, now)
        if isinstance(message, messages.ReplicaReady):
            self._settle()

    def _watch(self) -> None:
        """Every WATCH_INTERVAL_S: kill and lose a serving replica that has hung."""
        if self._stopping:
            return
        now = self._loop.time()
        for replica in self.replicas:
            silent = replica.hung_for(now)
            if replica.state is EngineState.READY and silent > self.replica_timeout:
                replica.process.kill()  # a hung process may wake half-way through a request: end it
                self._lose(replica, f"it sent no heartbeat or finished no step for {silent:.1f} s; killed as hung")
        self._loop.call_later(WATCH_INTERVAL_S, self._watch)

    def _lose(self, replica: Replica, reason: str) -> None:
        """A replica ended (``reason``): its requests fail, the rest serve on."""
        if replica.state is EngineState.READY:
            up = sum(r.state is EngineState.READY for r in self.replicas) - 1
            logger.error("replica %d stopped (%s); %d of %d replicas serve", replica.index, reason, up, self.size)
        replica.state, replica.stats = EngineState.DEAD, None
        replica.fail_everything(EngineFailed(f"engine replica {replica.index} stopped: {reason}"))
        self._settle()

    def _settle(self) -> None:
        """Ready once every replica has loaded or failed, if one at least serves; dead (and
        ``on_failure``) when none is left."""
        if self._stopping or any(r.state is EngineState.LOADING for r in self.replicas):
            return
        serving = any(r.state is EngineState.READY for r in self.replicas)
        was = self.state
        self.state = EngineState.READY if serving else EngineState.DEAD
        self._settled.set()
        if self.state is EngineState.DEAD and was is not EngineState.DEAD:
            self._on_failure()

    # requests

    @property
    def model_info(self) -> ModelInfo:
        for replica in self.replicas:
            if replica.model_info is not None:
                return replica.model_info
        raise EngineUnavailable("The model is still loading; retry shortly.")

    def replica_statuses(self) -> list[ReplicaStatus]:
        return [ReplicaStatus(r.state, r.stats) for r in self.replicas]

    async def generate(self, request_id: str, sequences: list[tuple[list[int], SamplingParams]]) -> AsyncStream:
        info = self.model_info  # EngineUnavailable while loading
        # checked here too, so that a bad request is a 400 however busy the replicas are
        sequences = [(prompt_ids, info.check_request(prompt_ids, params)) for prompt_ids, params in sequences]
        replica = self._route(sequences[0][0], len(sequences))
        return await self._submit(replica, messages.GenerateRequest(request_id, sequences), len(sequences))

    async def encode(self, request_id: str, prompts: list[list[int]], params: PoolingParams) -> AsyncStream:
        info = self.model_info
        for prompt_ids in prompts:
            info.check_embedding_request(prompt_ids, params)
        replica = self._route(prompts[0], len(prompts), param="input")
        return await self._submit(replica, messages.EncodeRequest(request_id, prompts, params), len(prompts))

    def _route(self, prompt_ids: list[int], num_sequences: int, param: str = "n") -> Replica:
        """The replica for a request, or why none can take it."""
        live = [r for r in self.replicas if r.state is EngineState.READY]
        if self.state is not EngineState.READY or not live:
            raise EngineUnavailable("The engine is not running.")
        check_admissible(num_sequences, self.max_sequences_per_replica, "one engine replica", param)
        loads = {r.index: r.load for r in live if r.load + num_sequences <= self.max_sequences_per_replica}
        if not loads:
            raise QueueFull("The server is at capacity; retry shortly.")
        hashes = self.affinity.prefix_hashes(prompt_ids)
        route = choose_replica(loads, self.affinity.owner(hashes), self.config.max_num_seqs, self._next,
                               len(self.replicas))
        if not route.by_affinity:
            self._next = route.replica + 1
        self.affinity.record(hashes, route.replica)
        return self.replicas[route.replica]

    async def _submit(self, replica: Replica, command: messages.GenerateRequest | messages.EncodeRequest,
                      num_sequences: int) -> AsyncStream:
        future = self._loop.create_future()
        replica.submitted[command.request_id] = (future, num_sequences)
        replica.send(command)
        return await future
