"""Decode graphs on the CPU: one decode step's model forward pass run eagerly
(the model's Python modules) against its recorded graph (engine/decode_graphs.py),
on the same step's inputs, for batches of 1 to 8 sequences of SmolLM2 (the
default model and quantization) at about --context tokens each.

The two are timed in alternation, --rounds rounds of --repeats calls each, so
that a busy neighbour slows both alike; reports each one's median and best
round in ms per forward pass. Writes benchmarks/results/cpu_decode_graphs.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from nanovllm_core import LLM, SamplingParams
from nanovllm_core.attention import forward_context


def decode_step_inputs(llm: LLM, batch: int, context: int):
    """The inputs of a decode step of ``batch`` sequences, taken from a real run."""
    runner = llm.engine.runner
    captured = []
    forward = runner._forward

    def keep(inputs, num_seqs):
        if inputs.metadata.num_decode_tokens == num_seqs == batch and not captured:
            captured.append(inputs)
        return forward(inputs, num_seqs)

    runner._forward = keep
    prompts = [[1000 + 7 * i + j for j in range(context)] for i in range(batch)]
    llm.generate(prompts, SamplingParams(max_tokens=4, ignore_eos=True), use_tqdm=False)
    runner._forward = forward
    return captured[0]


def timed_rounds(call, rounds: int, repeats: int) -> list[float]:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            call()
        times.append((time.perf_counter() - start) / repeats * 1e3)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--output", default="benchmarks/results/cpu_decode_graphs.json")
    args = parser.parse_args()
    llm = LLM(max_num_seqs=max(args.batches), max_model_len=args.context + 16)
    runner = llm.engine.runner
    rows = []
    for batch in args.batches:
        inputs = decode_step_inputs(llm, batch, args.context)
        metadata = inputs.metadata

        def eager():
            with forward_context(metadata):
                runner.model(inputs.input_ids, inputs.positions)

        def graph():
            runner.decode_graphs.run(inputs.input_ids, inputs.positions, metadata)

        with torch.inference_mode():
            eager(), graph()  # warm-up; the graph of this size is recorded here
            eager_times, graph_times = [], []
            for _ in range(args.rounds):
                eager_times += timed_rounds(eager, 1, args.repeats)
                graph_times += timed_rounds(graph, 1, args.repeats)
        row = {"batch": batch, "eager_ms_median": statistics.median(eager_times), "eager_ms_best": min(eager_times),
               "graph_ms_median": statistics.median(graph_times), "graph_ms_best": min(graph_times)}
        row["saved_ms_median"] = row["eager_ms_median"] - row["graph_ms_median"]
        rows.append(row)
    print(f"decode forward pass, SmolLM2 defaults, context {args.context}, {torch.get_num_threads()} threads, "
          f"{platform.processor() or platform.machine()}")
    print(f"{'batch':>5} {'eager ms':>17} {'graph ms':>17} {'saved ms':>9}")
    for r in rows:
        print(f"{r['batch']:>5} {r['eager_ms_median']:>8.2f} (best {r['eager_ms_best']:.2f}) "
              f"{r['graph_ms_median']:>6.2f} (best {r['graph_ms_best']:.2f}) {r['saved_ms_median']:>8.2f}")
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps({"context": args.context, "threads": torch.get_num_threads(),
                                             "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
