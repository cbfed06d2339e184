"""The entry points of tensor-parallel ranks 1..N-1: load their shard, then run each step rank 0
broadcasts (the step protocol: ``tensor_parallel``) until it says stop."""

from __future__ import annotations

import os

from nanovllm_core.config import EngineConfig
from nanovllm_core.engine.model_runner import ModelRunner
from nanovllm_core.engine.model_spec import ModelSpec
from nanovllm_core.engine.platform import resolve_device
from nanovllm_core.engine.tensor_parallel import init_process_group, launched_by_torchrun, shutdown_process_group


def run_worker(config: EngineConfig, rank: int, world_size: int, on_start=None) -> None:
    """Everything a rank other than 0 does, from start to stop."""
    device = resolve_device(config.device)
    if on_start is not None:
        on_start()
    init_process_group(rank, world_size, device)
    try:
        ModelRunner(config, ModelSpec.load(config, with_tokenizer=False)).worker_loop()
    finally:
        shutdown_process_group()


def spawned_worker(rank: int, world_size: int, config_json: str, env: dict[str, str], started) -> None:
    """The target of the processes ``WorkerGroup`` spawns."""
    os.environ.update(env)
    run_worker(EngineConfig.model_validate_json(config_json), rank, world_size, started.set)


def work_unless_rank_zero(config: EngineConfig) -> None:
    """Under torchrun every rank runs the user's program: ranks other than 0
    become workers here, and exit when rank 0 stops them."""
    if launched_by_torchrun() and int(os.environ["RANK"]) != 0:
        run_worker(config, int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]))
        raise SystemExit(0)
