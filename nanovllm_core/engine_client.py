"""The one way a server talks to an engine: ``EngineClient``.

A server submits requests and reads their outputs through this protocol and
nothing else, so an engine on a thread of the server's process (``AsyncLLM``,
today's) and one in a process of its own are interchangeable. Like the other
contracts, this module imports nothing of the engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Protocol

from nanovllm_core.errors import InvalidRequestError

if TYPE_CHECKING:
    from nanovllm_core.model_info import ModelInfo
    from nanovllm_core.outputs import RequestOutput
    from nanovllm_core.pooling import PoolingParams
    from nanovllm_core.sampling_params import SamplingParams


class EngineState(Enum):
    LOADING = "loading"
    READY = "ready"
    DEAD = "dead"
    STOPPED = "stopped"


class EngineUnavailable(RuntimeError):
    """The engine is loading or has stopped; a retry may succeed later."""


class QueueFull(RuntimeError):
    """Every slot (running and queued) is taken; a retry may succeed shortly."""


class EngineFailed(RuntimeError):
    """The engine loop raised; the request cannot complete."""


class ReaderStalled(RuntimeError):
    """The request's client stopped reading; it was aborted to free its slot."""


class GrammarCompileTimeout(InvalidRequestError):
    """The request's constraint did not compile in time: the request is refused, no one else waits."""


@dataclass(frozen=True)
class EngineStats:
    """The scheduler's state for monitoring, read when scraped."""

    num_running: int
    num_waiting: int
    kv_cache_usage: float
    prefix_cache_hit_rate: float
    num_preemptions: int
    num_steps: int = 0  # steps taken so far: a replica with work whose count stands still is hung


@dataclass(frozen=True)
class ReplicaStatus:
    """One engine replica's state, and its scheduler's (None until it reports)."""

    state: EngineState
    stats: EngineStats | None


class GenerationStream(Protocol):
    """(sequence index, output) pairs of one request's sequences, as the engine makes them.
    Closing it, or dropping it, aborts what is unfinished and frees their slots."""

    def __aiter__(self) -> AsyncIterator[tuple[int, RequestOutput]]: ...

    async def __anext__(self) -> tuple[int, RequestOutput]: ...

    def close(self) -> None: ...


class EngineClient(Protocol):
    """An engine as a server sees it: loading, generating, refusing, failing. ``state`` is
    READY while it can serve (with data-parallel replicas: while one of them can)."""

    state: EngineState

    def start(self, loop: asyncio.AbstractEventLoop, on_failure: Callable[[], None]) -> None:
        """Start loading the model; ``on_failure()`` runs on ``loop`` if the engine dies."""

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until loaded (or failed); True if ready. Call it off the event loop."""

    def stop(self) -> None:
        """Stop the engine and whatever it started."""

    @property
    def model_info(self) -> ModelInfo:
        """The loaded model's limits and tokenizer; EngineUnavailable while loading."""

    def replica_statuses(self) -> list[ReplicaStatus]:
        """Each engine replica's state and its scheduler's stats (None while it loads): one
        entry for an engine without replicas."""

    async def generate(
        self, request_id: str, sequences: list[tuple[list[int], SamplingParams]]
    ) -> GenerationStream:
        """Check each (prompt token ids, params) sequence (InvalidRequestError), the
        capacity (QueueFull, EngineUnavailable), compile their shared constraint if any
        (GrammarCompileTimeout, InvalidRequestError), then submit them all at once."""

    async def encode(self, request_id: str, prompts: list[list[int]], params: PoolingParams) -> GenerationStream:
        """Check each prompt as an embedding request (InvalidRequestError, also for a model that
        does not embed) and the capacity, then submit them; each prompt's only output carries
        its ``embedding``."""
