"""POST /v1/chat/completions"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

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
    TokenLogprob,
    TopLogprob,
)
from nanovllm_api.chat_tools import StreamedToolCalls, ToolUse, finish_reason, message_tool_calls, tool_use
from nanovllm_api.generation import Generation, cancel_on_disconnect, collect, outputs_of, start_generation
from nanovllm_api.serving_context import ServingContext, check_fields
from nanovllm_api.streaming import event_stream, sse
from nanovllm_api.usage import StreamUsage, usage
from nanovllm_core.detokenizer import TokenBytes
from nanovllm_core.outputs import SampledToken


async def create_chat_completion(request: ChatCompletionRequest, raw: Request, ctx: ServingContext):
    model = ctx.check_model(request.model)
    check_fields(request)
    ctx.model.check_task("generate")
    if request.top_logprobs is not None and not request.logprobs:
        raise BadRequest("top_logprobs requires logprobs to be true", param="top_logprobs")
    tools = tool_use(request, ctx.tool_parser)
    ctx.check_prompt_chars([message.text() for message in request.messages])

    def render() -> list[int]:
        prompt = ctx.renderer.render(
            request.messages, request.add_generation_prompt, request.chat_template_kwargs, tools.tools if tools else None
        )
        return ctx.renderer.encode(prompt)

    prompt_ids = await asyncio.to_thread(render)  # a long conversation takes a while: not on the event loop
    params = request.to_sampling_params(ctx.model, tools.guided() if tools else None)
    sequences = [(prompt_ids, p) for p in params]
    generation = await start_generation(ctx, "chatcmpl", model, [prompt_ids], sequences)
    if request.stream:
        return StreamingResponse(event_stream(_stream(ctx, request, tools, generation)), media_type="text/event-stream")
    return await cancel_on_disconnect(raw, _complete(ctx, request, tools, generation))


def _logprobs(ctx: ServingContext, request: ChatCompletionRequest, sampled) -> ChatLogprobs | None:
    return ChatLogprobs(content=token_logprobs(ctx.tokenizer, ctx.token_bytes, sampled)) if request.logprobs else None


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


async def _complete(
    ctx: ServingContext, request: ChatCompletionRequest, tools: ToolUse | None, generation: Generation
) -> ChatCompletionResponse:
    results = await collect(ctx, generation, [""] * len(generation.sequences))
    choices = []
    for i, result in enumerate(results):
        content, calls = tools.parser.parse(result.text) if tools else (result.text, [])
        choices.append(ChatChoice(
            index=i,
            message=AssistantMessage(content=content, tool_calls=message_tool_calls(calls)),
            logprobs=_logprobs(ctx, request, result.sampled),
            finish_reason=finish_reason(result.final.finish_reason, bool(calls)),
            stop_reason=result.final.stop_reason,
        ))
    return ChatCompletionResponse(
        id=generation.request_id, created=generation.created, model=generation.model,
        choices=choices, usage=usage(generation.prompts, [r.final for r in results]),
    )


async def _stream(
    ctx: ServingContext, request: ChatCompletionRequest, tools: ToolUse | None, generation: Generation
) -> AsyncIterator[str]:
    counts = StreamUsage(request, generation.prompts)

    def chunk(choices, usage=None) -> str:
        return sse(ChatCompletionChunk(
            id=generation.request_id, created=generation.created, model=generation.model, choices=choices,
            usage=usage or counts.per_chunk(),
        ))

    def delta(index: int, content: str, calls: list, logprobs=None) -> ChatChunkChoice | None:
        if not (content or calls or logprobs):
            return None
        return ChatChunkChoice(index=index, delta=Delta(content=content or None, tool_calls=calls or None),
                               logprobs=logprobs)

    for index in range(len(generation.sequences)):
        yield chunk([ChatChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
    finals = [None] * len(generation.sequences)
    splitters = [StreamedToolCalls(tools) for _ in generation.sequences]
    async for index, output in outputs_of(ctx, generation):
        counts.count(output)
        piece = delta(index, *splitters[index].feed(output.new_text), _logprobs(ctx, request, output.new_logprobs))
        if piece:
            yield chunk([piece])
        if output.finished:
            finals[index] = output
            if piece := delta(index, *splitters[index].finish()):
                yield chunk([piece])
            reason = finish_reason(output.finish_reason, splitters[index].called)
            yield chunk([ChatChunkChoice(index=index, delta=Delta(), finish_reason=reason)])
    if request.stream_options and request.stream_options.include_usage:
        yield chunk([], usage=usage(generation.prompts, finals))
