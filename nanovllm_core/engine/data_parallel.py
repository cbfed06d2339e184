"""``DataParallelClient``: N engine replicas, each in a process of its own with its own
KV cache and its own cores (or GPUs), behind one ``EngineClient``.

Each replica process runs an ``AsyncLLM`` (request checks, constraint compiles,
capacity) and forwards what its streams yield over a pipe; the client routes every
request to one replica and streams its outputs back through the same ``StreamSinks``
the in-process engine uses. A replica that dies fails only its own requests; so does
one that hangs: a replica that sends no heartbeat (its stats, every 0.25 s) or, with
work, finishes no step for ``replica_timeout`` seconds is killed. Sends to a replica
go through a thread of its own, so a replica that stops reading never blocks the event
loop. The client is DEAD when no replica is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import signal
import threading
from collections import OrderedDict
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path

import torch
import torch.multiprocessing as mp

from nanovllm_core.config import EngineConfig
from nanovllm_core.engine.async_llm import AsyncLLM, AsyncStream, ClientLimits, StreamSinks, check_admissible
from nanovllm_core.engine.block_manager import chain_hash
from nanovllm_core.engine.model_runner import resolve_device
from nanovllm_core.engine.tensor_parallel import die_with_parent, engine_config_json
from nanovllm_core.engine_client import (
    EngineFailed,
    EngineState,
    EngineStats,
    EngineUnavailable,
    QueueFull,
    ReplicaStatus,
)
from nanovllm_core.model_info import ModelInfo
from nanovllm_core.pooling import PoolingParams
from nanovllm_core.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

STATS_INTERVAL_S = 0.25  # how often a replica reports its scheduler's state: its heartbeat
WATCH_INTERVAL_S = 0.5  # how often the server looks for hung replicas
PREFIX_ENTRIES = 1 << 16  # prompt-prefix hashes remembered for affinity, across replicas
STOP_TIMEOUT_S = 30


# placement


def numa_nodes() -> list[set[int]]:
    """The CPUs of each NUMA node (one set holding every CPU where the kernel reports none)."""
    nodes = sorted(Path("/sys/devices/system/node").glob("node[0-9]*"))
    found = [_parse_cpu_list((node / "cpulist").read_text()) for node in nodes if (node / "cpulist").exists()]
    return [cpus for cpus in found if cpus] or [set(os.sched_getaffinity(0))]


def _parse_cpu_list(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in filter(None, text.strip().split(",")):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def replica_cpu_sets(num_replicas: int, threads_per_replica: int | None) -> list[list[int]]:
    """Disjoint CPU sets, one per replica: the usable CPUs in NUMA-node order, split evenly
    (or ``threads_per_replica`` each), so a replica stays on one node when the split allows."""
    usable = os.sched_getaffinity(0)
    ordered = [cpu for node in numa_nodes() for cpu in sorted(node & usable)]
    per_replica = threads_per_replica or max(1, len(ordered) // num_replicas)
    if per_replica * num_replicas > len(ordered):
        raise ValueError(
            f"{num_replicas} replicas x {per_replica} threads need {per_replica * num_replicas} CPUs; "
            f"this process may use {len(ordered)}")
    return [ordered[index * per_replica:(index + 1) * per_replica] for index in range(num_replicas)]


def replica_cuda_devices(num_replicas: int, tensor_parallel_size: int) -> list[str]:
    """CUDA_VISIBLE_DEVICES of each replica: its own ``tensor_parallel_size`` GPUs."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    devices = visible.split(",") if visible else [str(i) for i in range(torch.cuda.device_count())]
    if num_replicas * tensor_parallel_size > len(devices):
        raise ValueError(f"{num_replicas} replicas x tensor_parallel_size {tensor_parallel_size} need "
                         f"{num_replicas * tensor_parallel_size} GPUs; {len(devices)} are visible")
    size = tensor_parallel_size
    return [",".join(devices[index * size:(index + 1) * size]) for index in range(num_replicas)]


# the replica's side


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
    config = EngineConfig.model_validate_json(config_json)
    engine = AsyncLLM(config, limits)
    asyncio.run(ReplicaServer(conn, engine).serve())


