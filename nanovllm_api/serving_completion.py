"""POST /v1/completions"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from nanovllm_api.errors import BadRequest
from nanovllm_api.protocol.completion import CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse
from nanovllm_api.generation import (
    Choice,
    Generation,
    built_off_the_loop,
    cancel_on_disconnect,
    collect,
    outputs_of,
    start_generation,
)
from nanovllm_api.prompt_logprobs import check_not_streamed, prompt_logprobs
from nanovllm_api.serving_context import ServingContext
from nanovllm_api.streaming import event_stream, sse
from nanovllm_api.usage import StreamUsage, usage
from nanovllm_core.outputs import SampledToken


async def create_completion(request: CompletionRequest, raw: Request, ctx: ServingContext):
    model = ctx.served_name(request.model)
    check_not_streamed(request)
    if request.best_of not in (None, request.n):
        raise BadRequest("best_of other than n is not supported", param="best_of")
    if request.echo and request.logprobs is not None:
        raise BadRequest("echo together with logprobs (prompt logprobs) is not supported", param="echo")
    prompts = await ctx.prompt_token_ids(request.prompt, param="prompt")
    params = request.to_sampling_params(ctx.model)
    # choice index = prompt index * n + choice within the prompt
    sequences = [(prompt_ids, p) for prompt_ids in prompts for p in params]
    generation = await start_generation(ctx, "cmpl", model, prompts, sequences)
    # after the engine's client checked the ids: out of the vocabulary is a 400, not a decoder error;
    # a prompt of up to max_model_len ids, per choice: off the event loop
    echoes = await asyncio.to_thread(lambda: [ctx.tokenizer.decode(p) if request.echo else "" for p, _ in sequences])
    if request.stream:
        return StreamingResponse(event_stream(_stream(ctx, request, generation, echoes)), media_type="text/event-stream")
    return await cancel_on_disconnect(raw, _complete(ctx, request, generation, echoes))


def _logprobs(ctx: ServingContext, request: CompletionRequest, sampled: list[SampledToken], offset: int):
    if request.logprobs is None:
        return None
    tokenizer = ctx.tokenizer
    result = CompletionLogprobs()
    for s in sampled:
        token = tokenizer.decode([s.token_id])
        result.tokens.append(token)
        result.token_logprobs.append(s.logprob)
        result.top_logprobs.append({tokenizer.decode([t]): lp for t, lp in (s.top_logprobs or [])})
        result.text_offset.append(offset)
        offset += len(token)
    return result


async def _complete(ctx, request: CompletionRequest, generation: Generation, echoes: list[str]) -> Response:
    results = await collect(ctx, generation, echoes)
    return await built_off_the_loop(lambda: _response(ctx, request, generation, echoes, results))


def _response(ctx: ServingContext, request: CompletionRequest, generation: Generation, echoes: list[str],
              results: list[Choice]) -> CompletionResponse:
    choices = [
        CompletionChoice(
            index=i,
            text=result.text,
            logprobs=_logprobs(ctx, request, result.sampled, len(echoes[i])),
            finish_reason=result.final.finish_reason,
            stop_reason=result.final.stop_reason,
            prompt_logprobs=prompt_logprobs(ctx.tokenizer, result.prompt_logprobs),
        )
        for i, result in enumerate(results)
    ]
    return CompletionResponse(
        id=generation.request_id, created=generation.created, model=generation.model,
        choices=choices, usage=usage(generation.prompts, [r.final for r in results]),
    )


async def _stream(ctx, request: CompletionRequest, generation: Generation, echoes: list[str]) -> AsyncIterator[str]:
    counts = StreamUsage(request, generation.prompts)

    def chunk(choices, usage=None) -> str:
        return sse(CompletionResponse(
            id=generation.request_id, created=generation.created, model=generation.model, choices=choices,
            usage=usage or counts.per_chunk(),
        ))

    for index, echo in enumerate(echoes):
        if echo:
            yield chunk([CompletionChoice(index=index, text=echo)])
    offsets = [len(e) for e in echoes]
    finals = [None] * len(generation.sequences)
    async for index, output in outputs_of(ctx, generation):
        counts.count(output)
        logprobs = _logprobs(ctx, request, output.new_logprobs, offsets[index])
        offsets[index] += len(output.new_text)
        if output.new_text or logprobs or output.finished:
            yield chunk([CompletionChoice(
                index=index, text=output.new_text, logprobs=logprobs, finish_reason=output.finish_reason
            )])
        if output.finished:
            finals[index] = output
    if request.stream_options and request.stream_options.include_usage:
        yield chunk([], usage=usage(generation.prompts, finals))
