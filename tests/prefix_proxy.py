"""A reverse proxy for tests: serves an upstream server under a path prefix, as nginx's
``location /llm/ { proxy_pass http://upstream/; }`` does, streaming both ways."""

from __future__ import annotations

import threading
import time

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from nanovllm_api.testing import free_port

HOP_BY_HOP = {"host", "content-length", "transfer-encoding", "connection"}


class PrefixProxy:
    def __init__(self, prefix: str, upstream: str):
        self.prefix, self.upstream = prefix, upstream
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        app = Starlette(routes=[Route(prefix + "/{path:path}", self._forward,
                                      methods=["GET", "POST", "PUT", "DELETE", "OPTIONS"])])
        self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self._server.run, daemon=True)

    async def _forward(self, request: Request) -> StreamingResponse:
        client = httpx.AsyncClient(base_url=self.upstream, timeout=None)
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        upstream = await client.send(client.build_request(
            request.method, "/" + request.path_params["path"], params=request.query_params, headers=headers,
            content=await request.body()), stream=True)

        async def close() -> None:
            await upstream.aclose()
            await client.aclose()

        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP}
        return StreamingResponse(upstream.aiter_raw(), status_code=upstream.status_code, headers=headers,
                                 background=BackgroundTask(close))

    def __enter__(self) -> PrefixProxy:
        self._thread.start()
        while not self._server.started:
            time.sleep(0.05)
        return self

    def __exit__(self, *exc) -> None:
        self._server.should_exit = True
        self._thread.join()
