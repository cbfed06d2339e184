"""Every endpoint, from one table: the API's behind one guard in one order (the API key,
then ``ServingContext.guard``: the body's fields, the model it names, the task it needs),
then the monitoring endpoints and the chat page.

No ``from __future__ import annotations`` here: FastAPI reads each route's body type from
its annotation, which must be the class itself.
"""

import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles

from nanovllm_api import (
    serving_chat,
    serving_completion,
    serving_embedding,
    serving_models,
    serving_responses,
    serving_tokenize,
)
from nanovllm_api.errors import Unauthorized, error_body
from nanovllm_api.protocol.chat import ChatCompletionRequest
from nanovllm_api.protocol.common import RequestModel
from nanovllm_api.protocol.completion import CompletionRequest
from nanovllm_api.protocol.embedding import EmbeddingRequest
from nanovllm_api.protocol.responses import ResponsesRequest
from nanovllm_api.protocol.tokenization import DetokenizeRequest, TokenizeRequest
from nanovllm_api.serving_context import ServingContext
from nanovllm_core import __version__
from nanovllm_core.engine_client import EngineState

WEBUI_DIR = Path(__file__).parent / "webui"  # the chat page: static files, no build step


@dataclass(frozen=True)
class Endpoint:
    """A POST endpoint: ``handler(body, raw request, ctx)`` answers a ``body`` that passed the
    guard; ``task``: what the model must serve (None: any model)."""

    path: str
    handler: Callable[[RequestModel, Request, ServingContext], Awaitable]
    body: type[RequestModel]
    task: str | None
    tag: str = "openai"


ENDPOINTS = (
    Endpoint("/v1/chat/completions", serving_chat.create_chat_completion, ChatCompletionRequest, "generate"),
    Endpoint("/v1/completions", serving_completion.create_completion, CompletionRequest, "generate"),
    Endpoint("/v1/responses", serving_responses.create_response, ResponsesRequest, "generate"),
    Endpoint("/v1/embeddings", serving_embedding.create_embedding, EmbeddingRequest, "embed"),
    Endpoint("/tokenize", serving_tokenize.tokenize, TokenizeRequest, None, "utility"),
    Endpoint("/detokenize", serving_tokenize.detokenize, DetokenizeRequest, None, "utility"),
)


def add_api_routes(app: FastAPI, ctx: ServingContext) -> None:
    guarded = [Depends(_api_key_check(ctx.config.api_key))]
    for endpoint in ENDPOINTS:
        app.add_api_route(endpoint.path, _route(endpoint, ctx), methods=["POST"], dependencies=guarded,
                          tags=[endpoint.tag], name=endpoint.handler.__name__)

    async def models():
        return serving_models.list_models(ctx)

    async def model(model_id: str):
        return serving_models.retrieve_model(ctx, model_id)

    app.add_api_route("/v1/models", models, methods=["GET"], dependencies=guarded, tags=["openai"])
    app.add_api_route("/v1/models/{model_id:path}", model, methods=["GET"], dependencies=guarded, tags=["openai"])


def _route(endpoint: Endpoint, ctx: ServingContext):
    async def route(body: endpoint.body, raw: Request):
        ctx.guard(body, endpoint.task)
        return await endpoint.handler(body, raw, ctx)

    return route


def _api_key_check(api_key: str | None):
    async def check_api_key(request: Request) -> None:
        if api_key is None:
            return
        supplied = request.headers.get("authorization", "")
        if not hmac.compare_digest(supplied.encode(), f"Bearer {api_key}".encode()):
            raise Unauthorized("Incorrect API key provided.", code="invalid_api_key")

    return check_api_key


def add_monitoring_routes(app: FastAPI, ctx: ServingContext) -> None:
    engine = ctx.engine

    @app.get("/health", tags=["monitoring"])
    async def health() -> Response:
        if engine.state is EngineState.READY:
            replicas = engine.replica_statuses()
            serving = sum(replica.state is EngineState.READY for replica in replicas)
            if serving == len(replicas):
                return JSONResponse({"status": "ok"})
            # still serving, on fewer replicas: ready for traffic, and says so
            return JSONResponse({"status": "degraded", "replicas_serving": serving, "replicas": len(replicas)})
        return JSONResponse(error_body(f"engine {engine.state.value}", "service_unavailable_error"), status_code=503)

    @app.get("/version", tags=["monitoring"])
    async def version() -> dict:
        return {"version": __version__}

    @app.get("/metrics", tags=["monitoring"])
    async def metrics() -> Response:
        return Response(ctx.metrics.render(), media_type="text/plain; version=0.0.4")

    @app.get("/stats", tags=["monitoring"])
    async def stats() -> dict:
        return {"model": ctx.model_names[0], **ctx.metrics.summary()}


def add_chat_page(app: FastAPI) -> None:
    app.mount("/webui", StaticFiles(directory=WEBUI_DIR), name="webui")

    @app.get("/", include_in_schema=False)
    async def chat_page() -> FileResponse:
        return FileResponse(WEBUI_DIR / "index.html")
