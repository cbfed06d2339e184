"""Single-stream decoding on the CPU: one 256-token prompt, 128 new tokens,
greedy, for each `--quantization`, against HF transformers' `generate` at
batch 1 (its best of float32 and bfloat16) in the same run.

Reports decode tok/s (new tokens after the first over the time they took) and
end-to-end tok/s (all new tokens over the whole call, prefill included).
Writes benchmarks/results/single_stream.json.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import torch

from nanovllm_core import LLM, SamplingParams
from nanovllm_core.loader.source import default_model_path

RESULTS = Path(__file__).parent / "results"


def timed_stream(step_tokens) -> dict:
    """``step_tokens()`` yields once per new token; returns the timings."""
    start = time.perf_counter()
    first = None
    count = 0
    for _ in step_tokens():
        count += 1
        if first is None:
            first = time.perf_counter()
    end = time.perf_counter()
    return {"tokens": count, "ttft_s": first - start, "decode_tok_per_s": (count - 1) / (end - first),
            "end_to_end_tok_per_s": count / (end - start)}


def bench_nanovllm(model: str, prompt: list[int], new_tokens: int, quantization: str) -> dict:
    llm = LLM(model, dtype="bfloat16", quantization=quantization)
    params = SamplingParams(temperature=0, max_tokens=new_tokens, ignore_eos=True)
    llm.generate([prompt[:32]], SamplingParams(max_tokens=8), use_tqdm=False)  # warm-up
    engine = llm.engine

    def tokens():
        engine.add_request("bench", prompt, params)
        while engine.has_unfinished_requests():
            yield from engine.step()

    result = timed_stream(tokens)
    llm.shutdown()
    return {"engine": f"nanovllm bf16, quantization {quantization}", **result}


def bench_transformers(model_path: Path, dtype: str, prompt: list[int], new_tokens: int) -> dict:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_path.parent, gguf_file=model_path.name, dtype=torch.float32)
    model = model.to(getattr(torch, dtype)).eval()
    input_ids = torch.tensor([prompt])
    generate = dict(do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.inference_mode():
        model.generate(input_ids[:, :32], max_new_tokens=8, **generate)  # warm-up
        start = time.perf_counter()
        model.generate(input_ids, max_new_tokens=1, **generate)
        ttft = time.perf_counter() - start
        start = time.perf_counter()
        model.generate(input_ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, **generate)
        total = time.perf_counter() - start
    return {"engine": f"transformers {dtype}", "tokens": new_tokens, "ttft_s": ttft,
            "decode_tok_per_s": (new_tokens - 1) / (total - ttft), "end_to_end_tok_per_s": new_tokens / total}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompt-len", type=int, default=256)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--quantizations", nargs="+", default=["none", "int8", "int4"])
    parser.add_argument("--hf-dtypes", nargs="*", default=["float32", "bfloat16"])
    args = parser.parse_args()
    model_path = default_model_path()
    rng = random.Random(0)
    prompt = [rng.randrange(100, 40000) for _ in range(args.prompt_len)]
    rows = [bench_nanovllm(str(model_path), prompt, args.new_tokens, q) for q in args.quantizations]
    rows += [bench_transformers(model_path, dtype, prompt, args.new_tokens) for dtype in args.hf_dtypes]
    peer = max((r for r in rows if r["engine"].startswith("transformers")), key=lambda r: r["decode_tok_per_s"],
               default=None)
    print(f"\n{'engine':<36}{'TTFT s':>8}{'decode tok/s':>14}{'e2e tok/s':>11}{'decode vs HF best':>19}")
    for r in rows:
        r["decode_ratio_vs_hf_best"] = r["decode_tok_per_s"] / peer["decode_tok_per_s"] if peer else float("nan")
        print(f"{r['engine']:<36}{r['ttft_s']:>8.2f}{r['decode_tok_per_s']:>14.1f}{r['end_to_end_tok_per_s']:>11.1f}"
              f"{r['decode_ratio_vs_hf_best']:>18.2f}x")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "single_stream.json").write_text(json.dumps({"args": vars(args), "results": rows}, indent=2))


if __name__ == "__main__":
    main()
