"""Two revisions of nanovllm's server under the same load, alternating in one run, for
changes that must not move speed (a refactor): each round starts revision A's server,
loads it with benchmarks/serving.py, stops it, then does the same for B. Each revision
runs from its own git worktree with this checkout's virtual environment, so both see
the same packages, weights and compiled kernels. Reports each round's output tok/s and
TPOT p50 per concurrency, and B/A over the rounds.

    .venv/bin/python benchmarks/ab_serving.py --base fe89424 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import serving
from serving_vs_llama_server import free_port, wait_healthy

REPO = Path(__file__).resolve().parent.parent


def worktree(revision: str, directory: Path) -> Path:
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(directory), revision], check=True,
                   capture_output=True)
    return directory


def serve(tree: Path, port: int, server_args: list[str]) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": ":".join(str(tree / part) for part in (".", "plugins/qwen3", "plugins/sampling"))}
    return subprocess.Popen([sys.executable, "-m", "nanovllm_api", "--port", str(port), *server_args], cwd=tree, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def load(port: int, args, concurrency: int) -> dict:
    load_args = argparse.Namespace(base_url=f"http://127.0.0.1:{port}", model=None, api_key=None, endpoint="chat",
                                   concurrency=concurrency, num_requests=args.num_requests, input_len=args.input_len,
                                   output_len=args.output_len, timeout=600, probe_health=False, seed=args.seed)
    return asyncio.run(serving.run(load_args))


def one_round(tree: Path, args) -> dict[int, dict]:
    port = free_port()
    process = serve(tree, port, args.server_args.split())
    try:
        wait_healthy(f"http://127.0.0.1:{port}", process, timeout=600)
        load(port, args, args.concurrency[0])  # warm-up: decode graphs, caches
        return {c: load(port, args, c) for c in args.concurrency}
    finally:
        process.terminate()
        process.wait(timeout=60)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base", required=True, help="revision A (B is this working tree)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--num-requests", type=int, default=16)
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-args", default="--max-num-seqs 16 --max-model-len 512")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ab_serving.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        trees = {"A": worktree(args.base, Path(scratch) / "a"), "B": REPO}
        try:
            rounds = [{name: one_round(tree, args) for name, tree in trees.items()} for _ in range(args.rounds)]
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(trees["A"])], check=False)
    print(f"{'round':>5}{'conc':>6}{'A tok/s':>10}{'B tok/s':>10}{'A TPOT':>9}{'B TPOT':>9}")
    for index, result in enumerate(rounds):
        for c in args.concurrency:
            a, b = result["A"][c], result["B"][c]
            print(f"{index:>5}{c:>6}{a['output_tok_per_s']:>10.1f}{b['output_tok_per_s']:>10.1f}"
                  f"{a['tpot_p50_s'] * 1000:>8.1f}m{b['tpot_p50_s'] * 1000:>8.1f}m")
    for c in args.concurrency:
        ratios = [r["B"][c]["output_tok_per_s"] / r["A"][c]["output_tok_per_s"] for r in rounds]
        print(f"concurrency {c}: B/A tok/s {statistics.mean(ratios):.3f} (rounds {', '.join(f'{x:.3f}' for x in ratios)})")
    Path(args.out).parent.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps({"base": args.base, "rounds": rounds}, indent=2, default=str))


if __name__ == "__main__":
    main()
