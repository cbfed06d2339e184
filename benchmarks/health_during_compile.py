"""How long /health waits while a slow constraint compiles: one request with a
60-byte JSON schema whose grammar takes seconds to compile for SmolLM2's
vocabulary, while another client asks /health in a loop (docs/reliability.md).

    python benchmarks/health_during_compile.py [--compile-timeout 60]

With the default 10 s timeout the schema compiles in time here (~4.4 s on a 2-core EPYC).

Starts its own server on a free loopback port.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from server_process import ServerProcess  # noqa: E402

SLOW_SCHEMA = {"type": "string", "pattern": "(([a-z]{1,50} ){1,50}){1,2}"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compile-timeout", type=float, help="the server's --grammar-compile-timeout (default: its own)")
    args = parser.parse_args()
    flags = ["--grammar-compile-timeout", str(args.compile_timeout)] if args.compile_timeout else []
    server = ServerProcess(*flags, "--log-level", "warning").wait_healthy()
    try:
        body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "response_format": {
            "type": "json_schema", "json_schema": {"name": "slow", "schema": SLOW_SCHEMA}}}
        outcome = {}

        def constrained() -> None:
            start = time.perf_counter()
            response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=600)
            outcome.update(status=response.status_code, seconds=round(time.perf_counter() - start, 2))

        worker = threading.Thread(target=constrained)
        worker.start()
        latencies = []
        while worker.is_alive():
            start = time.perf_counter()
            httpx.get(f"{server.url}/health", timeout=600)
            latencies.append(time.perf_counter() - start)
        worker.join()
        latencies.sort()
        print(json.dumps({"machine": platform.processor() or platform.machine(), "constrained_request": outcome,
                          "health_answers": len(latencies), "health_p50_ms": round(1000 * latencies[len(latencies) // 2], 1),
                          "health_max_ms": round(1000 * latencies[-1], 1)}))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
