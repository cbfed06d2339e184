"""Helpers for testing plugins through a real server (used by nanovllm's own tests).

- ``ServerProcess(*args)``: ``nanovllm-api`` in a subprocess on a free loopback
  port; ``wait_healthy()`` until ``/health`` answers 200, ``stop()`` sends SIGTERM
  and returns the exit status.
- ``serve(tmp_path_factory, name, *args)``: the body of a module fixture around one.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    def __init__(self, *args: str, env: dict | None = None, log_path=None, entry: tuple[str, ...] = ("-m", "nanovllm_api")):
        """``entry``: what python runs, the server's module by default or a wrapper script."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        command = [sys.executable, *entry, "--host", "127.0.0.1", "--port", str(self.port), *args]
        self.log = open(log_path, "w") if log_path else subprocess.DEVNULL
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})})

    def wait_healthy(self, timeout: float = 300) -> "ServerProcess":
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/health", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.5)
        raise TimeoutError("server did not become healthy")

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def serve(tmp_path_factory, name: str, *args: str, **kwargs) -> Iterator[ServerProcess]:
    """The body of a module fixture: a healthy server logging to ``<tmp>/<name>/server.log``,
    which must exit 0 when the module is done with it."""
    log = tmp_path_factory.mktemp(name) / "server.log"
    process = ServerProcess(*args, log_path=log, **kwargs).wait_healthy()
    yield process
    assert process.stop() == 0
