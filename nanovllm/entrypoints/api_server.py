"""The original nanovllm server's entry point, for its users: ``python -m
nanovllm.entrypoints.api_server --model PATH ...``, ``run_server(model=..., ...)``
and ``OpenAIServer``, as thin aliases of ``nanovllm_api``.

One default differs from ``nanovllm-api``, as that server behaved: a request may
name any model (its examples send ``"model": "qwen"``) and the response echoes
that name. A config file, ``NANOVLLM_ACCEPT_ANY_MODEL_NAME`` or
``--no-accept-any-model-name`` turn it off.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from pydantic import Field

from nanovllm_api.app import build_app
from nanovllm_api.cli import main as _main
from nanovllm_api.config import ServerConfig
from nanovllm_api.server import run_server as _run_server
from nanovllm_core.engine_client import EngineClient

PROG = "python -m nanovllm.entrypoints.api_server"


class CompatServerConfig(ServerConfig):
    accept_any_model_name: bool = Field(
        True, description="Serve a request whatever `model` it names, echoing that name, as the original nanovllm "
        "server did (on by default here; `nanovllm-api` answers an unknown name with vLLM's 404)."
    )


def run_server(model: str | None = None, **settings: Any) -> None:
    """``run_server(model=..., host=..., port=..., max_num_seqs=..., max_model_len=...,
    tensor_parallel_size=...)``, or any other server setting."""
    _run_server(model, config_cls=CompatServerConfig, **settings)


class OpenAIServer:
    """Holds the engine and builds the FastAPI app (serve ``.app`` with any ASGI server;
    the engine starts with the app's lifespan)."""

    def __init__(self, model: str | None = None, **settings: Any):
        if model is not None:
            settings["model"] = model
        self.config = CompatServerConfig(**settings)
        self.app: FastAPI = build_app(self.config)

    @property
    def engine(self) -> EngineClient:
        return self.app.state.ctx.engine


def main(argv: list[str] | None = None) -> None:
    _main(argv, config_cls=CompatServerConfig, prog=PROG)


if __name__ == "__main__":
    main()
