"""GPU throughput: nano-vllm's benchmark on a CUDA GPU, with HF transformers and
the hardware ceilings measured in the same run.

Workload (nano-vllm's bench.py): Qwen3-0.6B's architecture with random weights
(speed does not depend on the values), N sequences of random token ids with
random input lengths (100-1024) and output lengths (100-1024), ignore_eos,
temperature 0.6, all submitted at once after a warm-up; throughput is output
tokens over the wall time of one ``generate`` (prefill included). Also: single
stream decode tok/s with and without CUDA graphs. Writes a table and JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch

from nanovllm_core import LLM, SamplingParams
from nanovllm_core import plugins

HERE = Path(__file__).parent


def workload(args):
    rng = random.Random(args.seed)
    prompts = [[rng.randrange(100, 10000) for _ in range(rng.randint(args.min_input, args.max_input))] for _ in range(args.num_seqs)]
    return prompts, [rng.randint(args.min_output, args.max_output) for _ in range(args.num_seqs)]


def timed(fn) -> float:
    torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return time.perf_counter() - start


def engine(model_dir: str, backend: str, **settings) -> LLM:
    block_size = 256 if backend == "flash-attn" else 16
    return LLM(model_dir, load_format="dummy", skip_tokenizer_init=True, dtype="bfloat16",
               attention_backend=backend, block_size=block_size, max_model_len=4096, **settings)


def bench_throughput(model_dir, backend, prompts, output_lens) -> dict:
    llm = engine(model_dir, backend)
    llm.generate([prompts[0][:16]], SamplingParams(max_tokens=8), use_tqdm=False)
    params = [SamplingParams(temperature=0.6, max_tokens=n, ignore_eos=True) for n in output_lens]
    seconds = timed(lambda: llm.generate(prompts, params, use_tqdm=False))
    return {"engine": f"nanovllm/{backend}", "tok_per_s": sum(output_lens) / seconds, "seconds": seconds}


def bench_single_stream(model_dir, backend, enforce_eager: bool, tokens: int = 512) -> dict:
    llm = engine(model_dir, backend, enforce_eager=enforce_eager, max_num_seqs=8)
    params = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    llm.generate([[1] * 32], SamplingParams(max_tokens=8), use_tqdm=False)
    seconds = timed(lambda: llm.generate([[1] * 32], params, use_tqdm=False))
    graphs = "eager" if enforce_eager else "CUDA graphs"
    return {"engine": f"nanovllm/{backend} single stream ({graphs})", "tok_per_s": tokens / seconds, "seconds": seconds}


def bench_transformers(config_path, prompts, output_lens, batch_size: int) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_path)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).cuda().eval()
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    generated = 0

    def run():
        nonlocal generated
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            width = max(len(prompts[i]) for i in chunk)
            ids = torch.tensor([[0] * (width - len(prompts[i])) + prompts[i] for i in chunk], device="cuda")
            mask = torch.tensor([[0] * (width - len(prompts[i])) + [1] * len(prompts[i]) for i in chunk], device="cuda")
            new = max(output_lens[i] for i in chunk)
            out = model.generate(ids, attention_mask=mask, max_new_tokens=new, min_new_tokens=new, do_sample=True,
                                 temperature=0.6, pad_token_id=0)
            generated += (out.shape[1] - width) * len(chunk)  # every generated token counts in its favour

    with torch.inference_mode():
        seconds = timed(run)
    return {"engine": f"transformers (batches of {batch_size})", "tok_per_s": generated / seconds, "seconds": seconds}


def ceilings(config_path) -> dict:
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(config_path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    params = sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    weight_bytes = 2 * params  # bf16
    size = 1 << 30
    source, target = torch.empty(size, dtype=torch.uint8, device="cuda"), torch.empty(size, dtype=torch.uint8, device="cuda")
    target.copy_(source)
    bandwidth = 2 * size / min(timed(lambda: target.copy_(source)) for _ in range(5))
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    a @ a
    matmul_rate = 2 * 8192**3 / min(timed(lambda: a @ a) for _ in range(5))
    flops_per_token = 2 * params  # a multiply-add per weight; the tied embedding is used once, as the LM head
    return {
        "memory_bandwidth_GBps": bandwidth / 1e9,
        "bf16_matmul_TFLOPs": matmul_rate / 1e12,
        "weight_GB": weight_bytes / 1e9,
        "decode_ceiling_batch1_tok_per_s": bandwidth / weight_bytes,
        "compute_ceiling_tok_per_s": matmul_rate / flops_per_token,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(HERE / "configs" / "qwen3-0.6b.json"))
    parser.add_argument("--num-seqs", type=int, default=256)
    parser.add_argument("--min-input", type=int, default=100)
    parser.add_argument("--max-input", type=int, default=1024)
    parser.add_argument("--min-output", type=int, default=100)
    parser.add_argument("--max-output", type=int, default=1024)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--backends", nargs="+", default=None, help="default: every installed backend that runs here")
    parser.add_argument("--hf-batch-size", type=int, default=64)
    parser.add_argument("--skip-hf", action="store_true")
    parser.add_argument("--output", default=str(HERE / "results" / "gpu_throughput.json"), help="the JSON results")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        raise SystemExit("needs a CUDA GPU")
    model_dir = tempfile.mkdtemp()
    shutil.copy(args.config, Path(model_dir) / "config.json")
    backends = args.backends or [b for b in ("torch", "triton", "flash-attn") if _usable(b)]
    prompts, output_lens = workload(args)

    runs = [lambda b=b: bench_throughput(model_dir, b, prompts, output_lens) for b in backends]
    if not args.skip_hf:
        runs.append(lambda: bench_transformers(args.config, prompts, output_lens, args.hf_batch_size))
    for backend in [b for b in backends if b != "torch"]:
        runs += [lambda b=backend, eager=eager: bench_single_stream(model_dir, b, eager) for eager in (False, True)]
    rows = []
    for bench in runs:
        rows.append(bench())
        gc.collect()  # each engine takes most of the GPU; free it before the next one starts
        torch.cuda.empty_cache()
    limits = ceilings(args.config)
    gpu = torch.cuda.get_device_name()
    print(f"\n{gpu}, {args.num_seqs} sequences, {sum(output_lens)} output tokens\n")
    print(f"{'engine':<52}{'tok/s':>10}{'seconds':>10}")
    for row in rows:
        print(f"{row['engine']:<52}{row['tok_per_s']:>10.0f}{row['seconds']:>10.1f}")
    print("\nceilings:", json.dumps(limits, indent=2))
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps({"gpu": gpu, "workload": vars(args), "results": rows, "ceilings": limits}, indent=2))


def _usable(name: str) -> bool:
    try:
        plugins.attention_backends().get(name).check_available(torch.device("cuda"))
        return True
    except RuntimeError:
        return False


if __name__ == "__main__":
    main()
