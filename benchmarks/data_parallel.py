"""One engine against data-parallel replicas on the same cores, one after the other in
one run, with benchmarks/serving.py's load (streaming chat, about --input-len prompt
tokens, --output-len new tokens, ignore_eos) at each --concurrency level:
`nanovllm-api` with one engine using every usable core, then with --replicas engines of
cores/replicas threads each (--data-parallel-size). Reports output tok/s, TTFT and TPOT
per level and the peak resident memory of the server's whole process tree.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from serving_vs_llama_server import HERE, SLOT_CONTEXT, free_port, measure

from nanovllm_core.loader.source import default_model_path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(default_model_path()))
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--min-requests", type=int, default=8, help="requests per level: this or 2x concurrency")
    parser.add_argument("--input-len", type=int, default=256)
    parser.add_argument("--output-len", type=int, default=128)
    parser.add_argument("--slots", type=int, default=32, help="--max-num-seqs of each engine")
    parser.add_argument("--nanovllm-args", default="", help="extra nanovllm-api flags")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(HERE / "results" / "data_parallel.json"))
    args = parser.parse_args()
    Path(args.out).parent.mkdir(exist_ok=True)
    cores = len(os.sched_getaffinity(0))
    setups = {f"1 engine x {cores} threads": [],
              f"{args.replicas} replicas x {cores // args.replicas} threads": ["--data-parallel-size", str(args.replicas)]}
    results = []
    for name, flags in setups.items():
        port = free_port()
        command = [sys.executable, "-m", "nanovllm_api", "--model", args.model, "--port", str(port),
                   "--max-num-seqs", str(args.slots), "--max-model-len", str(SLOT_CONTEXT), "--log-level", "warning",
                   *flags, *args.nanovllm_args.split()]
        results.append(measure(name.replace(" ", "_"), command, port, args))
    print(f"\n{'conc':>5} {'setup':<26}{'tok/s':>8}{'TTFT p50':>10}{'TPOT p50':>10}{'errors':>8}")
    for levels in zip(*(result["levels"] for result in results)):
        for name, level in zip(setups, levels):
            print(f"{level['concurrency']:>5} {name:<26}{level['output_tok_per_s']:>8.1f}{level['ttft_p50_s']:>10.2f}"
                  f"{level['tpot_p50_s'] * 1000:>9.1f}ms{level['errors']:>8}")
    for name, result in zip(setups, results):
        print(f"peak RSS, {name}: {result['peak_rss_mib']} MiB")
    Path(args.out).write_text(json.dumps({"workload": vars(args), "results": results}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
