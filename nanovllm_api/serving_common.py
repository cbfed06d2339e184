"""What the chat and completion endpoints share: request checks, sampling
parameters, running sequences with metrics, logprobs, SSE framing, disconnects."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import jsonschema
from fastapi import Request
from pydantic import BaseModel

from nanovllm_api.async_engine import (
    AsyncEngine,
    EngineFailed,
    EngineUnavailable,
    GenerationStream,
    QueueFull,
    ReaderStalled,
)
from nanovllm_api.chat_template import ChatRenderer
from nanovllm_api.config import ServerConfig
from nanovllm_api.errors import (
    APIError,
    BadRequest,
    InternalError,
    NotFound,
    RequestTimeout,
    TooManyRequests,
    Unavailable,
    sse_error,
)
from nanovllm_api.metrics import Metrics, RequestTimer
from nanovllm_api.protocol import (
    IGNORED_FIELDS,
    RequestModel,
    ResponseFormat,
    UNSUPPORTED_FIELDS,
    SamplingFields,
    TokenLogprob,
    TopLogprob,
    Usage,
    new_id,
    now,
)
from nanovllm_core.detokenizer import TokenBytes
from nanovllm_core.engine.llm_engine import LLMEngine, RequestOutput
from nanovllm_core.errors import ContextLengthError
from nanovllm_core.engine.model_runner import SampledToken
from nanovllm_core.grammar import GuidedDecoding
from nanovllm_core.sampling_params import SamplingParams
from nanovllm_core.tool_calls import ToolCallParser

logger = logging.getLogger(__name__)
RETRY_AFTER_S = "1"
# grammar compilations at once; a request waiting for a thread counts it against its timeout
GRAMMAR_COMPILE_THREADS = 2
T = TypeVar("T")


@dataclass
class ServingContext:
    config: ServerConfig
    engine: AsyncEngine
    metrics: Metrics
    model_names: list[str]
    chat_template: str | None = None  # resolved once the tokenizer is loaded
    tool_parser: ToolCallParser | None = None  # likewise, as the default depends on the template
    _renderer: ChatRenderer | None = field(default=None, repr=False)
    _token_bytes: TokenBytes | None = field(default=None, repr=False)
    _max_prompt_chars: int | None = field(default=None, repr=False)
    grammar_pool: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(GRAMMAR_COMPILE_THREADS, thread_name_prefix="grammar-compile"),
        repr=False,
    )

    @property
    def llm(self) -> LLMEngine:
        if self.engine.engine is None:
            raise Unavailable("The model is still loading; retry shortly.")
        return self.engine.engine

    @property
    def renderer(self) -> ChatRenderer:
        if self._renderer is None:
            self._renderer = ChatRenderer(self.llm.tokenizer, self.chat_template, self.tool_parser)
        return self._renderer

    @property
    def token_bytes(self) -> TokenBytes:
        if self._token_bytes is None:
            self._token_bytes = TokenBytes(self.llm.tokenizer)
        return self._token_bytes

    def check_prompt_chars(self, texts: list[str]) -> None:
        """Refuse, before tokenizing, text that cannot fit in the context however it is
        tokenized: no token covers more characters than the vocabulary's longest."""
        if self._max_prompt_chars is None:
            longest_token = max(len(piece) for piece in self.llm.tokenizer.get_vocab())
            self._max_prompt_chars = self.llm.max_model_len * longest_token
        chars = sum(len(text) for text in texts)
        if chars > self._max_prompt_chars:
            raise ContextLengthError(
                f"This model's maximum context length is {self.llm.max_model_len} tokens; the prompt's {chars} "
                f"characters are more than that many tokens can hold. Please shorten the prompt."
            )

    async def compile_grammar(self, guided: GuidedDecoding) -> object:
        """The constraint compiled in the grammar threads, neither on the event loop nor on
        the engine's; one that takes longer than grammar_compile_timeout is a 400."""
        work = asyncio.get_running_loop().run_in_executor(self.grammar_pool, self.llm.compile_grammar, guided)
        timeout = self.config.grammar_compile_timeout
        try:
            return await asyncio.wait_for(work, timeout)
        except asyncio.TimeoutError as error:
            param = "tools" if guided.kind == "structural_tag" else "response_format"
            raise BadRequest(f"The constraint did not compile within {timeout:g} s; simplify it.", param=param,
                             code="grammar_compile_timeout") from error

    def check_model(self, name: str | None) -> str:
        if name is None:
            return self.model_names[0]
        if name not in self.model_names and not self.config.accept_any_model_name:
            raise NotFound(f"The model '{name}' does not exist. Served: {', '.join(self.model_names)}.",
                           param="model", code="model_not_found")
        return name


