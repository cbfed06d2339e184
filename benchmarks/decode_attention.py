"""Decode attention on the CPU, alone: the torch backend (gather + grouped
matmuls) against the `cpu` backend's C++ kernel, on the same paged cache.

One layer of SmolLM2-135M's shape (9 query heads, 3 KV heads, head_dim 64,
block size 16), scattered blocks, every sequence at the same context length.
Reports ms per layer call, the K/V bytes read per second (the cache is read
once per step, so this is the number to hold against memory bandwidth), and
the kernel's speed-up. Writes benchmarks/results/decode_attention.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from nanovllm_core.attention import AttentionMetadata
from nanovllm_core.attention.cpu_backend import CpuAttentionBackend
from nanovllm_core.attention.torch_backend import TorchAttentionBackend

HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE = 9, 3, 64, 16


def decode_metadata(batch: int, context: int, num_blocks: int) -> AttentionMetadata:
    per_seq = -(-context // BLOCK_SIZE)
    tables = torch.randperm(num_blocks)[: batch * per_seq].view(batch, per_seq).to(torch.int32)
    lens = [context] * batch
    return AttentionMetadata(
        num_decode_tokens=batch,
        slot_mapping=(tables[:, -1].long() * BLOCK_SIZE + (context - 1) % BLOCK_SIZE),
        block_tables=tables, context_lens=torch.tensor(lens, dtype=torch.int32),
        query_start_loc=torch.arange(batch + 1, dtype=torch.int32), max_query_len=1, max_context_len=context,
        query_lens_host=[1] * batch, context_lens_host=lens,
    )


def time_calls(backend, tensors, metadata, repeats: int) -> float:
    query, key, value, k_cache, v_cache = tensors
    backend.forward(query, key, value, k_cache, v_cache, metadata, HEAD_DIM**-0.5)  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        backend.forward(query, key, value, k_cache, v_cache, metadata, HEAD_DIM**-0.5)
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--contexts", type=int, nargs="+", default=[256, 512])
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--output", default="benchmarks/results/decode_attention.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    dtype = getattr(torch, args.dtype)
    rows = []
    for batch in args.batches:
        for context in args.contexts:
            num_blocks = batch * -(-context // BLOCK_SIZE) * 2
            metadata = decode_metadata(batch, context, num_blocks)
            shape = (KV_HEADS, num_blocks, BLOCK_SIZE, HEAD_DIM)
            tensors = (torch.randn(batch, HEADS, HEAD_DIM, dtype=dtype), torch.randn(batch, KV_HEADS, HEAD_DIM, dtype=dtype),
                       torch.randn(batch, KV_HEADS, HEAD_DIM, dtype=dtype), torch.randn(shape, dtype=dtype),
                       torch.randn(shape, dtype=dtype))
            kv_bytes = 2 * batch * context * KV_HEADS * HEAD_DIM * dtype.itemsize
            times = {cls.name: time_calls(cls(HEADS, KV_HEADS, HEAD_DIM, BLOCK_SIZE), tensors, metadata, args.repeats)
                     for cls in (TorchAttentionBackend, CpuAttentionBackend)}
            rows.append({"batch": batch, "context": context, "torch_ms": times["torch"] * 1e3, "cpu_ms": times["cpu"] * 1e3,
                         "cpu_kv_gb_s": kv_bytes / times["cpu"] / 1e9, "speedup": times["torch"] / times["cpu"]})
    print(f"decode attention, one layer, {HEADS} heads / {KV_HEADS} KV heads / head_dim {HEAD_DIM}, {args.dtype}, "
          f"{torch.get_num_threads()} threads")
    print(f"{'batch':>5} {'context':>7} {'torch ms':>9} {'cpu ms':>8} {'cpu KV GB/s':>11} {'speed-up':>8}")
    for r in rows:
        print(f"{r['batch']:>5} {r['context']:>7} {r['torch_ms']:>9.3f} {r['cpu_ms']:>8.3f} {r['cpu_kv_gb_s']:>11.1f} "
              f"{r['speedup']:>7.2f}x")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"dtype": args.dtype, "threads": torch.get_num_threads(), "rows": rows},
                                            indent=2))


if __name__ == "__main__":
    main()
