"""nanovllm's server against llama.cpp's llama-server on the same GGUF, one after
the other in one run, with the same load (benchmarks/serving.py): streaming
chat, about --input-len prompt tokens, --output-len new tokens (ignore_eos),
at each --concurrency level. Both get --slots concurrent sequences and 2
threads. Reports output tok/s, TTFT and TPOT per level, each server's peak
resident memory (VmHWM), the ratios, and a plot (PNG) of tok/s and TTFT p50
against concurrency. Build the peer first: benchmarks/peers/llama_server.sh build
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

import serving
from nanovllm_core.loader.source import default_model_path

HERE = Path(__file__).parent
PEER_SCRIPT = HERE / "peers" / "llama_server.sh"
SLOT_CONTEXT = 512  # tokens of context per slot, as peers/llama_server.sh gives llama-server (-c slots x 512)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            sys.exit(f"server exited with {process.returncode} before it was healthy")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    sys.exit(f"{url} not healthy after {timeout} s")


def peak_rss_mib(pid: int) -> float:
    """The peak resident memory (VmHWM) of a process and of every process under it (a
    server's engine replicas), summed."""
    total = 0.0
    for process in [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]:
        for line in Path(f"/proc/{process.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                total += int(line.split()[1]) / 1024
    return total


def measure(name: str, command: list[str], port: int, args) -> dict:
    url = f"http://127.0.0.1:{port}"
    log = open(Path(args.out).with_suffix(f".{name}.log"), "w")
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_healthy(url, process)
        levels = []
        for concurrency in args.concurrency:
            load = argparse.Namespace(
                base_url=url, model=None, api_key=None, endpoint="chat", concurrency=concurrency,
                num_requests=max(args.min_requests, 2 * concurrency), input_len=args.input_len,
                output_len=args.output_len, timeout=1800, probe_health=False, seed=args.seed,
            )
            levels.append(asyncio.run(serving.run(load)))
            print(f"{name} concurrency {concurrency}: {levels[-1]['output_tok_per_s']:.1f} tok/s, "
                  f"TTFT p50 {levels[-1]['ttft_p50_s']:.2f} s", flush=True)
        return {"server": name, "peak_rss_mib": round(peak_rss_mib(process.pid)), "levels": levels}
    finally:
        process.terminate()
        process.wait(60)
        log.close()


def plot(results: list[dict], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is not installed: no plot")
        return

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (throughput, ttft) = plt.subplots(1, 2, figsize=(10, 4))
    for result in results:
        levels = result["levels"]
        x = [level["concurrency"] for level in levels]
        throughput.plot(x, [level["output_tok_per_s"] for level in levels], marker="o", label=result["server"])
        ttft.plot(x, [level["ttft_p50_s"] for level in levels], marker="o", label=result["server"])
    for axis, title in ((throughput, "output tok/s"), (ttft, "TTFT p50 (s)")):
        axis.set_xscale("log", base=2)
        axis.set_xlabel("concurrent requests")
        axis.set_title(title)
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.suptitle("SmolLM2-135M Q4_1 GGUF, 2 CPU cores, streaming chat")
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gguf", default=str(default_model_path()))
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--min-requests", type=int, default=8, help="requests per level: this or 2x concurrency")
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--slots", type=int, default=32, help="--parallel for llama-server, --max-num-seqs for nanovllm")
    parser.add_argument("--nanovllm-args", default="", help="extra nanovllm-api flags, e.g. '--dtype float32'")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "results" / "serving_vs_llama_server.json"))
    args = parser.parse_args()
    Path(args.out).parent.mkdir(exist_ok=True)
    llama_server = subprocess.run(["bash", str(PEER_SCRIPT), "build"], check=True, capture_output=True, text=True).stdout.strip()

    port = free_port()
    # the same KV capacity as the peer's: SLOT_CONTEXT tokens for each of --slots sequences
    nanovllm = [sys.executable, "-m", "nanovllm_api", "--model", args.gguf, "--port", str(port),
                "--max-num-seqs", str(args.slots), "--max-model-len", str(SLOT_CONTEXT), "--log-level", "warning",
                *args.nanovllm_args.split()]
    results = [measure("nanovllm", nanovllm, port, args)]
    port = free_port()
    results.append(measure("llama-server", ["bash", str(PEER_SCRIPT), "serve", args.gguf, str(port), str(args.slots)],
                           port, args))
    ours, peer = results
    print(f"\n{'conc':>5} {'server':<13}{'tok/s':>8}{'TTFT p50':>10}{'TPOT p50':>10}{'errors':>8}")
    for ours_level, peer_level in zip(ours["levels"], peer["levels"]):
        for name, level in (("nanovllm", ours_level), ("llama-server", peer_level)):
            print(f"{level['concurrency']:>5} {name:<13}{level['output_tok_per_s']:>8.1f}{level['ttft_p50_s']:>10.2f}"
                  f"{level['tpot_p50_s'] * 1000:>9.1f}ms{level['errors']:>8}")
        print(f"{'':>5} {'ratio':<13}{ours_level['output_tok_per_s'] / peer_level['output_tok_per_s']:>7.2f}x"
              f"{ours_level['ttft_p50_s'] / peer_level['ttft_p50_s']:>9.2f}x")
    print(f"peak RSS: nanovllm {ours['peak_rss_mib']} MiB, llama-server {peer['peak_rss_mib']} MiB")
    summary = {"workload": vars(args), "llama_server": llama_server, "results": results}
    Path(args.out).write_text(json.dumps(summary, indent=2))
    plot(results, Path(args.out).with_suffix(".png"))
    print(f"wrote {args.out} and {Path(args.out).with_suffix('.png')}")


if __name__ == "__main__":
    main()