def check_fields(request: RequestModel) -> None:
    """Refuse fields that would otherwise be silently ignored."""
    for name in request.unknown_fields():
        value = request.model_extra[name]
        if name in UNSUPPORTED_FIELDS:
            if value is not None:
                raise BadRequest(f"'{name}' is not supported by this server yet.", param=name, code="unsupported_parameter")
        elif name not in IGNORED_FIELDS:
            raise BadRequest(f"Unrecognized request argument supplied: {name}", param=name)


def logit_bias(request: SamplingFields, vocab_size: int) -> dict[int, float] | None:
    if not request.logit_bias:
        return None
    bias = {}
    for key, value in request.logit_bias.items():
        if not key.lstrip("-").isdigit() or not 0 <= int(key) < vocab_size:
            raise BadRequest(f"logit_bias key {key!r} is not a token id in [0, {vocab_size})", param="logit_bias")
        bias[int(key)] = value
    return bias


def guided_decoding(response_format: ResponseFormat | None) -> GuidedDecoding | None:
    """The grammar a response_format asks for; a schema that is not one is a 400."""
    if response_format is None or response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return GuidedDecoding("json_object")
    if response_format.json_schema is None:
        raise BadRequest("response_format of type 'json_schema' needs a 'json_schema' object", param="response_format")
    schema = response_format.json_schema.json_schema
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as error:
        raise BadRequest(f"response_format.json_schema.schema is not a valid JSON schema: {error.message}",
                         param="response_format") from error
    return GuidedDecoding("json_schema", json.dumps(schema))


def sampling_params(
    ctx: ServingContext,
    request: SamplingFields,
    max_tokens: int | None,
    logprobs: int | None,
    guided: GuidedDecoding | None = None,
) -> list[SamplingParams]:
    """One SamplingParams per choice; with a seed, choice i uses seed + i so the n choices differ."""
    stop = [request.stop] if isinstance(request.stop, str) else list(request.stop or [])
    base = dict(
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        top_k=request.top_k or 0,
        min_p=request.min_p or 0.0,
        max_tokens=max_tokens,
        min_tokens=request.min_tokens,
        presence_penalty=request.presence_penalty or 0.0,
        frequency_penalty=request.frequency_penalty or 0.0,
        repetition_penalty=1.0 if request.repetition_penalty is None else request.repetition_penalty,
        logit_bias=logit_bias(request, ctx.llm.vocab_size),
        stop=stop,
        stop_token_ids=list(request.stop_token_ids or []),
        include_stop_str_in_output=request.include_stop_str_in_output,
        ignore_eos=request.ignore_eos,
        logprobs=logprobs,
        skip_special_tokens=request.skip_special_tokens,
        guided=guided or guided_decoding(request.response_format),
    )
    # an out-of-range value raises InvalidRequestError, which the app answers with a 400
    return [SamplingParams(**base, seed=None if request.seed is None else request.seed + i) for i in range(request.n)]


@contextlib.contextmanager
def engine_refusals():
    """The engine's refusals as API errors: 429 (queue full), 503 (engine not ready)."""
    try:
        yield
    except QueueFull as error:
        raise TooManyRequests(str(error), code="queue_full", headers={"Retry-After": RETRY_AFTER_S}) from error
    except EngineUnavailable as error:
        raise Unavailable(str(error), headers={"Retry-After": RETRY_AFTER_S}) from error


