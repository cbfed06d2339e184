"""Per-token cost of a grammar library's token mask on this CPU, with SmolLM2's
tokenizer: the numbers behind the choice of structured-output backend.

Each library compiles the same JSON schema, then walks the token ids of a
valid answer, computing the next-token mask and accepting each token.
Prints a table and writes JSON (--out)."""

from __future__ import annotations

import argparse
import json
import statistics
import time

import llguidance
import llguidance.hf
import llguidance.torch
import torch
import xgrammar as xgr
from transformers import AutoTokenizer

from nanovllm_core.loader.source import default_model_path

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["red", "green", "blue"]}},
        "address": {"type": "object", "properties": {"city": {"type": "string"}, "zip": {"type": "string"}},
                    "required": ["city", "zip"]},
    },
    "required": ["name", "age", "tags", "address"],
}
ANSWER = {"name": "Ada Lovelace", "age": 36, "tags": ["red", "blue"], "address": {"city": "London", "zip": "W1"}}


def measure_xgrammar(tokenizer, vocab_size: int, token_ids: list[int]) -> dict:
    start = time.perf_counter()
    compiler = xgr.GrammarCompiler(xgr.TokenizerInfo.from_huggingface(tokenizer, vocab_size=vocab_size))
    compiled = compiler.compile_json_schema(json.dumps(SCHEMA))
    compile_s = time.perf_counter() - start
    matcher = xgr.GrammarMatcher(compiled)
    bitmask = xgr.allocate_token_bitmask(1, vocab_size)
    costs = []
    for token in token_ids:
        t = time.perf_counter()
        matcher.fill_next_token_bitmask(bitmask)
        costs.append(time.perf_counter() - t)
        assert matcher.accept_token(token)
    return {"compile_ms": 1000 * compile_s, "mask_us": costs}


def measure_llguidance(tokenizer, vocab_size: int, token_ids: list[int]) -> dict:
    start = time.perf_counter()
    ll_tokenizer = llguidance.hf.from_tokenizer(tokenizer, n_vocab=vocab_size)
    grammar = llguidance.LLMatcher.grammar_from_json_schema(json.dumps(SCHEMA))
    matcher = llguidance.LLMatcher(ll_tokenizer, grammar)
    compile_s = time.perf_counter() - start
    bitmask = llguidance.torch.allocate_token_bitmask(1, vocab_size)
    costs = []
    for token in token_ids:
        t = time.perf_counter()
        llguidance.torch.fill_next_token_bitmask(matcher, bitmask, 0)
        costs.append(time.perf_counter() - t)
        assert matcher.consume_token(token), matcher.get_error()
    return {"compile_ms": 1000 * compile_s, "mask_us": costs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", default="grammar_mask_cost.json")
    args = parser.parse_args()
    path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    token_ids = tokenizer.encode(json.dumps(ANSWER), add_special_tokens=False)
    torch.set_num_threads(2)
    results = {}
    for name, measure in (("xgrammar", measure_xgrammar), ("llguidance", measure_llguidance)):
        runs = [measure(tokenizer, len(tokenizer), token_ids) for _ in range(3)]
        masks = [1e6 * c for run in runs for c in run["mask_us"]]
        results[name] = {"compile_ms": round(min(r["compile_ms"] for r in runs), 1),
                         "mask_us_median": round(statistics.median(masks), 1),
                         "mask_us_p99": round(sorted(masks)[int(0.99 * len(masks))], 1),
                         "tokens": len(token_ids), "version": getattr(xgr if name == "xgrammar" else llguidance,
                                                                      "__version__", "?")}
    print(f"{'library':<12}{'compile ms':>12}{'mask us p50':>14}{'mask us p99':>14}")
    for name, r in results.items():
        print(f"{name:<12}{r['compile_ms']:>12}{r['mask_us_median']:>14}{r['mask_us_p99']:>14}")
    with open(args.out, "w") as f:
        json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
