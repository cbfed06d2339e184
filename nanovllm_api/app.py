"""The FastAPI app: it only wires endpoints, middleware and the engine's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging
from collections.abc import AsyncIterator
from pathlib import Path

from fastapi import Depends, FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
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
from nanovllm_api.chat_template import resolve_chat_template
from nanovllm_api.chat_tools import resolve_parser
from nanovllm_api.config import ServerConfig
from nanovllm_api.errors import RequestTooLarge, Unauthorized, error_body, install_error_handlers
from nanovllm_api.metrics import Metrics
from nanovllm_api.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    EmbeddingRequest,
    ResponsesRequest,
    TokenizeRequest,
)
from nanovllm_api.serving_context import ServingContext
from nanovllm_core import __version__, plugins
from nanovllm_core.engine.async_llm import AsyncLLM, ClientLimits
from nanovllm_core.engine.data_parallel import DataParallelClient
from nanovllm_core.engine_client import EngineClient, EngineState
from nanovllm_core.loader import resolve_model

logger = logging.getLogger(__name__)
ENGINE_FAILURE_EXIT_DELAY_S = 5
WEBUI_DIR = Path(__file__).parent / "webui"  # the chat page: static files, no build step


class BodySizeLimit:
    """413 in OpenAI's error shape for bodies over the limit, announced by
    Content-Length or streamed. (Starlette's own limiter answers an announced
    oversize body in plain text, which OpenAI clients cannot parse.)"""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(send)
        received = 0

        async def limited_receive():
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.max_bytes:
                raise RequestTooLarge(f"The request body exceeds {self.max_bytes} bytes.")
            return message

        try:
            await self.app(scope, limited_receive, send)
        except RequestTooLarge:
            await self._reject(send)

    async def _reject(self, send):
        response = RequestTooLarge(f"The request body exceeds {self.max_bytes} bytes.").response()
        await response({"type": "http"}, None, send)


def build_engine_client(config: ServerConfig) -> EngineClient:
    """The one place the server picks its engine: on a thread of this process, or
    data-parallel replicas, each in a process of its own."""
    limits = ClientLimits(config.max_queued_sequences, config.client_read_timeout, config.grammar_compile_timeout)
    if config.data_parallel_size > 1:
        return DataParallelClient(config, config.data_parallel_size, config.threads_per_replica, limits,
                                  config.replica_timeout)
    return AsyncLLM(config, limits)


def build_app(config: ServerConfig) -> FastAPI:
    source = resolve_model(config.model)
    engine = build_engine_client(config)
    ctx = ServingContext(
        config=config,
        engine=engine,
        metrics=Metrics(engine),
        model_names=config.served_model_name or [source.name],
        reasoning_parser=plugins.reasoning_parsers().get(config.reasoning_parser)() if config.reasoning_parser else None,
    )

    async def finish_loading() -> None:
        if await asyncio.to_thread(engine.wait_ready) and engine.model_info.task == "generate":
            ctx.chat_template = resolve_chat_template(config.chat_template, engine.model_info.tokenizer,
                                                     engine.model_info.default_chat_template)
            ctx.tool_parser = resolve_parser(config.tool_call_parser, ctx.chat_template)
            logger.info("tool-call parser: %s", type(ctx.tool_parser).__name__)

    def on_engine_failure() -> None:
        # /health answers 503 and in-flight requests get their errors for a moment, then the
        # process exits non-zero so that a supervisor restarts it
        logger.error("the engine has stopped; exiting in %s s", ENGINE_FAILURE_EXIT_DELAY_S)
        asyncio.get_running_loop().call_later(ENGINE_FAILURE_EXIT_DELAY_S, app.state.request_exit)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine.start(asyncio.get_running_loop(), on_engine_failure)
        loading = asyncio.create_task(finish_loading())  # serve /health (503) while the model loads
        yield
        loading.cancel()
        engine.stop()

    app = FastAPI(
        title="nanovllm",
        version=__version__,
        description="OpenAI-compatible API served by nanovllm.",
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    app.state.request_exit = lambda: None  # run_server points this at the uvicorn server
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=config.max_request_bytes)
    if config.cors_allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_allowed_origins, allow_methods=["*"], allow_headers=["*"])

    async def check_api_key(request: Request) -> None:
        if config.api_key is None:
            return
        supplied = request.headers.get("authorization", "")
        expected = f"Bearer {config.api_key}"
        if not hmac.compare_digest(supplied.encode(), expected.encode()):
            raise Unauthorized("Incorrect API key provided.", code="invalid_api_key")

    guarded = [Depends(check_api_key)]

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

    if config.webui:
        app.mount("/webui", StaticFiles(directory=WEBUI_DIR), name="webui")

        @app.get("/", include_in_schema=False)
        async def chat_page() -> FileResponse:
            return FileResponse(WEBUI_DIR / "index.html")

    @app.get("/v1/models", dependencies=guarded, tags=["openai"])
    async def models():
        return serving_models.list_models(ctx)

    @app.get("/v1/models/{model_id:path}", dependencies=guarded, tags=["openai"])
    async def model(model_id: str):
        return serving_models.retrieve_model(ctx, model_id)

    @app.post("/v1/chat/completions", dependencies=guarded, tags=["openai"])
    async def chat_completions(request: ChatCompletionRequest, raw: Request):
        return await serving_chat.create_chat_completion(request, raw, ctx)

    @app.post("/v1/completions", dependencies=guarded, tags=["openai"])
    async def completions(request: CompletionRequest, raw: Request):
        return await serving_completion.create_completion(request, raw, ctx)

    @app.post("/v1/responses", dependencies=guarded, tags=["openai"])
    async def responses(request: ResponsesRequest, raw: Request):
        return await serving_responses.create_response(request, raw, ctx)

    @app.post("/v1/embeddings", dependencies=guarded, tags=["openai"])
    async def embeddings(request: EmbeddingRequest, raw: Request):
        return await serving_embedding.create_embedding(request, raw, ctx)

    @app.post("/tokenize", dependencies=guarded, tags=["utility"])
    async def tokenize(request: TokenizeRequest):
        return await serving_tokenize.tokenize(request, ctx)

    @app.post("/detokenize", dependencies=guarded, tags=["utility"])
    async def detokenize(request: DetokenizeRequest):
        return await serving_tokenize.detokenize(request, ctx)

    return app
