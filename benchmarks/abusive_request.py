"""Engine step time with one abusive request in a batch of 16, against the same batch
of ordinary requests: what one request's stop strings, logit_bias, stop_token_ids and
penalties cost everyone else (docs/reliability.md).

    python benchmarks/abusive_request.py [--tokens 300]

The abusive requests go to the engine directly, past the API's caps, to show the
cost of the work itself; the API refuses most of them outright.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

from nanovllm_core import LLM, SamplingParams

BATCH = 16


def abusive_variants(vocab_size: int) -> dict[str, tuple[SamplingParams, int]]:
    """name -> (the abusive request's params, how many sequences it brings)."""
    return {
        "none": (SamplingParams(), 1),
        "64 stop strings of 60 KB": (SamplingParams(stop=[f"{i:02d}" + "z" * 60_000 for i in range(64)]), 1),
        "full-vocabulary logit_bias, n=16": (
            SamplingParams(logit_bias={t: 0.01 for t in range(vocab_size)}), BATCH),
        "500k stop_token_ids": (SamplingParams(stop_token_ids=list(range(vocab_size, vocab_size + 500_000))), 1),
        "penalties on one row": (SamplingParams(repetition_penalty=1.1, frequency_penalty=0.5), 1),
    }


def mean_step_ms(llm: LLM, params: SamplingParams, copies: int, tokens: int) -> float:
    prompts = [f"Write a long story about the number {i}." for i in range(BATCH)]
    ordinary = SamplingParams(temperature=0, max_tokens=tokens, ignore_eos=True)
    abusive = [SamplingParams(**{**vars(params), "temperature": 0, "max_tokens": tokens, "ignore_eos": True})] * copies
    engine = llm.engine
    for i, (prompt, p) in enumerate(zip(prompts, abusive + [ordinary] * (BATCH - copies))):
        engine.add_request(f"r{i}", prompt, p)
    times = []
    while engine.has_unfinished_requests():
        start = time.perf_counter()
        engine.step()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.mean(times[-64:])  # the last steps: the most text, the longest histories


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=300, help="tokens each request generates")
    args = parser.parse_args()
    llm = LLM()
    results = {}
    for name, (params, copies) in abusive_variants(llm.engine.vocab_size).items():
        results[name] = round(mean_step_ms(llm, params, copies, args.tokens), 1)
        print(f"{name:<36} {results[name]:>8.1f} ms/step", flush=True)
    print(json.dumps({"machine": platform.processor() or platform.machine(), "tokens": args.tokens,
                      "batch": BATCH, "mean_step_ms_last_64": results}))


if __name__ == "__main__":
    main()
