"""POST /v1/responses: OpenAI's Responses API, stateless.

A request becomes a chat request (``ResponsesRequest.to_chat_request``) and
runs through the chat pipeline; its output becomes typed items: the model's
thinking (with a reasoning parser), the message, and function calls. Streamed,
the same items are sent as the typed events the ``openai`` client expects
(``response.created``, ``response.output_text.delta``, ... ``response.completed``).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from fastapi import Request
from fastapi.responses import StreamingResponse
from pydantic import BaseModel

from nanovllm_api.chat_tools import StreamedToolCalls
from nanovllm_api.generation import cancel_on_disconnect, collect, outputs_of
from nanovllm_api.protocol.chat import ToolCallDelta
from nanovllm_api.protocol.common import new_id
from nanovllm_api.protocol.responses import (
    OutputFunctionCall,
    OutputMessage,
    OutputReasoning,
    OutputText,
    ReasoningText,
    ResponseObject,
    ResponseUsage,
    ResponsesRequest,
)
from nanovllm_api.serving_chat import ChatRun, start_chat
from nanovllm_api.serving_context import ServingContext
from nanovllm_api.streaming import event_stream
from nanovllm_core.outputs import RequestOutput

Item = OutputMessage | OutputReasoning | OutputFunctionCall


async def create_response(request: ResponsesRequest, raw: Request, ctx: ServingContext):
    run = await start_chat(request.to_chat_request(), ctx, "resp")
    builder = ResponseBuilder(ctx, request, run)
    if request.stream:
        return StreamingResponse(event_stream(_stream(ctx, builder, run)), media_type="text/event-stream")
    return await cancel_on_disconnect(raw, _complete(ctx, builder, run))


async def _complete(ctx: ServingContext, builder: ResponseBuilder, run: ChatRun) -> ResponseObject:
    [result] = await collect(ctx, run.generation, [""])
    builder.add(result.text)
    builder.finish(result.final)
    return builder.response()


async def _stream(ctx: ServingContext, builder: ResponseBuilder, run: ChatRun) -> AsyncIterator[str]:
    yield builder.event("response.created", response=builder.response())
    yield builder.event("response.in_progress", response=builder.response())
    async for _, output in outputs_of(ctx, run.generation):
        for event in builder.add(output.new_text):
            yield event
        if output.finished:
            for event in builder.finish(output):
                yield event
    yield builder.event("response.completed", response=builder.response())


class ResponseBuilder:
    """One response's output items, built from its text piece by piece; each change is
    also returned as the stream's events (a non-streamed response drops them)."""

    def __init__(self, ctx: ServingContext, request: ResponsesRequest, run: ChatRun):
        self.ctx, self.request, self.run = ctx, request, run
        self.reasoning = ctx.reasoning_stream(run.prompt)
        self.tool_calls = StreamedToolCalls(run.tools)
        self.items: list[Item] = []
        self.open: Item | None = None
        self.final: RequestOutput | None = None
        self.sequence_number = 0

    def add(self, text: str) -> list[str]:
        reasoning, answer = self.reasoning.feed(text)
        return self._apply(reasoning, *self.tool_calls.feed(answer))

    def finish(self, final: RequestOutput) -> list[str]:
        reasoning, answer = self.reasoning.finish()
        events = self._apply(reasoning, *self.tool_calls.finish(answer))
        self.final = final
        return events + self._close()

    def event(self, kind: str, **fields) -> str:
        payload = {"type": kind, "sequence_number": self.sequence_number,
                   **{k: v.model_dump() if isinstance(v, BaseModel) else v for k, v in fields.items()}}
        self.sequence_number += 1
        return f"event: {kind}\ndata: {json.dumps(payload, ensure_ascii=False)}\n\n"

    def _apply(self, reasoning: str, content: str, calls: list[ToolCallDelta]) -> list[str]:
        events = []
        if reasoning:
            if not isinstance(self.open, OutputReasoning):
                events += self._begin(OutputReasoning(id=_item_id("rs"), status="in_progress",
                                                      content=[ReasoningText(text="")]))
            self.open.content[0].text += reasoning
            events.append(self._text_event("response.reasoning_text.delta", delta=reasoning))
        if content and not isinstance(self.open, OutputMessage):
            content = content.lstrip()  # the whitespace between items is no message
            if content:
                events += self._begin(OutputMessage(id=_item_id("msg"), status="in_progress",
                                                    content=[OutputText(text="")]))
        if content:
            self.open.content[0].text += content
            events.append(self._text_event("response.output_text.delta", delta=content, logprobs=[]))
        for call in calls:
            if call.id is not None:  # a call opens with its id and name
                events += self._begin(OutputFunctionCall(id=_item_id("fc"), call_id=call.id, name=call.function.name,
                                                         arguments="", status="in_progress"))
            if call.function.arguments:
                self.open.arguments += call.function.arguments
                events.append(self.event("response.function_call_arguments.delta", item_id=self.open.id,
                                         output_index=len(self.items) - 1, delta=call.function.arguments))
        return events

    def _text_event(self, kind: str, **fields) -> str:
        return self.event(kind, item_id=self.open.id, output_index=len(self.items) - 1, content_index=0, **fields)

    def _begin(self, item: Item) -> list[str]:
        events = self._close()
        self.items.append(item)
        self.open = item
        events.append(self.event("response.output_item.added", output_index=len(self.items) - 1, item=item))
        if not isinstance(item, OutputFunctionCall):
            events.append(self._text_event("response.content_part.added", part=item.content[0].model_copy()))
        return events

    def _close(self) -> list[str]:
        item = self.open
        if item is None:
            return []
        self.open = None
        self.items[-1] = item = item.model_copy(update={"status": self._item_status()})
        index = len(self.items) - 1
        if isinstance(item, OutputFunctionCall):
            events = [self.event("response.function_call_arguments.done", item_id=item.id, output_index=index,
                                 arguments=item.arguments)]
        else:
            part = item.content[0]
            kind = "response.output_text.done" if isinstance(item, OutputMessage) else "response.reasoning_text.done"
            extra = {"logprobs": []} if isinstance(item, OutputMessage) else {}
            events = [self.event(kind, item_id=item.id, output_index=index, content_index=0, text=part.text, **extra),
                      self.event("response.content_part.done", item_id=item.id, output_index=index, content_index=0,
                                 part=part)]
        return events + [self.event("response.output_item.done", output_index=index, item=item)]

    def _item_status(self) -> str:
        """The open item was cut short if the output ran out of tokens before it ended."""
        return "incomplete" if self.final is not None and self.final.finish_reason == "length" else "completed"

    def response(self) -> ResponseObject:
        request, final = self.request, self.final
        status = "in_progress" if final is None else (
            "incomplete" if final.finish_reason == "length" else "completed")
        return ResponseObject(
            id=self.run.generation.request_id, created_at=self.run.generation.created, model=self.run.generation.model,
            status=status, output=list(self.items),
            incomplete_details={"reason": "max_output_tokens"} if status == "incomplete" else None,
            instructions=request.instructions, max_output_tokens=request.max_output_tokens,
            parallel_tool_calls=request.parallel_tool_calls, temperature=request.temperature, top_p=request.top_p,
            tool_choice=request.tool_choice or "auto", tools=request.tools or [], text=request.text,
            usage=None if final is None else self._usage(final),
        )

    def _usage(self, final: RequestOutput) -> ResponseUsage:
        input_tokens = len(self.run.generation.prompts[0])
        output_tokens = len(final.output_token_ids)
        thinking = "".join(item.content[0].text for item in self.items if isinstance(item, OutputReasoning))
        reasoning_tokens = len(self.ctx.tokenizer.encode(thinking, add_special_tokens=False)) if thinking else 0
        return ResponseUsage(
            input_tokens=input_tokens, input_tokens_details={"cached_tokens": final.num_cached_tokens},
            output_tokens=output_tokens, output_tokens_details={"reasoning_tokens": min(reasoning_tokens, output_tokens)},
            total_tokens=input_tokens + output_tokens,
        )


def _item_id(prefix: str) -> str:
    return new_id(prefix).replace("-", "_")
