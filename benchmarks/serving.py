"""Load generator for any OpenAI-compatible server (nanovllm, llama.cpp's server, vLLM...).

Sends --num-requests requests with at most --concurrency in flight, each a
random-token prompt of about --input-len tokens asking for --output-len tokens
(streaming chat or completions), and measures output tok/s, requests/s, time to
first token and time per output token (p50/p99), errors, and, if asked, the
latency of GET /health while the load runs. Each concurrency level gets fresh
prompts, so prefix caching cannot carry over between levels. Loopback only; it
stops by itself.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import statistics
import time
from pathlib import Path

import httpx

WORDS = "time year people way day man thing woman life child world school state family student group country problem hand part place case week company system program question work government number night point home water room mother area money story fact month lot right study book eye job word business issue side kind head house service friend father power hour game line end member law car city community name president team minute idea kid body information back parent face others level office door health person art war history party result change morning reason research girl guy moment air teacher force education".split()


def prompt_text(rng: random.Random, tokens: int) -> str:
    # common English words are about one token each in most tokenizers
    return " ".join(rng.choice(WORDS) for _ in range(tokens))


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def one_request(client: httpx.AsyncClient, args, prompt: str) -> dict:
    result = await _one_attempt(client, args, prompt)
    if result.get("error") == "RemoteProtocolError":
        # a keep-alive connection the server had closed (llama-server does this): retry once, on a fresh one
        result = await _one_attempt(client, args, prompt)
    return result


async def _one_attempt(client: httpx.AsyncClient, args, prompt: str) -> dict:
    body = {"model": args.model, "max_tokens": args.output_len, "stream": True, "temperature": 0,
            "ignore_eos": True, "stream_options": {"include_usage": True}}
    if args.endpoint == "chat":
        path, body["messages"] = "/v1/chat/completions", [{"role": "user", "content": prompt}]
    else:
        path, body["prompt"] = "/v1/completions", prompt
    start = time.perf_counter()
    arrivals, tokens = [], 0
    try:
        async with client.stream("POST", path, json=body) as response:
            if response.status_code != 200:
                await response.aread()
                return {"error": f"HTTP {response.status_code}"}
            async for line in response.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    return {"error": chunk["error"].get("message", "error")}
                if chunk.get("usage"):
                    tokens = chunk["usage"]["completion_tokens"]
                choices = chunk.get("choices") or []
                if choices and (choices[0].get("text") or (choices[0].get("delta") or {}).get("content")):
                    arrivals.append(time.perf_counter())
    except httpx.HTTPError as error:
        return {"error": type(error).__name__}
    if not arrivals:
        return {"error": "no tokens"}
    end = arrivals[-1]
    tokens = tokens or len(arrivals)
    return {"ttft": arrivals[0] - start, "tpot": (end - arrivals[0]) / max(tokens - 1, 1), "tokens": tokens, "latency": end - start}


async def probe_health(client: httpx.AsyncClient, stop: asyncio.Event, samples: list[float]) -> None:
    while not stop.is_set():
        start = time.perf_counter()
        await client.get("/health")
        samples.append(time.perf_counter() - start)
        await asyncio.sleep(0.1)


async def run(args) -> dict:
    # fresh prompts for every concurrency level, so no run is served from an earlier one's prefix cache
    rng = random.Random(f"{args.seed}-{args.concurrency}")
    prompts = [prompt_text(rng, args.input_len) for _ in range(args.num_requests)]
    limits = httpx.Limits(max_connections=args.concurrency + 2)
    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    async with httpx.AsyncClient(base_url=args.base_url, timeout=args.timeout, limits=limits, headers=headers) as client:
        if args.model is None:
            args.model = (await client.get("/v1/models")).json()["data"][0]["id"]
        await one_request(client, args, prompts[0][:50])  # warm-up
        gate = asyncio.Semaphore(args.concurrency)

        async def limited(prompt):
            async with gate:
                return await one_request(client, args, prompt)

        stop, health = asyncio.Event(), []
        prober = asyncio.create_task(probe_health(client, stop, health)) if args.probe_health else None
        start = time.perf_counter()
        results = await asyncio.gather(*(limited(p) for p in prompts))
        elapsed = time.perf_counter() - start
        stop.set()
        if prober:
            await prober
    ok = [r for r in results if "error" not in r]
    summary = {
        "concurrency": args.concurrency,
        "requests": len(results),
        "errors": len(results) - len(ok),
        "error_kinds": sorted({r["error"] for r in results if "error" in r}),
        "seconds": elapsed,
        "output_tok_per_s": sum(r["tokens"] for r in ok) / elapsed,
        "requests_per_s": len(ok) / elapsed,
        "ttft_p50_s": percentile([r["ttft"] for r in ok], 0.5),
        "ttft_p99_s": percentile([r["ttft"] for r in ok], 0.99),
        "tpot_p50_s": percentile([r["tpot"] for r in ok], 0.5),
        "tpot_p99_s": percentile([r["tpot"] for r in ok], 0.99),
    }
    if health:
        summary |= {"health_p50_s": statistics.median(health), "health_max_s": max(health)}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", default="http://127.0.0.1:8000")
    parser.add_argument("--model", default=None, help="default: the server's first model")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--endpoint", choices=["chat", "completions"], default="chat")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--num-requests", type=int, default=64)
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--probe-health", action="store_true", help="also time GET /health every 0.1 s under load")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "serving.json"))
    args = parser.parse_args()
    rows = []
    for concurrency in args.concurrency:
        args.concurrency = concurrency
        rows.append(asyncio.run(run(args)))
    print(f"\n{'conc':>5}{'reqs':>6}{'err':>5}{'tok/s':>9}{'req/s':>8}{'TTFT p50':>10}{'TTFT p99':>10}{'TPOT p50':>10}{'TPOT p99':>10}")
    for r in rows:
        print(f"{r['concurrency']:>5}{r['requests']:>6}{r['errors']:>5}{r['output_tok_per_s']:>9.1f}{r['requests_per_s']:>8.2f}"
              f"{r['ttft_p50_s'] or 0:>10.3f}{r['ttft_p99_s'] or 0:>10.3f}{r['tpot_p50_s'] or 0:>10.4f}{r['tpot_p99_s'] or 0:>10.4f}"
              + (f"   /health p50 {r['health_p50_s'] * 1000:.1f} ms, max {r['health_max_s'] * 1000:.1f} ms" if "health_p50_s" in r else ""))
    Path(args.out).parent.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps(rows, indent=2))
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
