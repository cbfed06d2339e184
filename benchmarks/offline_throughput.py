"""Offline throughput: nano-vllm's bench.py workload scaled to 2 cores, nanovllm
against HF transformers' batched ``generate`` on the same machine in the same run.

Workload: N sequences of random token ids (input 64-512), each asking for a
random number of output tokens (64-256) with ignore_eos; fixed seed. Throughput
is output tokens / wall time of one ``generate`` call (prefill included),
after one warm-up. HF generates one padded batch up to the longest output, and
every token it generates is counted in its favour.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time
from pathlib import Path

import torch

from nanovllm_core import LLM, SamplingParams
from nanovllm_core.loader.source import default_model_path

RESULTS = Path(__file__).parent / "results"


def workload(args) -> tuple[list[list[int]], list[int]]:
    rng = random.Random(args.seed)
    prompts = [[rng.randrange(100, 40000) for _ in range(rng.randint(args.min_input, args.max_input))] for _ in range(args.num_seqs)]
    outputs = [rng.randint(args.min_output, args.max_output) for _ in range(args.num_seqs)]
    return prompts, outputs


def bench_nanovllm(model: str, dtype: str, prompts, output_lens, tensor_parallel_size: int = 1,
                   attention_backend: str = "auto") -> dict:
    llm = LLM(model, dtype=dtype, tensor_parallel_size=tensor_parallel_size, attention_backend=attention_backend)
    backend = llm.engine.runner.backend.name
    llm.generate([prompts[0][:32]], SamplingParams(max_tokens=8), use_tqdm=False)  # warm-up
    params = [SamplingParams(temperature=0.6, max_tokens=n, ignore_eos=True) for n in output_lens]
    start = time.perf_counter()
    results = llm.generate(prompts, params, use_tqdm=False)
    elapsed = time.perf_counter() - start
    tokens = sum(len(r["token_ids"]) for r in results)
    assert tokens == sum(output_lens)
    llm.shutdown()
    engine = f"nanovllm {backend}" + ("" if tensor_parallel_size == 1 else f" TP={tensor_parallel_size}")
    return {"engine": engine, "dtype": dtype, "output_tokens": tokens, "seconds": elapsed, "tok_per_s": tokens / elapsed}


def bench_transformers(model_path: Path, dtype: str, prompts, output_lens) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path.parent, gguf_file=model_path.name, dtype=torch.float32)
    model = model.to(getattr(torch, dtype)).eval()
    width = max(len(p) for p in prompts)
    input_ids = torch.tensor([[0] * (width - len(p)) + p for p in prompts])  # left padding
    attention_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    new_tokens = max(output_lens)
    generate = dict(do_sample=True, temperature=0.6, eos_token_id=None, pad_token_id=0)
    model.generate(input_ids[:1, -32:], max_new_tokens=8, **generate)  # warm-up
    start = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(input_ids, attention_mask=attention_mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **generate)
    elapsed = time.perf_counter() - start
    tokens = (out.shape[1] - width) * len(prompts)
    return {"engine": "transformers", "dtype": dtype, "output_tokens": tokens, "seconds": elapsed, "tok_per_s": tokens / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="model path (default: the embedded SmolLM2 GGUF)")
    parser.add_argument("--num-seqs", type=int, default=64)
    parser.add_argument("--min-input", type=int, default=64)
    parser.add_argument("--max-input", type=int, default=512)
    parser.add_argument("--min-output", type=int, default=64)
    parser.add_argument("--max-output", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtypes", nargs="+", default=["auto"], help="nanovllm dtypes to run (auto: the engine's default)")
    parser.add_argument("--tensor-parallel-sizes", type=int, nargs="+", default=[1], help="nanovllm TP sizes to run")
    parser.add_argument("--attention-backends", nargs="+", default=["auto"], help="nanovllm attention backends to run")
    parser.add_argument("--hf-dtypes", nargs="*", default=["float32", "bfloat16"], help="transformers dtypes to run (best is the peer)")
    args = parser.parse_args()
    model_path = Path(args.model) if args.model else default_model_path()
    prompts, output_lens = workload(args)

    rows = [
        bench_nanovllm(str(model_path), dtype, prompts, output_lens, tp, backend)
        for dtype in args.dtypes
        for tp in args.tensor_parallel_sizes
        for backend in args.attention_backends
    ]
    rows += [bench_transformers(model_path, dtype, prompts, output_lens) for dtype in args.hf_dtypes]
    peer = max((r for r in rows if r["engine"] == "transformers"), key=lambda r: r["tok_per_s"], default=None)
    print(f"\n{'engine':<22}{'dtype':<10}{'out tokens':>11}{'seconds':>10}{'tok/s':>10}{'vs HF best':>12}")
    for r in rows:
        ratio = r["tok_per_s"] / peer["tok_per_s"] if peer else float("nan")
        r["ratio_vs_hf_best"] = ratio
        print(f"{r['engine']:<22}{r['dtype']:<10}{r['output_tokens']:>11}{r['seconds']:>10.1f}{r['tok_per_s']:>10.1f}{ratio:>11.2f}x")
    RESULTS.mkdir(exist_ok=True)
    report = {"workload": vars(args), "machine": {"cpu_threads": torch.get_num_threads(), "platform": platform.platform()}, "results": rows}
    out_file = RESULTS / "offline_throughput.json"
    out_file.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {out_file}")


if __name__ == "__main__":
    main()