class ReplicaServer:
    """Runs in the replica: each ("generate" | "encode", request id, ...) command becomes a
    task that forwards the request's outputs; ("abort", sequence id) and ("stop",) end them."""

    def __init__(self, conn: Connection, engine: AsyncLLM):
        self.conn = conn
        self.engine = engine
        self.requests: dict[str, asyncio.Task] = {}

    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        died = asyncio.Event()
        self.engine.start(loop, on_failure=died.set)
        if not await asyncio.to_thread(self.engine.wait_ready):
            self.conn.send(("dead", "the engine failed to load; its error is in the log"))
            return
        self.conn.send(("ready", self.engine.model_info))
        commands: asyncio.Queue = asyncio.Queue()
        threading.Thread(target=self._receive, args=(loop, commands), name="replica-commands", daemon=True).start()
        reporting = asyncio.create_task(self._report_stats())
        stopping = asyncio.create_task(died.wait())
        while True:
            getting = asyncio.create_task(commands.get())
            await asyncio.wait({getting, stopping}, return_when=asyncio.FIRST_COMPLETED)
            if stopping.done() or getting.result()[0] == "stop":
                break
            self._apply(getting.result())
        getting.cancel()
        reporting.cancel()
        self.engine.stop()
        if died.is_set():
            self.conn.send(("dead", "the engine stopped; its error is in the log"))

    def _receive(self, loop: asyncio.AbstractEventLoop, commands: asyncio.Queue) -> None:
        while True:
            try:
                command = self.conn.recv()
            except (EOFError, OSError):  # the server is gone
                command = ("stop",)
            loop.call_soon_threadsafe(commands.put_nowait, command)
            if command[0] == "stop":
                return

    def _apply(self, command: tuple) -> None:
        kind, request_id, *args = command
        if kind == "abort":
            task = self.requests.pop(request_id, None)
            if task is not None:
                task.cancel()
            return
        submit = self.engine.generate if kind == "generate" else self.engine.encode
        self.requests[request_id] = asyncio.create_task(self._forward(request_id, submit(request_id, *args)))

    async def _forward(self, request_id: str, submission) -> None:
        try:
            stream = await submission
        except Exception as error:  # the request's own problem or the replica's capacity
            self.conn.send(("refused", request_id, error))
            self.requests.pop(request_id, None)
            return
        self.conn.send(("accepted", request_id))
        try:
            async for _, output in stream:
                self.conn.send(("output", output))
        except Exception as error:  # EngineFailed: the server fails the request
            self.conn.send(("failed", request_id, error))
        finally:
            stream.close()
            self.requests.pop(request_id, None)

    async def _report_stats(self) -> None:
        while True:
            self.conn.send(("stats", self.engine.stats()))
            await asyncio.sleep(STATS_INTERVAL_S)


# the server's side


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

    def send(self, command: tuple) -> None:
        """Queued for the sender thread: a pipe whose reader has stopped blocks that thread only."""
        self._outbox.put(command)

    def _send_loop(self) -> None:
        while True:
            try:
                self.conn.send(self._outbox.get())
            except (OSError, ValueError):  # the replica died; its reader reports it
                return

    def _abort(self, sub_id: str) -> None:
        self.send(("abort", sub_id.rsplit("-", 1)[0]))

    def hung_for(self, now: float) -> float:
        """Seconds since its last heartbeat, or since its last step while it had work."""
        return now - min(self.last_heard, self.last_progress)

    def handle(self, message: tuple, now: float) -> None:
        """A message from the replica, on the event loop."""
        kind, *args = message
        self.last_heard = now
        if kind == "output":
            self.sinks.deliver(args, now)
        elif kind == "stats":
            stats, previous = args[0], self.stats
            idle = stats.num_running + stats.num_waiting == 0
            if idle or previous is None or stats.num_steps != previous.num_steps:
                self.last_progress = now
            self.stats = stats
        elif kind == "accepted":
            future, count = self.submitted.pop(args[0])
            stream = self.sinks.open(args[0], count)
            if future.cancelled():  # the client left while the replica checked its request
                stream.close()
            else:
                future.set_result(stream)
        elif kind == "refused":
            future, _ = self.submitted.pop(args[0])
            if not future.cancelled():
                future.set_exception(args[1])
        elif kind == "failed":
            self.sinks.fail(f"{args[0]}-0", args[1])

    def fail_everything(self, error: BaseException) -> None:
        for future, _ in self.submitted.values():
            if not future.done():
                future.set_exception(error)
        self.submitted.clear()
        self.sinks.fail_all(error)


