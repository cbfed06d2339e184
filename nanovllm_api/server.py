"""Start the server: `run_server(model=..., port=...)` from Python, or the CLI."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from typing import Any

import uvicorn

from nanovllm_api.app import build_app
from nanovllm_api.config import ServerConfig
from nanovllm_core.engine.async_llm import work_unless_rank_zero
from nanovllm_core.engine_client import EngineState

logger = logging.getLogger(__name__)


def run_server(
    model: str | None = None, config: ServerConfig | None = None, config_cls: type[ServerConfig] = ServerConfig,
    **settings: Any,
) -> None:
    """Serve until interrupted. ``settings`` are any ServerConfig fields
    (host, port, max_num_seqs, api_key, ...); or pass a ready ``config``."""
    if config is None:
        if model is not None:
            settings["model"] = model
        config = config_cls(**settings)
    logging.basicConfig(level=config.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    work_unless_rank_zero(config)
    if config.host in ("0.0.0.0", "::"):
        logger.warning("listening on every interface (%s); anyone who can reach this machine can use it%s",
                       config.host, "" if config.api_key else ", and no --api-key is set")
    app = build_app(config)
    server = uvicorn.Server(
        uvicorn.Config(app, host=config.host, port=config.port, log_level=config.log_level,
                       timeout_graceful_shutdown=config.shutdown_timeout, root_path=config.root_path)
    )
    app.state.request_exit = lambda: setattr(server, "should_exit", True)
    _exit_cleanly_after_signals()
    server.run()
    if app.state.ctx.engine.state is EngineState.DEAD:
        sys.exit("nanovllm-api: the engine stopped; see the log above")


def _exit_cleanly_after_signals() -> None:
    """uvicorn shuts down gracefully on SIGTERM/SIGINT, then re-raises the signal
    to whatever handler was installed before it; a no-op one makes a requested,
    completed shutdown exit with status 0, as supervisors expect."""
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda signum, frame: None)
