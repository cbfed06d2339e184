"""POST /v1/embeddings"""

from __future__ import annotations

import base64

import numpy as np
import torch
from fastapi import Request
from fastapi.responses import Response

from nanovllm_api.generation import Generation, built_off_the_loop, cancel_on_disconnect, collect, engine_refusals
from nanovllm_api.protocol.common import new_id
from nanovllm_api.protocol.embedding import Embedding, EmbeddingRequest, EmbeddingResponse, EmbeddingUsage
from nanovllm_api.serving_context import ServingContext


async def create_embedding(request: EmbeddingRequest, raw: Request, ctx: ServingContext) -> Response:
    model = ctx.served_name(request.model)
    prompts = await ctx.prompt_token_ids(request.input, param="input")
    params = request.to_pooling_params()
    request_id = new_id("embd")
    with engine_refusals():
        stream = await ctx.engine.encode(request_id, prompts, params)
    generation = Generation(request_id, model, prompts, [(prompt, params) for prompt in prompts], stream)
    results = await cancel_on_disconnect(raw, collect(ctx, generation, [""] * len(prompts)))

    def response() -> EmbeddingResponse:
        data = [Embedding(index=index, embedding=_encoded(result.final.embedding, request.encoding_format))
                for index, result in enumerate(results)]
        num_tokens = sum(len(prompt) for prompt in prompts)
        return EmbeddingResponse(data=data, model=model,
                                 usage=EmbeddingUsage(prompt_tokens=num_tokens, total_tokens=num_tokens))

    return await built_off_the_loop(response)


def _encoded(vector: torch.Tensor, encoding_format: str) -> list[float] | str:
    if encoding_format == "float":
        return vector.tolist()
    return base64.b64encode(vector.numpy().astype(np.dtype("<f4")).tobytes()).decode()
