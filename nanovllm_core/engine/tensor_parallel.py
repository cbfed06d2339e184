"""Tensor parallelism: N processes, one per shard of the weights and KV heads.

Rank 0 runs the engine: it schedules, prepares each step's input tensors,
broadcasts them with torch.distributed (gloo on CPU, NCCL on CUDA), runs its
shard and samples. Ranks 1..N-1 run ``receive_steps``: receive a step, run their
shard (the all-reduces inside the layers keep the ranks in lock step), repeat.

Processes find each other through the standard environment (``MASTER_ADDR``,
``MASTER_PORT``, ``RANK``, ``WORLD_SIZE``), so the same code runs when torchrun
starts every rank (on one machine or several) and when rank 0 spawns the other
ranks itself on one machine. Every process loads the plugins itself.
"""

from __future__ import annotations

import atexit
import ctypes
import datetime
import logging
import os
import signal
import socket
from collections.abc import Callable, Iterator
from dataclasses import astuple, dataclass, fields
from enum import IntEnum

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nanovllm_core.attention import AttentionMetadata
from nanovllm_core.config import EngineConfig

logger = logging.getLogger(__name__)

# steps are short, but workers wait for the next one as long as the server idles;
# a dead peer is reported at once by the transport, not by this timeout
COLLECTIVE_TIMEOUT = datetime.timedelta(days=7)


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def check_tensor_parallel_size(size: int, hf_config, device: torch.device) -> None:
    heads, kv_heads = hf_config.num_attention_heads, hf_config.num_key_value_heads
    if heads % size or kv_heads % size:
        raise ValueError(
            f"tensor_parallel_size {size} must divide the number of attention heads ({heads}) "
            f"and of KV heads ({kv_heads})"
        )
    if device.type == "cuda" and size > torch.cuda.device_count():
        raise ValueError(f"tensor_parallel_size {size} exceeds the {torch.cuda.device_count()} visible CUDA devices")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cuda_device_index(rank: int) -> int:
    """This rank's GPU on its node: torchrun's LOCAL_RANK (rank % GPUs is wrong on every node
    but the first when the nodes' GPU counts differ, or ranks are not laid out node by node)."""
    local_rank = os.environ.get("LOCAL_RANK")
    return int(local_rank) if local_rank is not None else rank % torch.cuda.device_count()


def init_process_group(rank: int, world_size: int, device: torch.device) -> None:
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(cuda_device_index(rank))
    else:
        # the ranks share the CPU cores rather than each claiming all of them
        torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // world_size))
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT)


def engine_config_json(config: EngineConfig) -> str:
    """The resolved engine settings, for a process that builds an engine part (not a
    subclass's settings, nor the config file to read again)."""
    engine_fields = set(EngineConfig.model_fields) - {"config_file"}
    return EngineConfig.model_construct(**config.model_dump(include=engine_fields)).model_dump_json()


