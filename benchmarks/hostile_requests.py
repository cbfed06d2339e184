"""One request against everyone else: the outside audit's requests, each sent once to a
fresh server while another client asks /health in a loop, then a normal request
(docs/reliability.md). Also: /health while a 1 MB schema is checked, and how often a
normal client's structured request succeeds while another client keeps sending
schemas that do not compile in time.

    python benchmarks/hostile_requests.py [--rounds 6]

Starts its own server (SmolLM2, --grammar-compile-timeout 2) on a free loopback port
and prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from server_process import ServerProcess  # noqa: E402

COMPILE_TIMEOUT_S = 2
# compiles for seconds with SmolLM2's vocabulary (benchmarks/health_during_compile.py)
SLOW_SCHEMA = {"type": "string", "pattern": "(([a-z]{1,50} ){1,50}){1,2}"}


def nested_schema(depth: int) -> dict:
    schema: dict = {"type": "string"}
    for _ in range(depth):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


def schema_format(schema: dict, name: str = "s") -> dict:
    return {"type": "json_schema", "json_schema": {"name": name, "schema": schema}}


def chat(**fields) -> dict:
    return {"messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 8, **fields}


HOSTILE = {
    "top_k 2^63": ("/v1/completions", {"prompt": "Hello", "max_tokens": 4, "top_k": 2**63}),
    "logit_bias key '\u00b2'": ("/v1/completions", {"prompt": "Hello", "max_tokens": 4, "logit_bias": {"\u00b2": 1}}),
    "json_schema nested 300 deep": ("/v1/chat/completions", chat(response_format=schema_format(nested_schema(300)))),
    "0.6 MB anyOf schema": ("/v1/chat/completions",
                           chat(response_format=schema_format({"anyOf": [{}] * 150_000}))),
    "temperature 1e-40": ("/v1/chat/completions", chat(temperature=1e-40, max_tokens=12)),
}


class HealthProbe:
    """/health in a loop on its own thread; the worst wait and whether any failed."""

    def __init__(self, url: str):
        self.url, self.latencies, self.failures = url, [], 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        while not self._stop.is_set():
            start = time.perf_counter()
            try:
                httpx.get(f"{self.url}/health", timeout=60).raise_for_status()
            except httpx.HTTPError:
                self.failures += 1
            self.latencies.append(time.perf_counter() - start)
            time.sleep(0.05)

    def __enter__(self) -> HealthProbe:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        return {"health_max_ms": round(1000 * max(self.latencies, default=0), 1), "health_failures": self.failures}


def normal_request(url: str) -> str:
    try:
        response = httpx.post(f"{url}/v1/chat/completions", json=chat(temperature=0), timeout=120)
    except httpx.HTTPError as error:
        return f"failed: {type(error).__name__}"
    return f"{response.status_code}"


def one_hostile(name: str, path: str, body: dict) -> dict:
    server = ServerProcess("--grammar-compile-timeout", str(COMPILE_TIMEOUT_S), "--log-level", "warning").wait_healthy()
    try:
        with HealthProbe(server.url) as probe:
            start = time.perf_counter()
            try:
                response = httpx.post(f"{server.url}{path}", json=body, timeout=120)
                answer = {"status": response.status_code, "body": response.text[:160]}
            except httpx.HTTPError as error:
                answer = {"status": f"no answer: {type(error).__name__}"}
            answer["seconds"] = round(time.perf_counter() - start, 2)
            time.sleep(1)  # a dying engine takes a moment to say so
        answer.update(probe.summary(), normal_request_after=normal_request(server.url),
                      server_alive=server.process.poll() is None)
        return answer
    finally:
        server.stop()


def slow_schemas_against_a_normal_client(rounds: int) -> dict:
    """An attacker keeps two schemas that never compile in time in flight; a normal client
    sends a new small schema each round. Counts the normal client's successes."""
    server = ServerProcess("--grammar-compile-timeout", str(COMPILE_TIMEOUT_S), "--log-level", "warning").wait_healthy()
    stop = threading.Event()

    def attacker(offset: int) -> None:
        count = 0
        while not stop.is_set():
            count += 1  # a new pattern each time, so no cache serves it
            schema = {"type": "string", "pattern": f"(([a-z]{{1,{50 + offset + 2 * count}}} ){{1,50}}){{1,2}}"}
            try:
                httpx.post(f"{server.url}/v1/chat/completions", json=chat(response_format=schema_format(schema)),
                           timeout=120)
            except httpx.HTTPError:
                pass

    attackers = [threading.Thread(target=attacker, args=(i,)) for i in range(2)]
    try:
        for thread in attackers:
            thread.start()
        time.sleep(COMPILE_TIMEOUT_S)
        outcomes = []
        for index in range(rounds):
            schema = {"type": "object", "properties": {f"field{index}": {"type": "integer"}}, "required": [f"field{index}"]}
            response = httpx.post(f"{server.url}/v1/chat/completions",
                                  json=chat(response_format=schema_format(schema), max_tokens=16), timeout=120)
            outcomes.append(response.status_code if response.status_code != 400 else response.json()["error"]["code"])
            time.sleep(COMPILE_TIMEOUT_S)
        return {"normal_client_successes": sum(o == 200 for o in outcomes), "rounds": rounds, "outcomes": outcomes}
    finally:
        stop.set()
        for thread in attackers:
            thread.join()
        server.stop()


def health_while_a_1mb_schema_is_checked() -> dict:
    server = ServerProcess("--grammar-compile-timeout", str(COMPILE_TIMEOUT_S), "--log-level", "warning").wait_healthy()
    try:
        schema = {"anyOf": [{"type": "object", "properties": {"k": {"type": "integer"}}}] * 18_000}
        body = chat(response_format=schema_format(schema))
        with HealthProbe(server.url) as probe:
            start = time.perf_counter()
            response = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=300)
            seconds = time.perf_counter() - start
        return {"schema_bytes": len(json.dumps(schema)), "status": response.status_code, "seconds": round(seconds, 2),
                **probe.summary()}
    finally:
        server.stop()


def cpu_model() -> str:
    lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    return next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")),
                platform.processor())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, help="normal structured requests during the slow-schema attack")
    parser.add_argument("--only", choices=["hostile", "1mb", "slow"], help="run one part")
    args = parser.parse_args()
    result: dict = {"cpu": cpu_model()}
    if args.only in (None, "hostile"):
        result["hostile"] = {name: one_hostile(name, path, body) for name, (path, body) in HOSTILE.items()}
    if args.only in (None, "1mb"):
        result["1mb_schema"] = health_while_a_1mb_schema_is_checked()
    if args.only in (None, "slow"):
        result["slow_schemas"] = slow_schemas_against_a_normal_client(args.rounds)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
