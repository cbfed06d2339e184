"""Tensor parallelism: N processes, one per shard of the weights and KV heads.

Rank 0 runs the engine: it schedules, prepares each step's input tensors,
broadcasts them with torch.distributed (gloo on CPU, NCCL on CUDA), runs its
shard and samples. Ranks 1..N-1 run ``worker_loop``: receive a step, run their
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

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from nanovllm_core.config import EngineConfig

logger = logging.getLogger(__name__)

STEP, STOP = 1, 0
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


def init_process_group(rank: int, world_size: int, device: torch.device) -> None:
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(rank % torch.cuda.device_count())
    else:
        # the ranks share the CPU cores rather than each claiming all of them
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=COLLECTIVE_TIMEOUT)


def _die_with_parent() -> None:
    """A spawned worker gets SIGKILL when its parent dies, however it dies (Linux)."""
    try:
        ctypes.CDLL("libc.so.6").prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass


def _spawned_worker(rank: int, world_size: int, config_json: str, env: dict[str, str], started) -> None:
    _die_with_parent()
    os.environ.update(env)
    run_worker(EngineConfig.model_validate_json(config_json), rank, world_size, started.set)


def run_worker(config: EngineConfig, rank: int, world_size: int, on_start=None) -> None:
    """Everything a rank other than 0 does, from start to stop."""
    from nanovllm_core.engine.model_runner import ModelRunner, resolve_device
    from nanovllm_core.loader import resolve_model

    device = resolve_device(config.device)
    if on_start is not None:
        on_start()
    init_process_group(rank, world_size, device)
    try:
        source = resolve_model(config.model, need_weights=config.load_format != "dummy")
        runner = ModelRunner(config, source, source.load_config(), eos_token_ids=set())
        runner.worker_loop()
    finally:
        shutdown_process_group()


def work_unless_rank_zero(config: EngineConfig) -> None:
    """Under torchrun every rank runs the user's program: ranks other than 0
    become workers here, and exit when rank 0 stops them."""
    if launched_by_torchrun() and int(os.environ["RANK"]) != 0:
        run_worker(config, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
        raise SystemExit(0)


def shutdown_process_group() -> None:
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # a peer already gone leaves nothing to tear down cleanly
            logger.debug("process group teardown failed", exc_info=True)


class WorkerGroup:
    """The ranks 1..N-1 that rank 0 spawned (none under torchrun, which starts them)."""

    def __init__(self, config: EngineConfig, device: torch.device):
        self.world_size = config.tensor_parallel_size
        self.device = device
        self.processes: list[mp.Process] = []
        if launched_by_torchrun():
            rank = int(os.environ["RANK"])
            if rank != 0:
                raise RuntimeError("only rank 0 runs the engine; other ranks run run_worker()")
        else:
            self._spawn(config)
        init_process_group(0, self.world_size, device)
        atexit.register(self.shutdown)

    def _spawn(self, config: EngineConfig) -> None:
        env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(_free_port())}
        os.environ.update(env)
        # workers get the resolved engine settings only (not a subclass's, nor the file to read again)
        engine_fields = set(EngineConfig.model_fields) - {"config_file"}
        config_json = EngineConfig.model_construct(**config.model_dump(include=engine_fields)).model_dump_json()
        context = mp.get_context("spawn")
        started = []
        for rank in range(1, self.world_size):
            event = context.Event()
            process = context.Process(
                target=_spawned_worker, args=(rank, self.world_size, config_json, env, event),
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
                broadcast_header(torch.tensor([STOP] + [0] * (HEADER_SIZE - 1), device=self.device))
            except RuntimeError:
                pass
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.kill()
                process.join()
        self.processes = []
        shutdown_process_group()


HEADER_SIZE = 8  # command, tokens, seqs, block-table width, decodes, max query len, max context len, samples


def broadcast_header(header: torch.Tensor) -> torch.Tensor:
    dist.broadcast(header, src=0)
    return header
