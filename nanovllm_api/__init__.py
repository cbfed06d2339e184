"""nanovllm's OpenAI-compatible API server."""

from nanovllm_api.server import run_server

__all__ = ["run_server"]
