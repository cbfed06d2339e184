"""The messages that cross the engine's thread and process seams, one frozen type each,
dispatched with ``match``. (The tensor-parallel step header is in ``tensor_parallel``.)

Sequence ids: a request of ``n`` sequences (choices, or embedding inputs) has the ids
``SequenceIds.of(request_id, n)``; whoever needs the request of a sequence keeps the
``AsyncStream`` that holds both, and never parses an id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

if TYPE_CHECKING:
    from nanovllm_core.engine_client import EngineStats
    from nanovllm_core.model_info import ModelInfo
    from nanovllm_core.outputs import RequestOutput
    from nanovllm_core.pooling import PoolingParams
    from nanovllm_core.sampling_params import SamplingParams


def sequence_ids(request_id: str, num_sequences: int) -> list[str]:
    """The engine's ids of a request's sequences."""
    return [f"{request_id}-{index}" for index in range(num_sequences)]


# a client to its engine thread (AsyncLLM's command queue)


@dataclass(frozen=True)
class AddSequence:
    """A checked sequence; ``grammar``: its constraint compiled, if it has one."""

    sequence_id: str
    prompt_token_ids: list[int]
    params: SamplingParams | PoolingParams
    grammar: object | None = None


@dataclass(frozen=True)
class AbortSequence:
    sequence_id: str


@dataclass(frozen=True)
class StopEngine:
    pass


EngineCommand = Union[AddSequence, AbortSequence, StopEngine]


# the server to a data-parallel replica (its pipe)


@dataclass(frozen=True)
class GenerateRequest:
    request_id: str
    sequences: list[tuple[list[int], SamplingParams]]


@dataclass(frozen=True)
class EncodeRequest:
    request_id: str
    prompts: list[list[int]]
    params: PoolingParams


@dataclass(frozen=True)
class AbortRequest:
    request_id: str


@dataclass(frozen=True)
class StopReplica:
    pass


ReplicaCommand = Union[GenerateRequest, EncodeRequest, AbortRequest, StopReplica]


# a replica to the server


@dataclass(frozen=True)
class ReplicaReady:
    model_info: ModelInfo


@dataclass(frozen=True)
class ReplicaDead:
    reason: str


@dataclass(frozen=True)
class ReplicaStats:
    """Every STATS_INTERVAL_S: the replica's heartbeat."""

    stats: EngineStats


@dataclass(frozen=True)
class RequestAccepted:
    request_id: str


@dataclass(frozen=True)
class RequestRefused:
    """The request's own problem, or the replica's capacity: the submitter gets ``error``."""

    request_id: str
    error: Exception


@dataclass(frozen=True)
class RequestFailed:
    """The engine failed while the request ran."""

    request_id: str
    error: Exception


@dataclass(frozen=True)
class SequenceOutput:
    output: RequestOutput


ReplicaMessage = Union[ReplicaReady, ReplicaDead, ReplicaStats, RequestAccepted, RequestRefused, RequestFailed,
                       SequenceOutput]
