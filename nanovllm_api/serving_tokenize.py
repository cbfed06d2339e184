"""POST /tokenize and /detokenize"""

from __future__ import annotations

import asyncio

from fastapi import Request

from nanovllm_api.errors import BadRequest
from nanovllm_api.protocol.tokenization import DetokenizeRequest, DetokenizeResponse, TokenizeRequest, TokenizeResponse
from nanovllm_api.serving_context import ServingContext


async def tokenize(request: TokenizeRequest, raw: Request, ctx: ServingContext) -> TokenizeResponse:
    if (request.prompt is None) == (request.messages is None):
        raise BadRequest("give exactly one of 'prompt' and 'messages'", param="prompt")

    def encode() -> list[int]:
        if request.messages is not None:
            return ctx.renderer.encode(ctx.renderer.render(request.messages, request.add_generation_prompt, None))
        return ctx.tokenizer.encode(request.prompt, add_special_tokens=request.add_special_tokens)

    tokens = await asyncio.to_thread(encode)  # up to the body limit of text: not on the event loop
    return TokenizeResponse(count=len(tokens), max_model_len=ctx.model.max_model_len, tokens=tokens)


async def detokenize(request: DetokenizeRequest, raw: Request, ctx: ServingContext) -> DetokenizeResponse:
    vocab_size = ctx.model.vocab_size
    bad = [t for t in request.tokens if t >= vocab_size]
    if bad:
        raise BadRequest(f"token ids out of range [0, {vocab_size}): {bad[:5]}", param="tokens")
    tokenizer = ctx.tokenizer  # up to the body limit of ids: not on the event loop
    return DetokenizeResponse(prompt=await asyncio.to_thread(tokenizer.decode, request.tokens))
