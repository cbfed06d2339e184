"""One API request's run on the engine: submitted through the engine client,
its outputs read with metrics and the request timeout, the engine's refusals
and failures turned into API errors."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from fastapi import Request
from fastapi.responses import Response
from pydantic import BaseModel

from nanovllm_api.errors import InternalError, RequestTimeout, TooManyRequests, Unavailable
from nanovllm_api.metrics import RequestTimer
from nanovllm_api.protocol.common import new_id, now
from nanovllm_api.serving_context import ServingContext
from nanovllm_core.engine_client import EngineFailed, EngineUnavailable, GenerationStream, QueueFull, ReaderStalled
from nanovllm_core.outputs import RequestOutput, SampledToken
from nanovllm_core.pooling import PoolingParams
from nanovllm_core.sampling_params import SamplingParams

T = TypeVar("T")


@dataclass
class Generation:
    """One API request in flight: what it asked, and the stream of its sequences."""

    request_id: str
    model: str
    prompts: list[list[int]]  # distinct prompts, for usage
    sequences: list[tuple[list[int], SamplingParams | PoolingParams]]  # one per choice (or embedding)
    stream: GenerationStream
    created: int = field(default_factory=now)


async def start_generation(
    ctx: ServingContext, prefix: str, model: str, prompts: list[list[int]], sequences: list[tuple[list[int], SamplingParams]]
) -> Generation:
    """Submit the sequences: a bad one is a 400, no room a 429, an engine not ready a 503."""
    request_id = new_id(prefix)
    with engine_refusals():
        stream = await ctx.engine.generate(request_id, sequences)
    return Generation(request_id, model, prompts, sequences, stream)


@contextlib.contextmanager
def engine_refusals() -> Iterator[None]:
    """The engine client's refusals of a submission as API errors (its InvalidRequestError
    is a 400 through the app's handler)."""
    try:
        yield
    except QueueFull as error:
        raise TooManyRequests(str(error), code="queue_full") from error
    except EngineUnavailable as error:
        raise Unavailable(str(error)) from error


async def outputs_of(ctx: ServingContext, generation: Generation) -> AsyncIterator[tuple[int, RequestOutput]]:
    """The generation's outputs, with metrics, the request timeout, and engine
    failures turned into API errors. Leaving the loop aborts the sequences."""
    stream = generation.stream
    timers = [RequestTimer(ctx.metrics, len(prompt)) for prompt, _ in generation.sequences]
    timeout = ctx.config.request_timeout
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    try:
        while True:
            remaining = None if deadline is None else max(deadline - loop.time(), 0)
            try:
                index, output = await asyncio.wait_for(anext(stream), remaining)
            except StopAsyncIteration:
                return
            timers[index].tokens(len(output.new_token_ids))
            if output.finished:
                timers[index].finished(output.finish_reason)
            if output.error is not None:
                raise InternalError(output.error, code="engine_error")
            yield index, output
    except asyncio.TimeoutError as error:
        raise RequestTimeout(f"The request took longer than {timeout} s and was aborted.") from error
    except EngineFailed as error:
        raise InternalError("The engine failed while generating; the request was not completed.") from error
    except ReaderStalled as error:
        raise RequestTimeout(f"The request was aborted: {error}.") from error
    finally:
        stream.close()


@dataclass
class Choice:
    """Everything one sequence produced, gathered for a non-streamed response."""

    text: str
    sampled: list[SampledToken]
    final: RequestOutput | None = None
    prompt_logprobs: list[SampledToken | None] | None = None


async def collect(ctx: ServingContext, generation: Generation, prefixes: list[str]) -> list[Choice]:
    """Run the generation to the end; ``prefixes`` start each choice's text (echo)."""
    choices = [Choice(prefix, []) for prefix in prefixes]
    async for index, output in outputs_of(ctx, generation):
        choice = choices[index]
        choice.text += output.new_text
        choice.sampled.extend(output.new_logprobs)
        if output.prompt_logprobs is not None:
            choice.prompt_logprobs = output.prompt_logprobs
        if output.finished:
            choice.final = output
    return choices


async def built_off_the_loop(build: Callable[[], BaseModel]) -> Response:
    """A whole response, built and serialized on a worker thread: decoding n choices x their
    tokens x 20 alternatives, or writing 2,048 embeddings as JSON, is not I/O."""
    return Response(await asyncio.to_thread(lambda: build().model_dump_json()), media_type="application/json")


async def cancel_on_disconnect(request: Request, awaitable: Awaitable[T]) -> T:
    """Await ``awaitable`` unless the client goes away first; then cancel it,
    which aborts its sequences and frees their KV blocks."""
    work = asyncio.ensure_future(awaitable)
    watcher = asyncio.ensure_future(_disconnected(request))
    try:
        await asyncio.wait({work, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
    if not work.done():
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        raise asyncio.CancelledError("client disconnected")
    return work.result()


async def _disconnected(request: Request) -> None:
    while (await request.receive())["type"] != "http.disconnect":
        pass
