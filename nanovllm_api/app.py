"""The FastAPI app: it only wires endpoints, middleware and the engine's lifetime."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware

from nanovllm_api.chat_template import resolve_chat_template
from nanovllm_api.chat_tools import resolve_parser
from nanovllm_api.config import ServerConfig
from nanovllm_api.errors import RequestTooLarge, install_error_handlers
from nanovllm_api.metrics import Metrics
from nanovllm_api.routes import add_api_routes, add_chat_page, add_monitoring_routes
from nanovllm_api.serving_context import ServingContext
from nanovllm_core import __version__, plugins
from nanovllm_core.engine.async_llm import AsyncLLM, ClientLimits
from nanovllm_core.engine.data_parallel import DataParallelClient
from nanovllm_core.engine_client import EngineClient
from nanovllm_core.loader import ModelSource, resolve_model

logger = logging.getLogger(__name__)
ENGINE_FAILURE_EXIT_DELAY_S = 5


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


def build_engine_client(config: ServerConfig, source: ModelSource) -> EngineClient:
    """The one place the server picks its engine: on a thread of this process, or
    data-parallel replicas, each in a process of its own (which resolve the model themselves)."""
    limits = ClientLimits(config.max_queued_sequences, config.client_read_timeout, config.grammar_compile_timeout)
    if config.data_parallel_size > 1:
        return DataParallelClient(config, config.data_parallel_size, config.threads_per_replica, limits,
                                  config.replica_timeout)
    return AsyncLLM(config, limits, source)


def build_app(config: ServerConfig) -> FastAPI:
    source = resolve_model(config.model)
    engine = build_engine_client(config, source)
    ctx = ServingContext(
        config=config,
        engine=engine,
        metrics=Metrics(engine),
        model_names=config.served_model_name or [source.name],
        reasoning_parser=plugins.reasoning_parsers().get(config.reasoning_parser)() if config.reasoning_parser else None,
    )
    app = FastAPI(title="nanovllm", version=__version__, description="OpenAI-compatible API served by nanovllm.",
                  lifespan=_lifespan(ctx))
    app.state.ctx = ctx
    app.state.request_exit = lambda: None  # run_server points this at the uvicorn server
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=config.max_request_bytes)
    if config.cors_allowed_origins:
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_allowed_origins, allow_methods=["*"],
                           allow_headers=["*"])
    add_monitoring_routes(app, ctx)
    if config.webui:
        add_chat_page(app)
    add_api_routes(app, ctx)
    return app


def _lifespan(ctx: ServingContext):
    """Start the engine with the server, serve /health (503) while the model loads, stop it with the server."""
    engine = ctx.engine

    async def finish_loading() -> None:
        if await asyncio.to_thread(engine.wait_ready) and engine.model_info.task == "generate":
            ctx.chat_template = resolve_chat_template(ctx.config.chat_template, engine.model_info.tokenizer,
                                                     engine.model_info.default_chat_template)
            ctx.tool_parser = resolve_parser(ctx.config.tool_call_parser, ctx.chat_template)
            logger.info("tool-call parser: %s", type(ctx.tool_parser).__name__)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        def on_engine_failure() -> None:
            # /health answers 503 and in-flight requests get their errors for a moment, then the
            # process exits non-zero so that a supervisor restarts it
            logger.error("the engine has stopped; exiting in %s s", ENGINE_FAILURE_EXIT_DELAY_S)
            asyncio.get_running_loop().call_later(ENGINE_FAILURE_EXIT_DELAY_S, app.state.request_exit)

        engine.start(asyncio.get_running_loop(), on_engine_failure)
        loading = asyncio.create_task(finish_loading())
        yield
        loading.cancel()
        engine.stop()

    return lifespan
