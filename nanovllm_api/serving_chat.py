"""POST /v1/chat/completions"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from nanovllm_api.errors import BadRequest
from nanovllm_api.protocol.chat import (
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
from nanovllm_api.protocol.common import text_size
from nanovllm_api.chat_tools import StreamedToolCalls, ToolUse, finish_reason, message_tool_calls, tool_use
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
from nanovllm_core.detokenizer import TokenBytes
from nanovllm_core.outputs import SampledToken


@dataclass
class ChatRun:
    """A chat request submitted: its tools, the rendered prompt, and the generation."""

    tools: ToolUse | None
    prompt: str
    generation: Generation


async def create_chat_completion(request: ChatCompletionRequest, raw: Request, ctx: ServingContext):
    run = await start_chat(request, ctx, "chatcmpl")
    if request.stream:
        events = _stream(ctx, request, run.tools, run.generation, run.prompt)
        return StreamingResponse(event_stream(events), media_type="text/event-stream")
    return await cancel_on_disconnect(raw, _complete(ctx, request, run.tools, run.generation, run.prompt))


async def start_chat(request: ChatCompletionRequest, ctx: ServingContext, id_prefix: str) -> ChatRun:
    """Check the request's fields (the route's guard has checked its model and task), render
    and tokenize its conversation off the event loop, submit it."""
    model = ctx.served_name(request.model)
    check_not_streamed(request)
    if request.top_logprobs is not None and not request.logprobs:
        raise BadRequest("top_logprobs requires logprobs to be true", param="top_logprobs")
    tools = tool_use(request, ctx.tool_parser)
    # everything the template may write into the prompt: messages and their tool calls, tools, template arguments
    ctx.check_prompt_chars(text_size([request.messages, request.tools, request.chat_template_kwargs]))

    def render() -> tuple[str, list[int]]:
        prompt = ctx.renderer.render(
            request.messages, request.add_generation_prompt, request.chat_template_kwargs, tools.tools if tools else None
        )
        return prompt, ctx.renderer.encode(prompt)

    prompt, prompt_ids = await asyncio.to_thread(render)  # a long conversation takes a while: not on the event loop
    params = request.to_sampling_params(ctx.model, tools.guided() if tools else None,
                                        ctx.thinking_end_token_ids(prompt))
    sequences = [(prompt_ids, p) for p in params]
    return ChatRun(tools, prompt, await start_generation(ctx, id_prefix, model, [prompt_ids], sequences))


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
    ctx: ServingContext, request: ChatCompletionRequest, tools: ToolUse | None, generation: Generation, prompt: str
) -> Response:
    results = await collect(ctx, generation, [""] * len(generation.sequences))
    return await built_off_the_loop(lambda: _response(ctx, request, tools, generation, prompt, results))


def _response(ctx: ServingContext, request: ChatCompletionRequest, tools: ToolUse | None, generation: Generation,
              prompt: str, results: list[Choice]) -> ChatCompletionResponse:
    choices = []
    for i, result in enumerate(results):
        reasoning, answer = ctx.split_reasoning(result.text, prompt)
        content, calls = tools.parser.parse(answer) if tools else (answer, [])
        choices.append(ChatChoice(
            index=i,
            message=AssistantMessage(content=content, reasoning_content=reasoning, reasoning=reasoning,
                                     tool_calls=message_tool_calls(calls)),
            logprobs=_logprobs(ctx, request, result.sampled),
            finish_reason=finish_reason(result.final.finish_reason, bool(calls)),
            stop_reason=result.final.stop_reason,
        ))
    return ChatCompletionResponse(
        id=generation.request_id, created=generation.created, model=generation.model,
        choices=choices, usage=usage(generation.prompts, [r.final for r in results]),
        prompt_logprobs=prompt_logprobs(ctx.tokenizer, results[0].prompt_logprobs),
    )


async def _stream(
    ctx: ServingContext, request: ChatCompletionRequest, tools: ToolUse | None, generation: Generation, prompt: str
) -> AsyncIterator[str]:
    counts = StreamUsage(request, generation.prompts)

    def chunk(choices, usage=None) -> str:
        return sse(ChatCompletionChunk(
            id=generation.request_id, created=generation.created, model=generation.model, choices=choices,
            usage=usage or counts.per_chunk(),
        ))

    def delta(index: int, reasoning: str, content: str, calls: list, logprobs=None) -> ChatChunkChoice | None:
        if not (reasoning or content or calls or logprobs):
            return None
        return ChatChunkChoice(index=index, delta=Delta(
            content=content or None, reasoning_content=reasoning or None, reasoning=reasoning or None,
            tool_calls=calls or None,
        ), logprobs=logprobs)

    def split(index: int, reasoning_and_answer: tuple[str, str], last: bool = False) -> tuple[str, str, list]:
        """A piece of output through the choice's reasoning splitter, then its tool-call splitter."""
        reasoning, answer = reasoning_and_answer
        splitter = splitters[index]
        return reasoning, *(splitter.finish(answer) if last else splitter.feed(answer))

    for index in range(len(generation.sequences)):
        yield chunk([ChatChunkChoice(index=index, delta=Delta(role="assistant", content=""))])
    finals = [None] * len(generation.sequences)
    splitters = [StreamedToolCalls(tools) for _ in generation.sequences]
    reasoners = [ctx.reasoning_stream(prompt) for _ in generation.sequences]
    async for index, output in outputs_of(ctx, generation):
        counts.count(output)
        pieces = split(index, reasoners[index].feed(output.new_text))
        if piece := delta(index, *pieces, _logprobs(ctx, request, output.new_logprobs)):
            yield chunk([piece])
        if output.finished:
            finals[index] = output
            if piece := delta(index, *split(index, reasoners[index].finish(), last=True)):
                yield chunk([piece])
            reason = finish_reason(output.finish_reason, splitters[index].called)
            yield chunk([ChatChunkChoice(index=index, delta=Delta(), finish_reason=reason)])
    if request.stream_options and request.stream_options.include_usage:
        yield chunk([], usage=usage(generation.prompts, finals))