def die_with_parent() -> None:
    """A spawned worker gets SIGKILL when its parent dies, however it dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _worker_process(worker_main: Callable[..., None], *args) -> None:
    die_with_parent()
    worker_main(*args)


def shutdown_process_group() -> None:
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # a peer already gone leaves nothing to tear down cleanly
            logger.debug("process group teardown failed", exc_info=True)


class WorkerGroup:
    """The ranks 1..N-1 that rank 0 spawned (none under torchrun, which starts them).
    ``worker_main(rank, world_size, config_json, env, started)`` is what a spawned rank runs."""

    def __init__(self, config: EngineConfig, device: torch.device, worker_main: Callable[..., None]):
        self.world_size = config.tensor_parallel_size
        self.device = device
        self.processes: list[mp.Process] = []
        if launched_by_torchrun():
            rank = int(os.environ["RANK"])
            if rank != 0:
                raise RuntimeError("only rank 0 runs the engine; other ranks run tp_worker.run_worker()")
        else:
            self._spawn(config, worker_main)
        init_process_group(0, self.world_size, device)
        atexit.register(self.shutdown)

    def _spawn(self, config: EngineConfig, worker_main: Callable[..., None]) -> None:
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
        os.environ.update(env)
        config_json = engine_config_json(config)
        context = mp.get_context("spawn")
        started = []
        for rank in range(1, self.world_size):
            event = context.Event()
            process = context.Process(
                target=_worker_process, args=(worker_main, rank, self.world_size, config_json, env, event),
                name=f"nanovllm-tp{rank}", daemon=True,
            )
            process.start()
            self.processes.append(process)
            started.append(event)
        # joining the process group waits for every rank; never wait for one that is gone
        for process, event in zip(self.processes, started):
            while not event.wait(timeout=0.2):
                if not process.is_alive():
                    self.shutdown(send_stop=False)
                    raise RuntimeError(
                        f"tensor-parallel worker {process.name} exited (code {process.exitcode}) before joining; "
                        f"its error is above. A script that uses tensor_parallel_size > 1 must start under "
                        f"`if __name__ == \"__main__\":`, because workers are spawned and re-import it."
                    )

    def check_alive(self) -> None:
        dead = [p.name for p in self.processes if not p.is_alive()]
        if dead:
            raise RuntimeError(f"tensor-parallel worker {', '.join(dead)} died")

    def shutdown(self, send_stop: bool = True) -> None:
        """Stop the workers (asking first, then insisting) and leave no process behind."""
        if send_stop and dist.is_initialized() and all(p.is_alive() for p in self.processes):
            try:
                StepHeader(StepCommand.STOP).broadcast(self.device)
            except RuntimeError:
                pass
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
        self.processes = []
        shutdown_process_group()


# the step protocol: a header of sizes, then the step's tensors, each broadcast from rank 0


class StepCommand(IntEnum):
    STOP = 0
    STEP = 1


@dataclass(frozen=True)
class StepHeader:
    """What the other ranks need to receive a step: its command and its tensors' sizes."""

    command: StepCommand
    num_tokens: int = 0
    num_seqs: int = 0
    block_table_width: int = 0
    num_decode_tokens: int = 0
    max_query_len: int = 0
    max_context_len: int = 0
    num_samples: int = 0
    num_prompt_scored: int = 0  # tokens whose logits score the next prompt token (prompt_logprobs)

    def broadcast(self, device: torch.device) -> None:
        dist.broadcast(torch.tensor(astuple(self), dtype=torch.int64, device=device), src=0)

    @classmethod
    def receive(cls, device: torch.device) -> StepHeader:
        header = torch.zeros(len(fields(cls)), dtype=torch.int64, device=device)
        dist.broadcast(header, src=0)
        command, *sizes = header.tolist()
        return cls(StepCommand(command), *sizes)


@dataclass
class StepInputs:
    input_ids: torch.Tensor
    positions: torch.Tensor
    metadata: AttentionMetadata
    sample_indices: torch.Tensor
    prompt_indices: torch.Tensor  # tokens whose logits score the next prompt token (prompt_logprobs)

    def _tensors(self) -> list[torch.Tensor]:
        m = self.metadata
        return [self.input_ids, self.positions, m.slot_mapping, m.block_tables, m.context_lens, m.query_start_loc,
                self.sample_indices, self.prompt_indices]

    def broadcast(self, num_seqs: int) -> None:
        """Rank 0: send this step to the other ranks."""
        m = self.metadata
        StepHeader(StepCommand.STEP, self.input_ids.numel(), num_seqs, m.block_tables.shape[1], m.num_decode_tokens,
                   m.max_query_len, m.max_context_len, self.sample_indices.numel(),
                   self.prompt_indices.numel()).broadcast(self.input_ids.device)
        for tensor in self._tensors():
            dist.broadcast(tensor, src=0)

    @classmethod
    def receive(cls, header: StepHeader, device: torch.device) -> StepInputs:
        """Ranks 1..N-1: the step whose ``header`` just arrived."""
        tokens, seqs = header.num_tokens, header.num_seqs

        def empty(*shape, dtype=torch.int64):
            return torch.empty(shape, dtype=dtype, device=device)

        metadata = AttentionMetadata(
            num_decode_tokens=header.num_decode_tokens, slot_mapping=empty(tokens),
            block_tables=empty(seqs, header.block_table_width, dtype=torch.int32),
            context_lens=empty(seqs, dtype=torch.int32), query_start_loc=empty(seqs + 1, dtype=torch.int32),
            max_query_len=header.max_query_len, max_context_len=header.max_context_len,
            query_lens_host=[], context_lens_host=[],
        )
        inputs = cls(empty(tokens), empty(tokens), metadata, empty(header.num_samples),
                     empty(header.num_prompt_scored))
        for tensor in inputs._tensors():
            dist.broadcast(tensor, src=0)
        metadata.query_lens_host = metadata.query_start_loc.diff().tolist()
        metadata.context_lens_host = metadata.context_lens.tolist()
        return inputs


def receive_steps(device: torch.device) -> Iterator[tuple[StepInputs, int]]:
    """Ranks 1..N-1: each step rank 0 broadcasts, with its number of sequences, until it says stop."""
    while True:
        header = StepHeader.receive(device)
        match header.command:
            case StepCommand.STOP:
                return
            case StepCommand.STEP:
                yield StepInputs.receive(header, device), header.num_seqs
