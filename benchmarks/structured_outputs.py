"""Throughput of a batch whose requests are constrained (to a JSON schema, or
to tool calls as the chat endpoint constrains them with tool_choice required
or auto), against the same batch unconstrained, in one run (offline LLM.generate).

Every batch gets the same chat prompts and max_tokens; output tok/s counts the
tokens each batch produced (constrained answers end when their JSON does).
Prints a table and writes JSON (--out)."""

from __future__ import annotations

import argparse
import json
import time

from nanovllm_core import LLM, SamplingParams
from nanovllm_core.grammar import GuidedDecoding
from nanovllm_core.tool_calls import Tool
from nanovllm_core.tool_calls.smollm2 import SmolLM2ToolCallParser

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "population": {"type": "integer"},
        "landmarks": {"type": "array", "items": {"type": "string", "maxLength": 40}, "maxItems": 5},
        "country": {"type": "object", "properties": {"name": {"type": "string", "maxLength": 40},
                                                     "code": {"type": "string", "maxLength": 3}},
                    "required": ["name", "code"]},
    },
    "required": ["name", "population", "landmarks", "country"],
}
TOOLS = [
    Tool("get_weather", {"type": "object", "properties": {"city": {"type": "string", "maxLength": 40},
                                                          "unit": {"enum": ["celsius", "fahrenheit"]}},
                         "required": ["city", "unit"]}),
    Tool("city_facts", SCHEMA),
]
CITIES = ["Paris", "Tokyo", "Lima", "Cairo", "Oslo", "Delhi", "Quito", "Rome"]


def run(llm: LLM, prompts: list[str], params: SamplingParams) -> dict:
    start = time.perf_counter()
    outputs = llm.generate(prompts, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    tokens = sum(len(o["token_ids"]) for o in outputs)
    return {"seconds": round(seconds, 2), "output_tokens": tokens, "tok_per_s": round(tokens / seconds, 1)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default=None, help="model path; default: the embedded SmolLM2")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--out", default="structured_outputs.json")
    args = parser.parse_args()
    llm = LLM(args.model, max_num_seqs=args.batch)
    tokenizer = llm.engine.tokenizer
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": f"Describe {CITIES[i % len(CITIES)]} as JSON."}],
                                             tokenize=False, add_generation_prompt=True) for i in range(args.batch)]
    tool_format = SmolLM2ToolCallParser()
    constraints = {
        "json_schema": GuidedDecoding("json_schema", json.dumps(SCHEMA)),
        "tools_required": GuidedDecoding("structural_tag", json.dumps(tool_format.structural_tag(TOOLS, "required", True))),
        "tools_auto": GuidedDecoding("structural_tag", json.dumps(tool_format.structural_tag(TOOLS, "auto", True))),
    }
    for guided in constraints.values():  # warm-up, and each constraint's compilation
        run(llm, prompts[:2], SamplingParams(max_tokens=8, guided=guided))
    free = run(llm, prompts, SamplingParams(temperature=0, max_tokens=args.max_tokens))
    result = {"batch": args.batch, "max_tokens": args.max_tokens, "free": free}
    print(f"{'batch':<16}{'tokens':>8}{'seconds':>9}{'tok/s':>8}{'/ free':>8}")
    print(f"{'free':<16}{free['output_tokens']:>8}{free['seconds']:>9}{free['tok_per_s']:>8}")
    for name, guided in constraints.items():
        r = run(llm, prompts, SamplingParams(temperature=0, max_tokens=args.max_tokens, guided=guided))
        r["over_free_tok_per_s"] = round(r["tok_per_s"] / free["tok_per_s"], 3)
        result[name] = r
        print(f"{name:<16}{r['output_tokens']:>8}{r['seconds']:>9}{r['tok_per_s']:>8}{r['over_free_tok_per_s']:>8}")
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