@dataclass
class Generation:
    """One API request in flight: what it asked, and the stream of its sequences."""

    request_id: str
    model: str
    prompts: list[list[int]]  # distinct prompts, for usage
    sequences: list[tuple[list[int], SamplingParams]]  # one per choice
    stream: GenerationStream
    created: int = field(default_factory=now)


async def start_generation(
    ctx: ServingContext, prefix: str, model: str, prompts: list[list[int]], sequences: list[tuple[list[int], SamplingParams]]
) -> Generation:
    """Check the sequences (400), the server's capacity (429/503), compile their constraint
    if any (the n choices share one), then submit them."""
    for prompt_ids, params in sequences:
        ctx.llm.validate(prompt_ids, params)
    with engine_refusals():
        ctx.engine.check_available(len(sequences))  # before compiling anything
    guided = sequences[0][1].guided
    grammar = await ctx.compile_grammar(guided) if guided is not None else None
    request_id = new_id(prefix)
    with engine_refusals():  # checked again: other requests may have come in while this one compiled
        stream = ctx.engine.generate(request_id, sequences, grammar)
    return Generation(request_id, model, prompts, sequences, stream)


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
            timers[index].token()
            if output.finished:
                timers[index].finished(output.finish_reason)
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


async def collect(ctx: ServingContext, generation: Generation, prefixes: list[str]) -> list[Choice]:
    """Run the generation to the end; ``prefixes`` start each choice's text (echo)."""
    choices = [Choice(prefix, []) for prefix in prefixes]
    async for index, output in outputs_of(ctx, generation):
        choice = choices[index]
        choice.text += output.new_text
        choice.sampled.extend(output.new_logprobs)
        if output.finished:
            choice.final = output
    return choices


def usage(prompts: list[list[int]], finals: list[RequestOutput | None]) -> Usage:
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(len(f.output_token_ids) for f in finals)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        total_tokens=prompt_tokens + completion_tokens,
        prompt_tokens_details={"cached_tokens": max(f.num_cached_tokens for f in finals)},
    )


class StreamUsage:
    """Token counts of a streamed generation as it goes: with stream_options'
    continuous_usage_stats (and include_usage), every chunk carries them."""

    def __init__(self, request: SamplingFields, generation: Generation):
        options = request.stream_options
        self.continuous = bool(options and options.include_usage and options.continuous_usage_stats)
        self.prompt_tokens = sum(len(p) for p in generation.prompts)
        self.completion_tokens = 0

    def count(self, output: RequestOutput) -> None:
        self.completion_tokens += len(output.new_token_ids)

    def per_chunk(self) -> Usage | None:
        if not self.continuous:
            return None
        total = self.prompt_tokens + self.completion_tokens
        return Usage(prompt_tokens=self.prompt_tokens, completion_tokens=self.completion_tokens, total_tokens=total)


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


def token_logprobs(tokenizer, token_bytes: TokenBytes, sampled: list[SampledToken]) -> list[TokenLogprob]:
    def entry(token_id: int, logprob: float) -> dict[str, Any]:
        return {"token": tokenizer.decode([token_id]), "logprob": logprob, "bytes": list(token_bytes(token_id))}

    return [
        TokenLogprob(
            **entry(s.token_id, s.logprob),
            top_logprobs=[TopLogprob(**entry(t, lp)) for t, lp in (s.top_logprobs or [])],
        )
        for s in sampled
    ]


def sse(payload: BaseModel) -> str:
    return f"data: {payload.model_dump_json(exclude_none=True)}\n\n"


SSE_DONE = "data: [DONE]\n\n"


async def event_stream(events: AsyncIterator[str]) -> AsyncIterator[str]:
    """Frame a stream's events; an error after the stream began goes out as a
    ``data:`` line with OpenAI's error body, then ``[DONE]``."""
    try:
        async for event in events:
            yield event
    except APIError as error:
        yield sse_error(error)
    except Exception:
        logger.exception("error while streaming")
        yield sse_error(InternalError("The server had an error while streaming."))
    yield SSE_DONE