class PrefixAffinity:
    """Which replica last ran each prompt prefix, in KV-block units (least recently used
    forgotten first): a prompt that shares a cached prefix goes where that prefix is cached."""

    def __init__(self, block_size: int, capacity: int = PREFIX_ENTRIES):
        self.block_size = block_size
        self.capacity = capacity
        self._owner: OrderedDict[bytes, int] = OrderedDict()

    def prefix_hashes(self, prompt_ids: list[int]) -> list[bytes]:
        """The keys the replicas' prefix caches give the prompt's full blocks."""
        hashes, previous = [], None
        for start in range(0, len(prompt_ids) - self.block_size + 1, self.block_size):
            previous = chain_hash(previous, prompt_ids[start:start + self.block_size])
            hashes.append(previous)
        return hashes

    def owner(self, hashes: list[bytes]) -> int | None:
        """The replica holding a cached prefix of at least half these blocks, if any (a
        shorter one, such as a chat template's system prompt, is not worth a longer queue)."""
        for length in range(len(hashes), (len(hashes) - 1) // 2, -1):
            if length and hashes[length - 1] in self._owner:
                return self._owner[hashes[length - 1]]
        return None

    def record(self, hashes: list[bytes], replica: int) -> None:
        for prefix in hashes:
            self._owner[prefix] = replica
            self._owner.move_to_end(prefix)
        while len(self._owner) > self.capacity:
            self._owner.popitem(last=False)


class DataParallelClient:
    """``size`` engine replicas behind one ``EngineClient``. A request goes, whole (all its
    ``n`` choices), to the replica that holds at least half its prompt cached unless that
    one is overloaded (its batch is full, or it carries more than twice the sequences of the
    least loaded, plus one); otherwise to the least loaded, ties taken in turn."""

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
            replica.send(("stop",))
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
                message = ("dead", "its process exited")
            if message[0] == "dead":
                if not self._stopping:
                    self._loop.call_soon_threadsafe(self._lose, replica, message[1])
                return
            self._loop.call_soon_threadsafe(self._handle, replica, message, self._loop.time())

    def _handle(self, replica: Replica, message: tuple, now: float) -> None:
        """On the event loop, where every change of state happens."""
        if message[0] == "ready":
            replica.model_info, replica.state = message[1], EngineState.READY
            replica.last_heard = replica.last_progress = now
            self._settle()
        else:
            replica.handle(message, now)

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
        return await self._submit(replica, ("generate", request_id, sequences), len(sequences))

    async def encode(self, request_id: str, prompts: list[list[int]], params: PoolingParams) -> AsyncStream:
        info = self.model_info
        for prompt_ids in prompts:
            info.check_embedding_request(prompt_ids, params)
        replica = self._route(prompts[0], len(prompts), param="input")
        return await self._submit(replica, ("encode", request_id, prompts, params), len(prompts))

    def _route(self, prompt_ids: list[int], num_sequences: int, param: str = "n") -> Replica:
        """The replica for a request (module docstring), or why none can take it."""
        live = [r for r in self.replicas if r.state is EngineState.READY]
        if self.state is not EngineState.READY or not live:
            raise EngineUnavailable("The engine is not running.")
        check_admissible(num_sequences, self.max_sequences_per_replica, "one engine replica", param)
        open_ = [r for r in live if r.load + num_sequences <= self.max_sequences_per_replica]
        if not open_:
            raise QueueFull("The server is at capacity; retry shortly.")
        start = self._next % len(self.replicas)
        least = min(open_, key=lambda r: (r.load, (r.index - start) % len(self.replicas)))
        hashes = self.affinity.prefix_hashes(prompt_ids)
        owner = self.affinity.owner(hashes)
        chosen = least
        if owner is not None and self.replicas[owner] in open_ and not self._overloaded(self.replicas[owner], least):
            chosen = self.replicas[owner]
        if chosen is least:
            self._next = least.index + 1
        self.affinity.record(hashes, chosen.index)
        return chosen

    def _overloaded(self, replica: Replica, least: Replica) -> bool:
        return replica.load >= self.config.max_num_seqs or replica.load > 2 * least.load + 1

    async def _submit(self, replica: Replica, command: tuple, num_sequences: int) -> AsyncStream:
        future = self._loop.create_future()
        replica.submitted[command[1]] = (future, num_sequences)
        replica.send(command)
        return await future
