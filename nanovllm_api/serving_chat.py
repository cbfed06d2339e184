"""POST /v1/chat/completions"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse

from nanovllm_api.errors import BadRequest
from nanovllm_api.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    ChatLogprobs,
    Delta,
)
from nanovllm_api.serving_common import (
    Generation,
    ServingContext,
    cancel_on_disconnect,
    check_fields,
    collect,
    event_stream,
    outputs_of,
    sampling_params,
    sse,
    start_generation,
    token_logprobs,
    usage,
    validate_sequences,
)


async def create_chat_completion(request: ChatCompletionRequest, raw: Request, ctx: ServingContext):
    model = ctx.check_model(request.model)
    check_fields(request)
    if request.top_logprobs is not None and not request.logprobs:
        raise BadRequest("top_logprobs requires logprobs to be true", param="top_logprobs")
    prompt = ctx.renderer.render(request.messages, request.add_generation_prompt, request.chat_template_kwargs)
    prompt_ids = ctx.renderer.encode(prompt)
    logprobs = (request.top_logprobs or 0) if request.logprobs else None
    max_tokens = request.max_completion_tokens or request.max_tokens
    sequences = [(prompt_ids, p) for p in sampling_params(ctx, request, max_tokens, logprobs)]
    validate_sequences(ctx, sequences)
    generation = start_generation(ctx, "chatcmpl", model, [prompt_ids], sequences)
    if request.stream:
        return StreamingResponse(event_stream(_stream(ctx, request, generation)), media_type="text/event-stream")
    return await cancel_on_disconnect(raw, _complete(ctx, request, generation))


def _logprobs(ctx: ServingContext, request: ChatCompletionRequest, sampled) -> ChatLogprobs | None:
    return ChatLogprobs(content=token_logprobs(ctx.llm.tokenizer, sampled)) if request.logprobs else None


async def _complete(ctx: ServingContext, request: ChatCompletionRequest, generation: Generation) -> ChatCompletionResponse:
    results = await collect(ctx, generation, [""] * len(generation.sequences))
    choices = [
        ChatChoice(
            index=i,
            message=AssistantMessage(content=result.text),
            logprobs=_logprobs(ctx, request, result.sampled),
            finish_reason=result.final.finish_reason,
            stop_reason=result.final.stop_reason,
        )
        for i, result in enumerate(results)
    ]
    return ChatCompletionResponse(
        id=generation.request_id, created=generation.created, model=generation.model,
        choices=choices, usage=usage(generation.prompts, [r.final for r in results]),
    )


async def _stream(ctx: ServingContext, request: ChatCompletionRequest, generation: Generation) -> AsyncIterator[str]:
    def chunk(choices, usage=None) -> str:
        return sse(ChatCompletionChunk(
            id=generation.request_id, created=generation.created, model=generation.model, choices=choices, usage=usage
        ))

    for index in range(len(generation.sequences)):
        yield chunk([ChatChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
    finals = [None] * len(generation.sequences)
    async for index, output in outputs_of(ctx, generation):
        logprobs = _logprobs(ctx, request, output.new_logprobs)
        if output.new_text or logprobs:
            yield chunk([ChatChunkChoice(index=index, delta=Delta(content=output.new_text), logprobs=logprobs)])
        if output.finished:
            finals[index] = output
            yield chunk([ChatChunkChoice(index=index, delta=Delta(), finish_reason=output.finish_reason)])
    if request.stream_options and request.stream_options.include_usage:
        yield chunk([], usage=usage(generation.prompts, finals))
